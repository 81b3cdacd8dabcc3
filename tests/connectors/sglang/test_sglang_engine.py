"""End to end on the real `sgl.Engine` (CPU, tiny local Llama): two engine launches.

Engine A computes a prompt with nothing in the mesh (so its output is what a
run without kvmesh gives) and backs its pages up to its peer. Engine B, a
fresh process that joins A's peer, gets the same prompt: SGLang reports the
prefix as storage hits, loaded through kvmesh, and B's greedy output is
identical. Runs with the test-only shims in shims/ (pinned to sglang 0.5.23).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="needs SGLang: make sglang-setup, then make test-sglang")

from test_sglang_mesh import NodeProcess  # noqa: E402

pytestmark = pytest.mark.sglang_engine

HERE = Path(__file__).parent
SHIMS = HERE / "shims"
PROMPT = " ".join(["ka to mi ren sho lu de qua bri on es tha"] * 24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess(NodeProcess):
    def __init__(self, model_dir: Path, env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KVMESH_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            str(p) for p in (SHIMS / "engine", SHIMS / "stubs", HERE))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "sglang_engine_proc.py"),
                                      str(model_dir)], env=full_env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._read(300)  # {"ready": true}: the engine is up

    def generate(self, prompt: str) -> dict:
        return self.call(op="generate", prompt=prompt, timeout_s=120)


def saved_chunks(control_url: str) -> int:
    with urllib.request.urlopen(f"{control_url}/status", timeout=5) as reply:
        return json.load(reply)["counters"]["chunks_saved"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from kvmesh.models.local import build_model

    return build_model(tmp_path_factory.mktemp("model") / "tiny", "tiny")


def test_engine_b_loads_what_engine_a_computed(model_dir, tmp_path):
    port, control = free_port(), free_port()
    env = {"KVMESH_ENABLE": "1", "KVMESH_CPU_BYTES": "64MiB", "KVMESH_RUN_DIR": str(tmp_path),
           "KVMESH_TIMEOUT_S": "5"}
    a = EngineProcess(model_dir, {**env, "KVMESH_PORT": str(port),
                                  "KVMESH_CONTROL_PORT": str(control)})
    b = None
    try:
        first = a.generate(PROMPT)
        assert first["storage_tokens"] == 0  # nothing in the mesh: computed as without kvmesh
        deadline = time.monotonic() + 60
        while saved_chunks(f"http://127.0.0.1:{control}") < 10 and time.monotonic() < deadline:
            time.sleep(0.5)
        b = EngineProcess(model_dir, {**env, "KVMESH_SEEDS": f"127.0.0.1:{port}",
                                      "KVMESH_CONTROL": "0"})
        second = b.generate(PROMPT)
        assert second["storage_tokens"] >= 10 * 16
        assert second["output_ids"] == first["output_ids"]
    finally:
        for proc in (b, a):
            if proc is not None:
                proc.close()
