"""`kvmesh demo`: engines sharing prefixes through the mesh, measured.

1. Builds a local model (no downloads) whose prefill cost per KV byte is
   closer to real models than a toy's (see `kvmesh.models.shapes`).
2. Starts N vLLM engines, each in its own process with kvmesh enabled and its
   own embedded peer; the peers form a mesh on loopback.
3. Sends long-document QA (several questions over each document) and a
   multi-round chat, spread across the engines, and classifies every request
   by where its prefix KV came from: recomputed, this engine's kvmesh store,
   or pulled from another engine.
4. Runs the same prompts on one engine without kvmesh and checks that every
   output is token-for-token identical.

vLLM's own prefix cache is off in the demo, so every reuse shown is kvmesh's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from kvmesh.demo.engines import Engine, engine_env, free_port, run_dir
from kvmesh.demo.progress import Progress
from kvmesh.demo.workload import DemoRequest, chat, doc_qa, full_prompt

BLOCK_SIZE = 32


def parse_args(argv):
    p = argparse.ArgumentParser(prog="kvmesh demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=3)
    p.add_argument("--shape", default="demo", help="model shape: demo or tiny")
    p.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "kvmesh" / "models")
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--doc-tokens", type=int, default=1536)
    p.add_argument("--chat-rounds", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--no-baseline", action="store_true", help="skip the no-kvmesh comparison run")
    return p.parse_args(argv)


def build_workload(args, model_dir: Path) -> list[DemoRequest]:
    from transformers import AutoTokenizer  # noqa: PLC0415

    from kvmesh.models.local import sample_text  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(model_dir)
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    return (doc_qa(tokenize, sample_text, args.engines, args.docs, args.questions, args.doc_tokens)
            + chat(tokenize, sample_text, args.engines, args.chat_rounds, args.turn_tokens))


def classify(before: dict, after: dict) -> str:
    if after.get("remote_hits", 0) > before.get("remote_hits", 0):
        return "pulled from another engine"
    if after.get("local_hits", 0) > before.get("local_hits", 0):
        return "loaded from this engine's store"
    return "recomputed"


def run_mesh(args, model_dir: Path, requests: list[DemoRequest], progress: Progress) -> list[dict]:
    seed_port, rdir = free_port(), run_dir()
    print(f"engine logs: {rdir}", flush=True)
    engines = [Engine(f"engine-{i}", str(model_dir), engine_env(i, seed_port, rdir, True), True,
                      128 << 20, BLOCK_SIZE, rdir) for i in range(args.engines)]
    try:
        for engine in engines:
            engine.wait_ready()
            progress.step(f"{engine.name} up")
        rows = []
        for req in requests:
            engine = engines[req.engine]
            before = engine.call("status")
            req.output, ttft = engine.call("generate", full_prompt(req), args.max_tokens)
            after = engine.call("status")
            rows.append({"req": req, "engine": engine.name, "ttft": ttft,
                         "source": classify(before, after),
                         "bytes": after.get("bytes_pulled", 0) - before.get("bytes_pulled", 0)})
            progress.step(f"{req.label} on {engine.name}: {rows[-1]['source']}")
        stats = [e.call("status") for e in engines]
        return rows, stats
    finally:
        for engine in engines:
            engine.stop()


def run_baseline(args, model_dir: Path, requests: list[DemoRequest], progress: Progress) -> list:
    rdir = run_dir()
    engine = Engine("baseline", str(model_dir), engine_env(0, 0, rdir, False), False,
                    128 << 20, BLOCK_SIZE, rdir)
    try:
        engine.wait_ready()
        progress.step("baseline engine up (kvmesh off)")
        outputs = []
        for req in requests:
            out, ttft = engine.call("generate", full_prompt(req), args.max_tokens)
            outputs.append((out, ttft))
            progress.step(f"{req.label} without kvmesh")
        return outputs
    finally:
        engine.stop()


def report(rows: list[dict], stats: list[dict], baseline: list | None) -> str:
    """The demo's table: per source of the prompt's KV, TTFT with kvmesh and,
    for the very same prompts, TTFT on an engine without kvmesh."""
    lines = ["", "kvmesh demo: time to first token by where the prompt's KV came from", ""]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["source"], []).append(i)
    header = f"{'source':<34}{'requests':>9}{'TTFT':>10}"
    if baseline is not None:
        header += f"{'kvmesh off':>12}{'speedup':>9}"
    lines.append(header)
    for source in ("recomputed", "loaded from this engine's store", "pulled from another engine"):
        idx = groups.get(source, [])
        if not idx:
            continue
        mean = statistics.mean(rows[i]["ttft"] for i in idx)
        line = f"{source:<34}{len(idx):>9}{mean * 1000:>8.0f}ms"
        if baseline is not None:
            off = statistics.mean(baseline[i][1] for i in idx)
            line += f"{off * 1000:>10.0f}ms{off / mean:>8.1f}x"
        lines.append(line)
    lookups = sum(s.get("lookup_chunks", 0) for s in stats)
    hits = sum(s.get("lookup_hit_chunks", 0) for s in stats)
    pulled = sum(s.get("bytes_pulled", 0) for s in stats)
    lines += ["", f"chunk hit rate at lookup: {hits}/{lookups}"
              f" ({100 * hits / max(1, lookups):.0f}%)",
              f"bytes pulled between engines: {pulled / 2**20:.1f} MiB",
              f"chunks saved: {sum(s.get('chunks_saved', 0) for s in stats)}"]
    if baseline is not None:
        same = sum(r["req"].output == b[0] for r, b in zip(rows, baseline))
        lines.append(f"outputs identical to the run without kvmesh: {same}/{len(rows)}"
                     + ("" if same == len(rows) else "  <-- MISMATCH"))
    lines.append("(kvmesh off: the same prompts on one engine without kvmesh, vLLM prefix "
                 "caching off in both)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kvmesh.models.local import build_model  # noqa: PLC0415

    print(f"building the local '{args.shape}' model (cached after the first run)...", flush=True)
    model_dir = build_model(args.model_dir / args.shape, args.shape)
    requests = build_workload(args, model_dir)
    steps = args.engines + len(requests) + (0 if args.no_baseline else 1 + len(requests))
    progress = Progress(steps)
    progress.show("starting engines")
    rows, stats = run_mesh(args, model_dir, requests, progress)
    baseline = None if args.no_baseline else run_baseline(args, model_dir, requests, progress)
    progress.close()
    print(report(rows, stats, baseline))
    mismatch = baseline is not None and any(r["req"].output != b[0] for r, b in zip(rows, baseline))
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
