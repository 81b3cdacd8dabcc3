"""vLLM's OpenAI server started as users start it, with kvmesh, for tests.

`python -m vllm.entrypoints.openai.api_server`, bf16, vLLM's prefix cache on,
the engine core in a process of its own (vLLM's default); only the sizes are
shrunk to the tiny test model. Every wait here is bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAIServer:
    """One server process; `url` is its HTTP root, `engine_id` names its peer's rendezvous file."""

    def __init__(self, model_dir: str, engine_id: str, env: dict[str, str], log: Path,
                 block_size: int, max_model_len: int) -> None:
        self.engine_id = engine_id
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = Path(env["KVMESH_RUN_DIR"])
        self.log = log
        config = json.dumps({"kv_connector": "KVMeshConnector", "kv_role": "kv_both",
                             "engine_id": engine_id})
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "bfloat16",
               "--block-size", str(block_size), "--max-model-len", str(max_model_len),
               "--kv-cache-memory-bytes", str(64 << 20), "--enable-prompt-tokens-details",
               "--kv-transfer-config", config]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.engine_id} exited with {self.proc.returncode}; "
                                   f"see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"{self.engine_id} not healthy after {timeout}s; see {self.log}")

    def completion_body(self, prompt: list[int], max_tokens: int, salt: str | None = None) -> dict:
        body = {"model": self.model_dir, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": True}
        if salt:
            body["cache_salt"] = salt
        return body

    def complete(self, prompt: list[int], max_tokens: int, salt: str | None = None,
                 timeout: float = 120) -> dict:
        """{"tokens": [...], "logprobs": [...], "cached": prompt tokens vLLM did not compute}."""
        body = json.dumps(self.completion_body(prompt, max_tokens, salt)).encode()
        req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            out = json.load(reply)
        choice = out["choices"][0]["logprobs"]
        details = (out.get("usage") or {}).get("prompt_tokens_details") or {}
        return {"tokens": [int(t.removeprefix("token_id:")) for t in choice["tokens"]],
                "logprobs": choice["token_logprobs"], "cached": details.get("cached_tokens")}

    def send_unread(self, prompt: list[int], max_tokens: int) -> socket.socket:
        """Send a completion request on a raw socket and return it unread; closing it hangs up."""
        body = json.dumps(self.completion_body(prompt, max_tokens)).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(head + body)
        return sock

    def peer_pid(self) -> int:
        """The process its rank-0 peer lives in (vLLM's worker process)."""
        return json.loads((self.run_dir / f"{self.engine_id}-rank0.json").read_text())["pid"]

    def peer_status(self) -> dict:
        """The embedded peer's GET /status (its rank-0 peer, found by its rendezvous file)."""
        info = json.loads((self.run_dir / f"{self.engine_id}-rank0.json").read_text())
        with urllib.request.urlopen(info["control_url"] + "/status", timeout=5) as reply:
            return json.load(reply)

    def peer_lookup(self, prompt: list[int]) -> int:
        """Full chunks of `prompt`'s prefix the mesh holds, as this server's peer sees it."""
        info = json.loads((self.run_dir / f"{self.engine_id}-rank0.json").read_text())
        req = urllib.request.Request(info["control_url"] + "/lookup",
                                     data=json.dumps({"tokens": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as reply:
            return json.load(reply)["matched_chunks"]

    def vllm_requests(self) -> dict[str, float]:
        """vLLM's own gauges: requests running and waiting, and the share of KV blocks in use."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as reply:
            text = reply.read().decode()
        out = {}
        for line in text.splitlines():
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                         "vllm:kv_cache_usage_perc"):
                if line.startswith(name + "{") or line.startswith(name + " "):
                    out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
