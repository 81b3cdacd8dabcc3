"""Prefill/decode disaggregation with real OpenAI-compatible vLLM servers.

A producer server (kv_producer) prefills; a consumer server (kv_consumer,
prefix cache off) takes the prompt's KV from the mesh and decodes; `kvmesh
pd-proxy` sits in front. The text must equal what one engine returns for the
same request, and the consumer must have pulled the KV rather than computing it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]
CHUNK = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, port: int, role: str, engine_id: str, env: dict, log: Path):
    config = json.dumps({"kv_connector": "KVMeshConnector", "kv_role": role, "engine_id": engine_id})
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--block-size", "32", "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "1024",
           "--no-enable-prefix-caching", "--kv-transfer-config", config]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as reply:
        return json.load(reply)


def peer_status(run_dir: Path, engine_id: str) -> dict:
    info = json.loads((run_dir / f"{engine_id}-rank0.json").read_text())
    with urllib.request.urlopen(info["control_url"] + "/status", timeout=5) as reply:
        return json.load(reply)["counters"]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from kvmesh.models.local import build_model

    return str(build_model(ROOT / ".cache" / "models" / "tiny-seed0", "tiny", seed=0))


def test_prefill_decode_through_the_proxy_matches_one_engine(model_dir, tmp_path):
    from kvmesh.connectors.vllm.pd_proxy import build_app
    from aiohttp import web

    mesh_port, p_port, d_port = free_port(), free_port(), free_port()
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1",
           "KVMESH_ENABLE": "1", "KVMESH_CHUNK_TOKENS": str(CHUNK), "KVMESH_RUN_DIR": str(tmp_path),
           "KVMESH_CPU_BYTES": "64MiB", "VLLM_CACHE_ROOT": str(ROOT / ".cache" / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")}
    prefill = start_server(model_dir, p_port, "kv_producer", "pd-prefill",
                           {**env, "KVMESH_PORT": str(mesh_port)}, tmp_path / "prefill.log")
    decode = start_server(model_dir, d_port, "kv_consumer", "pd-decode",
                          {**env, "KVMESH_SEEDS": f"127.0.0.1:{mesh_port}"}, tmp_path / "decode.log")
    try:
        wait_healthy(f"http://127.0.0.1:{p_port}", prefill)
        wait_healthy(f"http://127.0.0.1:{d_port}", decode)
        prompt = [(i * 37) % 997 + 3 for i in range(320)]  # 5 full chunks
        body = {"model": model_dir, "prompt": prompt, "max_tokens": 12, "temperature": 0}
        single = post(f"http://127.0.0.1:{p_port}/v1/completions", body)["choices"][0]["text"]

        async def through_proxy() -> dict:
            runner = web.AppRunner(build_app([f"http://127.0.0.1:{p_port}"],
                                             [f"http://127.0.0.1:{d_port}"]))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                return await asyncio.to_thread(post, f"http://127.0.0.1:{port}/v1/completions",
                                               {**body, "prompt": prompt})
            finally:
                await runner.cleanup()

        decode_before = peer_status(tmp_path, "pd-decode")
        reply = asyncio.run(through_proxy())
        decode_after = peer_status(tmp_path, "pd-decode")
        assert reply["choices"][0]["text"] == single
        pulled = decode_after["remote_hits"] - decode_before["remote_hits"]
        assert pulled == len(prompt) // CHUNK, "the decode engine must pull the prompt's KV"
        assert peer_status(tmp_path, "pd-prefill")["chunks_saved"] >= len(prompt) // CHUNK
    finally:
        for proc in (prefill, decode):
            proc.terminate()
        for proc in (prefill, decode):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
