"""Starting and talking to the demo's engine processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
from collections.abc import Callable

from kvmesh.demo.engine_proc import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    def __init__(self, name: str, model_dir: str, env: dict[str, str], kvmesh: bool,
                 kv_cache_bytes: int, block_size: int, log_dir: str,
                 connector: Callable[[], dict] | None = None) -> None:
        """Start the engine process (see engine_proc.serve for `connector`)."""
        ctx = mp.get_context("spawn")
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, name=name, daemon=True,
                                 args=(child, model_dir, env, kvmesh, kv_cache_bytes, block_size,
                                       self.log_path, connector))
        self._proc.start()

    def wait_ready(self, timeout: float = 600) -> None:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.name} did not start within {timeout}s; see {self.log_path}")
        try:
            self._conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} failed to start; see {self.log_path}") from None

    def call(self, *cmd, timeout: float = 600):
        self._conn.send(cmd)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.name} did not answer {cmd[0]} within {timeout}s")
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.name}: {cmd[0]} failed: {value}")
        return value

    def stop(self) -> None:
        try:
            self._conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=20)
        if self._proc.is_alive():
            self._proc.kill()


def engine_env(index: int, seed_port: int, run_dir: str, kvmesh: bool) -> dict[str, str]:
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1",
           "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false",
           "KVMESH_DEMO_ENGINE": f"demo-engine-{index}-{os.getpid()}"}
    if kvmesh:
        env.update({"KVMESH_ENABLE": "1", "KVMESH_RUN_DIR": run_dir, "KVMESH_CPU_BYTES": "768MiB",
                    "KVMESH_TIMEOUT_S": "5"})
        if index == 0:
            env["KVMESH_PORT"] = str(seed_port)
        else:
            env["KVMESH_SEEDS"] = f"127.0.0.1:{seed_port}"
    else:
        env["KVMESH_ENABLE"] = "0"
    return env


def run_dir() -> str:
    return tempfile.mkdtemp(prefix="kvmesh-demo-")
