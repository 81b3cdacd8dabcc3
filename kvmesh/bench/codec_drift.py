"""Drift of reuse through each codec, on real vLLM: the `bench codecs` drift section.

Per KV dtype, one engine per setup, one after another (`codec_engine`: vLLM's
own prefix cache OFF, so every reused token comes from kvmesh), each alone in
its own mesh:

- exact: no codec. Round 0 computes every prompt with nothing to reuse: the
  REFERENCE. Round 1 reuses round 0's saved KV: EXACT REUSE, which must
  equal the reference.
- fp8, int8: KVMESH_CODEC_CPU=<codec>: saves are envelopes, round 1 decodes.
- zstd (lossless, refused on CPU): round 0 saves raw, round 1 reuses them
  raw, then POST /compress re-encodes the held chunks as zstd envelopes in
  place and round 2 decodes them: it must equal round 1 bit for bit.
- fp8-broken, the negative control (`codec_broken`: fp8 with every V scale
  doubled), registered in that engine's process only.

Each codec's reuse round is compared with exact reuse, and every engine's
round 0 (computed) with the reference: that sets the floor of run-to-run
noise between engine processes (vLLM's batches may form differently as
loads land). Prompts are random token ids, whole chunks
only (POST /compress hashes full chunks), so that every chunk is reused.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmesh.bench.drift_stats import Drift, drift
from kvmesh.bench.engine_driver import EngineProcess
from kvmesh.bench.report import Table
from kvmesh.models.local import build_model
from kvmesh.models.shapes import get_shape

CACHE_DIR = Path(".cache")
BLOCK_SIZE = 32
CHUNK_TOKENS = 64


@dataclass(frozen=True)
class Setup:
    name: str
    env: dict = field(default_factory=dict)
    compress: str = ""  # re-encode the saved chunks with this codec before reuse
    broken: bool = False


SETUPS = (
    Setup("exact"),
    Setup("fp8", {"KVMESH_CODEC_CPU": "fp8"}),
    Setup("int8", {"KVMESH_CODEC_CPU": "int8"}),
    Setup("zstd", compress="zstd"),
    Setup("fp8-broken", {"KVMESH_CODEC_CPU": "fp8-broken"}, broken=True),
)


@dataclass
class SetupRun:
    dtype: str
    setup: Setup
    computed: list[dict]  # round 0
    reused: list[dict]  # the round that reused through the codec
    raw_reused: list[dict] | None  # compress setups: the same engine's raw reuse before it
    chunks_saved: int
    chunks_loaded: int  # local hits in round 1
    encoded: str  # what the stored chunks were: "fp8 envelopes", "12 of 150 zstd", "raw"
    seconds: float  # engine start to stop


def prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of 2-4 whole chunks of random token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(CHUNK_TOKENS * rng.randint(2, 4))]
            for _ in range(count)]


def run(dtypes: list[str], count: int, max_tokens: int, shape: str = "tiny",
        setups: tuple[Setup, ...] = SETUPS) -> list[SetupRun]:
    """Every setup of every dtype, one engine at a time."""
    model_dir = build_model(CACHE_DIR / "models" / f"{shape}-seed0", shape, seed=0)
    batch = prompts(count, get_shape(shape).vocab_size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="kvmesh-drift-") as tmp:
        for dtype in dtypes:
            for setup in setups:
                runs.append(run_setup(setup, dtype, str(model_dir), batch, max_tokens, Path(tmp)))
    return runs


def run_setup(setup: Setup, dtype: str, model_dir: str, batch: list[list[int]],
              max_tokens: int, tmp: Path) -> SetupRun:
    engine_id = f"drift-{dtype}-{setup.name}"
    spec = {"model_dir": model_dir, "dtype": dtype, "engine_id": engine_id,
            "block_size": BLOCK_SIZE, "kv_cache_bytes": 128 << 20, "max_model_len": 1024,
            "log_path": str(tmp / f"{engine_id}.log"), "broken": setup.broken}
    start = time.monotonic()
    engine = EngineProcess(spec, {**engine_env(tmp), **setup.env})
    try:
        engine.wait_ready()
        computed = engine.send("generate", prompts=batch, max_tokens=max_tokens)["results"]
        chunks = sum(len(p) // CHUNK_TOKENS for p in batch)
        saved = engine.send("wait_saved", chunks=chunks)["chunks_saved"]
        encoded, raw_reused = setup.env.get("KVMESH_CODEC_CPU", "raw"), None
        if setup.compress:
            raw_reused = engine.send("generate", prompts=batch, max_tokens=max_tokens)["results"]
            done = sum(engine.control("POST", "/compress", {"tokens": p, "codec": setup.compress})
                       ["compressed"] for p in batch)
            encoded = f"{setup.compress}: {done} of {chunks}"
        hits_before = engine.counters()["local_hits"]
        reused = engine.send("generate", prompts=batch, max_tokens=max_tokens)["results"]
        loaded = engine.counters()["local_hits"] - hits_before
    finally:
        engine.stop()
    return SetupRun(dtype, setup, computed, reused, raw_reused, saved, loaded, encoded,
                    time.monotonic() - start)


def engine_env(tmp: Path) -> dict[str, str]:
    """An engine alone in its own mesh, kvmesh on, no codec unless the setup adds one."""
    root = CACHE_DIR.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMESH_CODEC_")}
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_HOST_IP="127.0.0.1",
               VLLM_CACHE_ROOT=str(root / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"),
               TOKENIZERS_PARALLELISM="false", KVMESH_ENABLE="1",
               KVMESH_CHUNK_TOKENS=str(CHUNK_TOKENS), KVMESH_RUN_DIR=str(tmp / "run"),
               KVMESH_CPU_BYTES="256MiB", KVMESH_TIMEOUT_S="5", KVMESH_PORT="0")
    env.pop("KVMESH_SEEDS", None)
    return env


def table(runs: list[SetupRun]) -> Table:
    t = Table("codecs_drift", ["dtype", "reuse through", "against", "prompts",
                               "chunks loaded / saved", "chunks as stored",
                               "prompts all tokens identical", "mean tokens before divergence",
                               "max |dlogprob|", "mean |dlogprob|"])
    for dtype in dict.fromkeys(r.dtype for r in runs):
        mine = {r.setup.name: r for r in runs if r.dtype == dtype}
        exact = mine["exact"]
        _row(t, exact, "reference", drift(exact.reused, exact.computed))
        for name, r in mine.items():
            if name != "exact":
                _row(t, r, "exact reuse", drift(r.reused, exact.reused))
        _floor_note(t, dtype, mine)
    _notes(t, runs)
    return t


def _row(t: Table, r: SetupRun, against: str, d: Drift) -> None:
    label = r.setup.name + (" (negative control)" if r.setup.broken else "")
    t.add(r.dtype, label, against, d.prompts, f"{r.chunks_loaded} / {r.chunks_saved}",
          r.encoded, f"{d.identical} / {d.prompts}", f"{d.mean_matching:.2f} / {d.tokens}",
          d.max_dlogprob, d.mean_dlogprob)


def _floor_note(t: Table, dtype: str, mine: dict[str, SetupRun]) -> None:
    """Every engine's computed round against the reference; a compress
    setup's reuse against its own raw reuse."""
    want = mine["exact"].computed
    floors = [drift(r.computed, want) for name, r in mine.items() if name != "exact"]
    t.note(f"{dtype}, computed rounds of the other {len(floors)} engines against the reference: "
           f"{sum(d.identical for d in floors)} / {sum(d.prompts for d in floors)} prompts all "
           f"tokens identical, max |dlogprob| {max(d.max_dlogprob for d in floors):.3g} "
           "(the floor of run-to-run noise)")
    for name, r in mine.items():
        if r.raw_reused is not None:
            d = drift(r.reused, r.raw_reused)
            t.note(f"{dtype}, {name} reuse against the same engine's raw reuse just before: "
                   f"{d.identical} / {d.prompts} prompts identical, max |dlogprob| "
                   f"{d.max_dlogprob:.3g}")


def _notes(t: Table, runs: list[SetupRun]) -> None:
    t.note("reference: kvmesh on, nothing to reuse (round 0 of the exact engine); exact reuse: "
           "the same engine's round 1, every whole chunk loaded from kvmesh; each codec's row: "
           "its engine's round 1 (chunks decoded on load) against exact reuse")
    t.note("vLLM's prefix cache is OFF in every engine (enable_prefix_caching=False), so the "
           "reused KV is kvmesh's; greedy, logprobs of each generated token; |dlogprob| over "
           "positions before the first divergence (same token after the same text)")
    t.note(f"model 'tiny' (random weights), block {BLOCK_SIZE}, chunks of {CHUNK_TOKENS} tokens, "
           f"prompts of 2-4 whole chunks of random token ids; fp8-broken = fp8 with every V "
           "scale doubled, registered only in its engine's process")
    t.note(f"{sum(r.seconds for r in runs):.0f} s for {len(runs)} engines; load average "
           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus at the end")
