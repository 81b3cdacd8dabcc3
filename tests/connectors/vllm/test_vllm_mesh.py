"""Real vLLM engines in separate processes sharing KV through real kvmesh peers.

Engine A computes and saves; engine B, a fresh process whose vLLM prefix cache
is off, must take the prefix from A's peer over the mesh. B's greedy tokens
and logprobs must equal an engine without kvmesh; a test build that flips
loaded chunks after their checksum was verified must change the output
(so the loaded KV is really used); the same holds with vLLM's scheduler and
worker in separate processes; and a holder killed before the pull makes the
load fail over to recomputation with correct output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CHUNK = 64
BLOCK = 32  # engine_script's block size
# 300: 4 full chunks + a 44-token rest, whose whole block is the tail chunk; 256: exactly 4 chunks
PROMPT_LENGTHS = (300, 256)
CHUNKS = sum(n // CHUNK + (n % CHUNK >= BLOCK) for n in PROMPT_LENGTHS)
CACHED = [288, 255]  # 4 chunks + the tail's block; all 4 chunks, less the token vLLM recomputes
MARK = "@@kvmesh-test@@ "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from kvmesh.models.local import build_model

    return str(build_model(ROOT / ".cache" / "models" / "tiny-seed0", "tiny", seed=0))


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> dict[str, str]:
    cache = ROOT / ".cache"
    return {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "KVMESH_CHUNK_TOKENS": str(CHUNK), "KVMESH_RUN_DIR": str(tmp_path_factory.mktemp("run")),
            "KVMESH_CPU_BYTES": "64MiB", "KVMESH_TIMEOUT_S": "2", "TOKENIZERS_PARALLELISM": "false"}


def prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, 1000) for _ in range(n)] for n in PROMPT_LENGTHS]


class EngineProc:
    def __init__(self, spec: dict, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "engine_script.py"), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    def result(self, timeout: float = 600) -> dict:
        """The next marked line the script prints (vLLM's own logs are skipped)."""
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"engine exited with {self.proc.wait(timeout=timeout)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_once(spec: dict, env: dict[str, str]) -> dict:
    engine = EngineProc(spec, env)
    try:
        return engine.result()
    finally:
        engine.stop()


def max_logprob_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"]))


@pytest.fixture(scope="module")
def mesh_runs(model_dir, base_env):
    spec = {"model_dir": model_dir, "prompts": prompts()}
    out = {"reference": run_once(spec, base_env)}
    port = free_port()
    holder = EngineProc({**spec, "kvmesh": True, "engine_id": "engine-a", "linger": True},
                        {**base_env, "KVMESH_PORT": str(port)})
    try:
        out["a"] = holder.result()
        joined = {**base_env, "KVMESH_SEEDS": f"127.0.0.1:{port}"}
        out["b"] = run_once({**spec, "kvmesh": True, "engine_id": "engine-b"}, joined)
        out["b_corrupt"] = run_once({**spec, "kvmesh": True, "engine_id": "engine-c",
                                     "corrupt": True}, joined)
        mp_env = {**joined, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        out["b_mp"] = run_once({**spec, "kvmesh": True, "engine_id": "engine-d", "mp": True}, mp_env)
        # An engine that joined while A was alive; A dies before it asks.
        late = EngineProc({**spec, "kvmesh": True, "engine_id": "engine-e", "wait_for_go": True},
                          joined)
        try:
            assert late.result() == {"ready": True}
            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait(timeout=30)
            late.proc.stdin.write("go\n")
            late.proc.stdin.flush()
            out["after_kill"] = late.result()
        finally:
            late.stop()
    finally:
        holder.stop()
    return out


def test_engine_a_computes_and_saves_every_chunk_and_tail(mesh_runs):
    runs = mesh_runs
    a = runs["a"]
    assert [r["cached"] for r in a["results"]] == [0, 0]
    assert a["peer"]["chunks_saved"] == CHUNKS == 9
    for got, ref in zip(a["results"], runs["reference"]["results"]):
        assert got["tokens"] == ref["tokens"]


def test_engine_b_loads_from_a_through_the_mesh_and_matches(mesh_runs):
    runs = mesh_runs
    b = runs["b"]
    # vLLM's prefix cache is off in B: every cached token came through kvmesh.
    assert [r["cached"] for r in b["results"]] == CACHED
    assert b["peer"]["remote_hits"] == CHUNKS
    assert b["peer"]["read_in_place"] == CHUNKS  # same host: scattered out of A's pool
    assert b["peer"]["bytes_pulled"] > 0
    for got, ref in zip(b["results"], runs["reference"]["results"]):
        assert got["tokens"] == ref["tokens"]
        assert max_logprob_diff(got, ref) < 1e-4


def test_corrupted_loaded_kv_changes_the_output(mesh_runs):
    runs = mesh_runs
    bad = runs["b_corrupt"]
    assert [r["cached"] for r in bad["results"]] == CACHED
    diffs = [max_logprob_diff(got, ref) for got, ref in
             zip(bad["results"], runs["reference"]["results"])]
    assert max(diffs) > 1e-2, "flipping the loaded KV must change the logprobs"


def test_multiprocess_mode_scheduler_and_worker_apart(mesh_runs):
    runs = mesh_runs
    b = runs["b_mp"]
    assert [r["cached"] for r in b["results"]] == CACHED
    for got, ref in zip(b["results"], runs["reference"]["results"]):
        assert got["tokens"] == ref["tokens"]
        assert max_logprob_diff(got, ref) < 1e-4


def test_dead_holder_means_recompute_with_the_right_output(mesh_runs):
    runs = mesh_runs
    late = runs["after_kill"]
    assert late["peer"]["load_failures"] > 0, "the load must have tried the dead holder"
    assert late["peer"]["remote_hits"] == 0
    for got, ref in zip(late["results"], runs["reference"]["results"]):
        assert got["tokens"] == ref["tokens"]
        assert max_logprob_diff(got, ref) < 1e-4
