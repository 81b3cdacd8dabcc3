"""`kvmesh demo`: engines sharing prefixes through the mesh, measured.

1. Builds a local model (no downloads) whose prefill cost per KV byte is
   closer to real models than a toy's (see `kvmesh.models.shapes`).
2. Starts N vLLM engines, each in its own process with kvmesh enabled and its
   own embedded peer; the peers form a mesh on loopback. vLLM's own prefix
   cache is on, as users run it.
3. Warms every engine up with a throwaway prompt of its own, then sends
   long-document QA (several questions over each document: on the document's
   engine, again there, again after its vLLM prefix cache was reset, then on
   the other engines) and a multi-round chat, spread across the engines. Each
   request is filed by whose reuse served it (see `reuse_rows`): vLLM's own
   prefix cache, kvmesh's local store, a peer's KV through kvmesh, vLLM's
   cache and then kvmesh, or none.
4. Baselines for the very same requests: kvmesh on with nothing to reuse
   (the same engines, each request under a cache salt of its own), and vLLM
   alone (N engines without a connector, the same routing and resets, warmed
   up the same way). Every output must be token-for-token identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmesh.demo import reuse_rows
from kvmesh.demo.engines import Engine, engine_env, free_port, run_dir
from kvmesh.demo.progress import Progress
from kvmesh.demo.report import per_request, report
from kvmesh.demo.workload import DemoRequest, chat, doc_qa, full_prompt, warm_up_prompts

BLOCK_SIZE = 32
KV_CACHE_BYTES = 128 << 20
# Peer counters the demo reports, summed over the engines, for the timed requests only.
COUNTERS = ("lookup_chunks", "lookup_hit_chunks", "bytes_pulled", "chunks_saved", "load_failures")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="kvmesh demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=3)
    p.add_argument("--shape", default="demo", help="model shape: demo or tiny")
    p.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "kvmesh" / "models")
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--questions", type=int, default=5,
                   help="per document: 3 on its engine (compute, vLLM's cache, kvmesh's store), "
                        "the rest on the other engines")
    p.add_argument("--doc-tokens", type=int, default=1536)
    p.add_argument("--chat-rounds", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--per-request", action="store_true",
                   help="also print every request (always printed when a check fails)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip both baselines (kvmesh on with nothing to reuse; vLLM alone)")
    return p.parse_args(argv)


def build_workload(args, model_dir: Path) -> tuple[list[DemoRequest], list[list[int]]]:
    """(the timed requests, one warm-up prompt per engine)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from kvmesh.models.local import sample_text  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(model_dir)
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    requests = (doc_qa(tokenize, sample_text, args.engines, args.docs, args.questions,
                       args.doc_tokens)
                + chat(tokenize, sample_text, args.engines, args.chat_rounds, args.turn_tokens))
    return requests, warm_up_prompts(tokenize, sample_text, args.engines, args.doc_tokens)


def start(engines: list[Engine], warm_ups: list[list[int]], max_tokens: int,
          progress: Progress) -> None:
    for engine in engines:
        engine.wait_ready()
        progress.step(f"{engine.name} up")
    for engine, tokens in zip(engines, warm_ups):
        engine.call("generate", tokens, max_tokens)
        progress.step(f"{engine.name} warmed up")


def run_requests(engines: list[Engine], requests: list[DemoRequest], max_tokens: int,
                 progress: Progress, kvmesh: bool, prompts: list[list[int]] | None = None,
                 salt: str = "") -> list[dict]:
    """Each request on its engine, in order: {"prompt", "output", "ttft", "served"}.

    Without `prompts` (the first run) each request's prompt is built as it
    goes, a chat round's holding the previous round's output, which is kept in
    the request; the baselines pass the first run's prompts, so that every run
    sends the very same tokens. With `salt`, every request gets a cache salt of
    its own (nothing to reuse) and no resets; without, each `reset_first`
    empties that engine's vLLM prefix cache first."""
    results = []
    for i, req in enumerate(requests):
        engine = engines[req.engine]
        if req.reset_first and not salt:
            engine.call("reset_prefix_cache")
        prompt = full_prompt(req) if prompts is None else prompts[i]
        before = engine.call("status") if kvmesh else {}
        output, ttft = engine.call("generate", prompt, max_tokens, f"{salt}-{i}" if salt else "")
        reuse = engine.call("reuse")
        after = engine.call("status") if kvmesh else {}
        if prompts is None:
            req.output = output  # the next chat round's prompt holds it
        served = reuse_rows.Served.of(reuse, before, after)
        results.append({"prompt": prompt, "output": output, "ttft": ttft, "served": served})
        progress.step(f"{req.label} on {engine.name}"
                      + (f": {reuse_rows.row_of(served).split(': ')[-1]}" if kvmesh and not salt
                         else ""))
    return results


def run_mesh(args, model_dir: Path, requests: list[DemoRequest], warm_ups: list[list[int]],
             progress: Progress) -> tuple[list[dict], dict, list[dict] | None]:
    """(results with kvmesh, the peers' counters over them, results with nothing to reuse)."""
    seed_port, rdir = free_port(), run_dir()
    print(f"engine logs: {rdir}", flush=True)
    engines = [Engine(f"engine-{i}", str(model_dir), engine_env(i, seed_port, rdir, True), True,
                      KV_CACHE_BYTES, BLOCK_SIZE, rdir) for i in range(args.engines)]
    try:
        start(engines, warm_ups, args.max_tokens, progress)
        before = _counters(engines)
        results = run_requests(engines, requests, args.max_tokens, progress, kvmesh=True)
        after = _counters(engines)
        nothing = None
        if not args.no_baseline:
            nothing = run_requests(engines, requests, args.max_tokens, progress, kvmesh=True,
                                   prompts=[r["prompt"] for r in results],
                                   salt="nothing-to-reuse")
        return results, {k: after[k] - before[k] for k in COUNTERS}, nothing
    finally:
        for engine in engines:
            engine.stop()


def run_alone(args, model_dir: Path, requests: list[DemoRequest], prompts: list[list[int]],
              warm_ups: list[list[int]], progress: Progress) -> list[dict]:
    """The same prompts on vLLM alone: as many engines, no connector, same routing and resets."""
    rdir = run_dir()
    engines = [Engine(f"vllm-alone-{i}", str(model_dir), engine_env(i, 0, rdir, False), False,
                      KV_CACHE_BYTES, BLOCK_SIZE, rdir) for i in range(args.engines)]
    try:
        start(engines, warm_ups, args.max_tokens, progress)
        return run_requests(engines, requests, args.max_tokens, progress, kvmesh=False,
                            prompts=prompts)
    finally:
        for engine in engines:
            engine.stop()


def _counters(engines: list[Engine]) -> dict[str, int]:
    stats = [e.call("status") for e in engines]
    return {k: sum(s.get(k, 0) for s in stats) for k in COUNTERS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kvmesh.models.local import build_model  # noqa: PLC0415

    print(f"building the local '{args.shape}' model (cached after the first run)...", flush=True)
    model_dir = build_model(args.model_dir / args.shape, args.shape)
    requests, warm_ups = build_workload(args, model_dir)
    per_run = 2 * args.engines + len(requests)
    progress = Progress(per_run + (0 if args.no_baseline else len(requests) + per_run))
    progress.show("starting engines")
    results, counters, nothing = run_mesh(args, model_dir, requests, warm_ups, progress)
    alone = None if args.no_baseline else run_alone(
        args, model_dir, requests, [r["prompt"] for r in results], warm_ups, progress)
    progress.close()
    labels = [req.label for req in requests]
    text, ok = report(labels, results, counters, nothing, alone)
    print(text)
    if args.per_request or not ok:
        print(per_request(labels, results, nothing, alone))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
