"""Remote hits across two hosts with a wire codec: the `bench codecs` remote section.

Two hosts made of network namespaces on a bridge (`hosts`). For each wire
codec (exact = KVMESH_CODEC_WIRE unset, then e.g. fp8) a pair of vLLM engines
(`codec_engine`, prefix cache off): A on host 1 computes the prompts and
holds their KV; B on host 2, joined to A over TCP (the pool door would see
one machine and pick shared memory: KVMESH_TRANSPORT=tcp keeps every byte
on the link), then asks for each prompt, and every whole chunk comes from
A: a remote hit. All pairs are up at once, each in its own mesh (a lossy
wire codec gives its namespace keys of its own), and in each round every
codec pulls one fresh prompt, in a shuffled order, so that a neighbour's load
falls on all of them alike.

Per link rate (host 1's egress shaped with a token bucket; 0 = the bare veth
pair) and codec: the hit's load time in B (`load_timer`: start of the pull
to the last chunk decoded and scattered), B's TTFT, and the bytes B pulled;
beside them, in the same run, a raw TCP stream of the exact hit's bytes from
host 1 to host 2 at that rate.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmesh.bench.codec_drift import CACHE_DIR, engine_env
from kvmesh.bench.engine_driver import EngineProcess
from kvmesh.bench.hosts import Hosts
from kvmesh.bench.netns import raw_stream_gbps
from kvmesh.bench.report import Table
from kvmesh.models.local import build_model
from kvmesh.models.shapes import get_shape

BLOCK_SIZE = 32
CHUNK_TOKENS = 256  # kvmesh's default
BASE_PORT = 7430
SECRET = "codec-remote-bench-secret"  # off loopback a peer starts only with one


@dataclass
class Pair:
    codec: str  # the wire codec, "none" for exact
    holder: EngineProcess
    puller: EngineProcess


@dataclass
class Hits:
    """One dtype's measured hits: (codec, mbit) -> samples."""

    dtype: str
    prompt_tokens: int
    seconds: dict = field(default_factory=dict)  # load time in B
    ttft: dict = field(default_factory=dict)
    nbytes: dict = field(default_factory=dict)  # B's bytes pulled per hit
    recompute_ttft: float = 0.0  # B computing a prompt it cannot reuse
    stream_gbps: dict = field(default_factory=dict)  # mbit -> raw TCP stream GB/s


def run(hosts: Hosts, dtype: str, codecs: list[str], rates: list[int], reps: int,
        prompt_tokens: int, shape: str = "tiny") -> Hits:
    model_dir = str(build_model(CACHE_DIR / "models" / f"{shape}-seed0", shape, seed=0))
    vocab = get_shape(shape).vocab_size
    rng = random.Random(7)
    rounds = len(rates) * reps
    # Prompt 0 warms each pair (first pull: connections, pages); 1..rounds are measured.
    batch = [[rng.randrange(3, vocab) for _ in range(prompt_tokens)] for _ in range(rounds + 2)]
    hits = Hits(dtype, prompt_tokens)
    itemsize = 2 if dtype in ("bfloat16", "float16") else 4
    stream_bytes = max(32 << 20, prompt_tokens * get_shape(shape).kv_bytes_per_token(itemsize))
    with tempfile.TemporaryDirectory(prefix="kvmesh-remote-") as tmp:
        pairs = _start_pairs(hosts, model_dir, dtype, codecs, Path(tmp))
        try:
            for pair in pairs:
                _hold(pair, batch[:-1])
                _pull(pair, batch[0])
            n = 1
            for mbit in rates:
                hosts.rate(1, mbit)
                hits.stream_gbps[mbit] = raw_stream_gbps(hosts, stream_bytes)
                for _ in range(reps):
                    for pair in rng.sample(pairs, len(pairs)):
                        seconds, ttft, nbytes = _pull(pair, batch[n])
                        key = pair.codec, mbit
                        hits.seconds.setdefault(key, []).append(seconds)
                        hits.ttft.setdefault(key, []).append(ttft)
                        hits.nbytes.setdefault(key, []).append(nbytes)
                    n += 1
            hits.recompute_ttft = _pull(pairs[0], batch[-1], is_miss=True)[1]  # held nowhere
        finally:
            hosts.rate(1, 0)
            for pair in pairs:
                pair.puller.stop()
                pair.holder.stop()
    return hits


def _start_pairs(hosts: Hosts, model_dir: str, dtype: str, codecs: list[str],
                 tmp: Path) -> list[Pair]:
    """Every pair's engines started at once, then waited for (each start is ~1 min)."""
    pairs = []
    for k, codec in enumerate(codecs):
        port = BASE_PORT + k
        spec = {"model_dir": model_dir, "dtype": dtype, "block_size": BLOCK_SIZE,
                "kv_cache_bytes": 256 << 20, "max_model_len": 8192}
        wire = {} if codec == "none" else {"KVMESH_CODEC_WIRE": codec}

        def engine(i: int, role: str, seeds: dict) -> EngineProcess:
            name = f"remote-{dtype}-{codec}-{role}"
            env = {**engine_env(tmp / f"h{i}"), **wire, **seeds, "KVMESH_TRANSPORT": "tcp",
                   "KVMESH_HOST": hosts.ip(i), "KVMESH_PORT": str(port),
                   "KVMESH_SECRET": SECRET, "KVMESH_CHUNK_TOKENS": str(CHUNK_TOKENS),
                   "KVMESH_CPU_BYTES": "1GiB"}
            return EngineProcess({**spec, "engine_id": name, "log_path": str(tmp / f"{name}.log")},
                                 env, hosts.exec_argv(i))

        pairs.append(Pair(codec, engine(1, "holder", {}),
                          engine(2, "puller", {"KVMESH_SEEDS": f"{hosts.ip(1)}:{port}"})))
    for pair in pairs:
        pair.holder.wait_ready()
        pair.puller.wait_ready()
        _wait_joined(pair.puller)
    return pairs


def _wait_joined(puller: EngineProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(puller.control("GET", "/status")["members"]) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{puller.spec['engine_id']} did not join its holder")
        time.sleep(0.2)


def _hold(pair: Pair, prompts: list[list[int]]) -> None:
    """The holder computes and saves `prompts`; then every chunk can be found."""
    pair.holder.send("generate", prompts=prompts, max_tokens=1)
    chunks = sum(len(p) // CHUNK_TOKENS for p in prompts)
    pair.holder.send("wait_saved", chunks=chunks)
    for tokens in prompts:
        _wait_found(pair.puller, tokens)


def _wait_found(puller: EngineProcess, tokens: list[int], timeout_s: float = 30) -> None:
    want = len(tokens) // CHUNK_TOKENS
    deadline = time.monotonic() + timeout_s
    while puller.control("POST", "/lookup", {"tokens": tokens})["matched_chunks"] < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{puller.spec['engine_id']} does not find the held prompt")
        time.sleep(0.1)


def _pull(pair: Pair, tokens: list[int], is_miss: bool = False) -> tuple[float, float, int]:
    """(load seconds, TTFT seconds, bytes pulled) of B answering one prompt
    (every whole chunk of it pulled, unless `is_miss`)."""
    before = pair.puller.counters()["bytes_pulled"]
    out = pair.puller.send("generate", prompts=[tokens], max_tokens=1)
    pulled = pair.puller.counters()["bytes_pulled"] - before
    loads, result = out["loads"], out["results"][0]
    chunks = sum(x["chunks"] for x in loads)
    if not is_miss and chunks < len(tokens) // CHUNK_TOKENS:
        raise RuntimeError(f"{pair.codec}: {chunks} of {len(tokens) // CHUNK_TOKENS} chunks "
                           f"loaded ({result['cached']} tokens cached)")
    return sum(x["seconds"] for x in loads), result["ttft_s"] or out["seconds"], pulled


def table(all_hits: list[Hits], target: float = 0.6) -> Table:
    t = Table("codecs_remote", ["dtype", "link", "wire codec", "hits", "MiB pulled / hit",
                                "hit load ms (p50)", "load ms (min-max)", "vs exact",
                                "TTFT ms (p50)", "raw stream ms (exact's bytes)"])
    for hits in all_hits:
        for mbit in hits.stream_gbps:
            exact = statistics.median(hits.seconds[("none", mbit)])
            exact_bytes = statistics.median(hits.nbytes[("none", mbit)])
            stream_ms = exact_bytes / (hits.stream_gbps[mbit] * 1e9) * 1e3
            for (codec, m), samples in hits.seconds.items():
                if m != mbit:
                    continue
                load = statistics.median(samples)
                t.add(hits.dtype, _link(mbit), "exact" if codec == "none" else codec,
                      len(samples), statistics.median(hits.nbytes[codec, m]) / 2**20,
                      load * 1e3, f"{min(samples) * 1e3:.0f}-{max(samples) * 1e3:.0f}",
                      load / exact, statistics.median(hits.ttft[codec, m]) * 1e3, stream_ms)
        t.note(f"{hits.dtype}: prompts of {hits.prompt_tokens} tokens ({CHUNK_TOKENS}-token "
               f"chunks), B recomputing one it cannot reuse: TTFT "
               f"{hits.recompute_ttft * 1e3:.0f} ms; raw TCP stream host 1 -> host 2: "
               + ", ".join(f"{_link(m)} {g:.2f} GB/s" for m, g in hits.stream_gbps.items()))
    t.note(f"target: a lossy wire codec's hit <= {target}x the exact hit's load time at the "
           "same link. hit load = B's pull, decode and scatter of every chunk (start of the "
           "load to its last chunk); MiB pulled = B's bytes_pulled (envelopes as sent)")
    t.note("model 'tiny' (random weights), vLLM prefix cache off; KVMESH_TRANSPORT=tcp between "
           "two network namespaces on a bridge (veth pairs, one machine); link = host 1's "
           "egress (tc tbf) or the bare veth; codecs interleaved round by round; load average "
           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus at the end")
    return t


def _link(mbit: int) -> str:
    return "veth (unshaped)" if mbit == 0 else f"{mbit / 1000:g} Gbit/s"
