"""`kvmesh bench codecs`: what each chunk codec saves and costs, on real KV.

KV: chunks of a real vLLM engine's filled cache (`kvmesh.bench.codec_kv`:
a locally built model, prompts of generated text, the engine's cached
blocks gathered as kvmesh stores them), once per `--dtypes` entry; or, with
`--synthetic`, normal random values of the same shape (quick, but without
real KV's structure: outlier channels, a narrow exponent range).

Per codec and KV dtype, in the same run:
- ratio: raw bytes / bytes as stored (envelopes; raw where the codec declined);
- encode and decode GB/s (raw bytes per second, all chunks in turn, repeated
  past `--working-mib` so they come from memory, as out of a large pool)
  beside a memcpy of the same bytes (torch copy_), with torch at 1 thread and
  at its default (the C codec loops use one thread either way);
- full chunks a 1 GiB CPU pool holds with the codec's fixed slots;
- max and mean absolute error of the decoded KV against the raw.

Then, on real vLLM engines (`--sections` picks; `--synthetic` runs only the
three above):
- drift (`codec_drift`): greedy token agreement and |dlogprob| of reuse
  through each codec against exact reuse, over `--prompts` prompts, with a
  deliberately broken codec as the negative control;
- remote (`codec_remote`): a remote hit across two network-namespace hosts
  with KVMESH_CODEC_WIRE=<codec> against the exact hit: load time and bytes
  pulled, per link rate (skipped, with the reason, where namespaces cannot
  be made).

Sections are functions of the measured `Run` (see `SECTIONS`); each table is
printed and saved as soon as its section has run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import torch

from kvmesh.bench import codec_drift, codec_remote
from kvmesh.bench.codec_measure import (
    CodecResult, chunks_per_gib, measure_codec, memcpy_all, working_set,
)
from kvmesh.bench.report import Table
from kvmesh.codecs import CODECS, ChunkGeometry
from kvmesh.models.shapes import SHAPES, get_shape


@dataclass
class KVSet:
    """The chunks one section compares codecs on."""

    source: str  # "vllm" or "synthetic"
    geometry: ChunkGeometry
    blocks: int
    chunks: list[torch.Tensor]
    note: str


@dataclass
class Run:
    args: argparse.Namespace
    kv: list[KVSet] = field(default_factory=list)
    # (kv index, threads label, codec) -> (result, memcpy seconds of the same round)
    results: dict[tuple[int, str, str], tuple[CodecResult, float]] = field(default_factory=dict)
    drift: list[codec_drift.SetupRun] = field(default_factory=list)
    remote: list[codec_remote.Hits] = field(default_factory=list)
    remote_skipped: str = ""  # why the remote section did not run


KV_SECTIONS = ("speed", "pool", "error")
ENGINE_SECTIONS = ("drift", "remote")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sections = args.sections or (KV_SECTIONS if args.synthetic else KV_SECTIONS + ENGINE_SECTIONS)
    if args.synthetic and set(sections) & set(ENGINE_SECTIONS):
        raise SystemExit("--synthetic has no engine: drift and remote need real vLLM")
    run = Run(args)
    if set(sections) & set(KV_SECTIONS):
        for dtype in args.dtypes:
            run.kv.append(synthetic_kv(args, dtype) if args.synthetic else vllm_kv(args, dtype))
        measure(run)
    for name, measure_step, section in SECTIONS:
        if name in sections:
            if measure_step is not None:
                measure_step(run)
            section(run).emit()
    return 0


def measure_drift(run: Run) -> None:
    run.drift = codec_drift.run(run.args.dtypes, run.args.prompts, run.args.max_tokens)


def measure_remote(run: Run) -> None:
    from kvmesh.bench.hosts import Hosts, unavailable  # noqa: PLC0415

    run.remote_skipped = unavailable() or ""
    if run.remote_skipped:
        return
    hosts = Hosts(2)
    try:
        for dtype in run.args.remote_dtypes:
            run.remote.append(codec_remote.run(hosts, dtype, ["none", *run.args.wire_codecs],
                                               run.args.link_mbit, run.args.remote_reps,
                                               run.args.remote_tokens))
    finally:
        hosts.close()


def drift_table(run: Run) -> Table:
    return codec_drift.table(run.drift)


def remote_table(run: Run) -> Table:
    if run.remote_skipped:
        table = Table("codecs_remote", ["skipped"])
        table.add(f"network namespaces unavailable: {run.remote_skipped}")
        return table
    return codec_remote.table(run.remote)


def vllm_kv(args: argparse.Namespace, dtype: str) -> KVSet:
    from kvmesh.bench.codec_kv import capture

    kv = capture(args.shape, dtype, num_prompts=args.kv_prompts, prompt_words=args.prompt_words,
                 block_size=args.block_size, chunk_tokens=args.chunk_tokens)
    note = (f"vLLM {dtype} KV of model {args.shape!r}: {kv.prompt_tokens} prompt tokens, "
            f"{len(kv.chunks)} chunks")
    return KVSet("vllm", kv.geometry, kv.blocks_per_chunk, kv.chunks, note)


def synthetic_kv(args: argparse.Namespace, dtype: str) -> KVSet:
    shape = get_shape(args.shape)
    blocks = args.chunk_tokens // args.block_size
    geometry = ChunkGeometry(layout="vllm-cpu", dtype=getattr(torch, dtype),
                             num_layers=shape.num_layers, block_size=args.block_size,
                             num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
                             max_blocks=blocks)
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(geometry.raw_bytes(blocks) // geometry.itemsize, generator=gen)
              .to(geometry.dtype).view(torch.uint8) for _ in range(args.chunks)]
    return KVSet("synthetic", geometry, blocks, chunks,
                 f"synthetic {dtype} N(0,1) KV in the shape of {args.shape!r}")


def measure(run: Run) -> None:
    default_threads = torch.get_num_threads()
    for k, kv in enumerate(run.kv):
        timed = working_set(kv.chunks, run.args.working_mib << 20)
        for label, threads in (("1", 1), (f"{default_threads} (default)", default_threads)):
            torch.set_num_threads(threads)
            copy = memcpy_all(timed)
            for name in run.args.codecs:
                result, memcpy_s = measure_codec(name, kv.geometry, kv.blocks, timed,
                                                 run.args.reps, copy, errors=False)
                if label == "1":  # errors do not depend on threads: once, on the unique chunks
                    exact, _ = measure_codec(name, kv.geometry, kv.blocks, kv.chunks, 1,
                                             lambda: None)
                    result.max_abs_err, result.mean_abs_err = exact.max_abs_err, exact.mean_abs_err
                    result.max_abs_value = exact.max_abs_value
                run.results[k, label, name] = result, memcpy_s
    torch.set_num_threads(default_threads)


def speed_table(run: Run) -> Table:
    table = Table("codecs", ["kv", "dtype", "codec", "torch threads", "ratio", "encode GB/s",
                             "decode GB/s", "memcpy GB/s", "encode / memcpy",
                             "decode / memcpy"])
    for (k, threads, name), (r, memcpy_s) in run.results.items():
        kv = run.kv[k]
        memcpy = r.raw_bytes / memcpy_s / 1e9
        enc = r.raw_bytes / r.encode_s / 1e9
        dec = r.decoded_bytes / r.decode_s / 1e9 if r.decode_s else 0.0
        table.add(kv.source, _dtype(kv), name, threads, r.ratio, enc, dec, memcpy,
                  enc / memcpy, dec / memcpy)
    _notes(table, run)
    table.note("ratio = raw bytes / bytes stored; GB/s = raw bytes a second over every chunk "
               "in turn; memcpy = torch copy_ of the same chunks, same rounds; the C codec "
               "loops run on one thread at any torch setting")
    return table


def pool_table(run: Run) -> Table:
    table = Table("codecs_pool", ["kv", "dtype", "codec", "chunk KiB", "slot KiB",
                                  "chunks per GiB", "vs exact"])
    for k, kv in enumerate(run.kv):
        raw = chunks_per_gib("none", kv.geometry, kv.blocks)
        table.add(kv.source, _dtype(kv), "none (exact)", kv.geometry.raw_bytes(kv.blocks) / 1024,
                  kv.geometry.raw_bytes(kv.blocks) / 1024, raw, 1.0)
        for name in run.args.codecs:
            held = chunks_per_gib(name, kv.geometry, kv.blocks)
            if held is None:
                table.add(kv.source, _dtype(kv), name, "-", "-", "not on CPU (lossless)", "-")
            else:
                table.add(kv.source, _dtype(kv), name, kv.geometry.raw_bytes(kv.blocks) / 1024,
                          (1 << 30) / held / 1024, held, held / raw)
    table.note("full chunks a 1 GiB CPU pool of fixed slots holds (slot = the codec's "
               "encoded_bound of a full chunk; exact = raw chunks, KVMESH_CODEC_CPU=none); "
               "lossless codecs are refused on CPU")
    _kv_notes(table, run)
    return table


def error_table(run: Run) -> Table:
    table = Table("codecs_error", ["kv", "dtype", "codec", "max abs err", "mean abs err",
                                   "max |x|", "max err / max |x|"])
    for (k, threads, name), (r, _) in run.results.items():
        if threads != "1":
            continue  # the same bytes at any thread count
        kv = run.kv[k]
        table.add(kv.source, _dtype(kv), name, r.max_abs_err, r.mean_abs_err, r.max_abs_value,
                  r.max_abs_err / r.max_abs_value if r.max_abs_value else 0.0)
    table.note("decoded KV against the raw KV, over every value of every chunk")
    return table


# The report's sections, in order: (name, what it measures first or None, its table).
SECTIONS = [
    ("speed", None, speed_table),
    ("pool", None, pool_table),
    ("error", None, error_table),
    ("drift", measure_drift, drift_table),
    ("remote", measure_remote, remote_table),
]


def _dtype(kv: KVSet) -> str:
    return str(kv.geometry.dtype).removeprefix("torch.")


def _kv_notes(table: Table, run: Run) -> None:
    for kv in run.kv:
        g = kv.geometry
        table.note(f"{kv.note}; layout {g.layout}, {g.num_layers} layers, {g.num_kv_heads} kv "
                   f"heads, head_dim {g.head_dim}, {kv.blocks} blocks of {g.block_size} tokens")


def _notes(table: Table, run: Run) -> None:
    _kv_notes(table, run)
    table.note(f"median of {run.args.reps} interleaved rounds over >= {run.args.working_mib} "
               f"MiB of chunks; load average "
               f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus at the end")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench codecs", description=__doc__.split("\n")[0])
    p.add_argument("--synthetic", action="store_true",
                   help="random normal KV instead of a real vLLM engine's (no vLLM needed)")
    p.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=sorted(CODECS))
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"],
                   default=["float32", "bfloat16"])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES),
                   help="model shape (real KV: the model the engine runs)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--sections", nargs="+", choices=KV_SECTIONS + ENGINE_SECTIONS,
                   help="default: all of them; with --synthetic, " + ", ".join(KV_SECTIONS))
    p.add_argument("--kv-prompts", type=int, default=8, help="real KV: prompts prefilled")
    p.add_argument("--prompt-words", type=int, default=700, help="real KV: words a prompt")
    p.add_argument("--chunks", type=int, default=16, help="synthetic KV: chunks")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--working-mib", type=int, default=64,
                   help="chunks are repeated up to this many MiB for timing (past the caches)")
    drift = p.add_argument_group("drift (real vLLM, one engine per codec and dtype)")
    drift.add_argument("--prompts", type=int, default=50, help="prompts per engine")
    drift.add_argument("--max-tokens", type=int, default=16, help="greedy tokens per prompt")
    remote = p.add_argument_group("remote (two network-namespace hosts; needs root)")
    remote.add_argument("--remote-dtypes", nargs="+", default=["bfloat16"],
                        choices=["float32", "bfloat16"])
    remote.add_argument("--wire-codecs", nargs="+", default=["fp8"], choices=sorted(CODECS),
                        help="KVMESH_CODEC_WIRE values, each against exact")
    remote.add_argument("--link-mbit", type=_mbit_list, default=[0, 1000],
                        help="host 1's egress rates, comma-separated megabit/s; 0 = the bare "
                             "veth pair")
    remote.add_argument("--remote-reps", type=int, default=5, help="hits per codec and rate")
    remote.add_argument("--remote-tokens", type=int, default=31 * codec_remote.CHUNK_TOKENS,
                        help="tokens per prompt (whole chunks)")
    return p


def _mbit_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
