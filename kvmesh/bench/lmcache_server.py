"""LMCache's cache server (`lmcache server`, multi-process mode) as a benchmark peer.

The server runs from LMCache's own venv (`.venv-lmcache`, see lmcache_run.py)
and holds KV in a shared-memory pool (`--shm-name`; without it LMCache moves KV
by pickle, ~50x slower). Its clients are the transfer side script
(lmcache_side.py `transfer`) and vLLM engines with `LMCacheMPConnector`
(lmcache_ttft.py). Each server gets fresh ports and its own pool name, so
benchmark runs never share cached KV.

    with LMCacheServer(python, log_dir) as server:   # blocks until healthy
        ... server.rpc_url, server.stored_chunks() ...
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from kvmesh.bench.lmcache_run import LMCACHE_ENV

CHUNK_TOKENS = 256  # LMCache's default chunk size, and kvmesh's
POOL_PREFIX = "lmcache_l1_pool_"  # the server names its /dev/shm pool so


def server_command(python: Path, *, port: int, http_port: int, prometheus_port: int,
                   shm_name: str, l1_gb: int, chunk_tokens: int = CHUNK_TOKENS) -> list[str]:
    """The `lmcache server` command line, as LMCACHE.md found it to work on CPU."""
    return [str(python), "-m", "lmcache.cli.main", "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--http-host", "127.0.0.1", "--http-port", str(http_port),
            "--prometheus-port", str(prometheus_port),
            "--chunk-size", str(chunk_tokens), "--l1-size-gb", str(l1_gb),
            "--eviction-policy", "LRU", "--supported-transfer-mode", "auto",
            "--shm-name", shm_name]


def l1_gb_for(nbytes: int) -> int:
    """Whole GiB of pool for `nbytes` of KV: twice the bytes, so that they stay
    under LMCache's eviction watermark (80% of the pool)."""
    return max(1, math.ceil(2 * nbytes / 2**30))


def stored_chunks(status: dict) -> int:
    """Objects (one per chunk of KV) held by all L1 pools, from GET /status."""
    managers = status.get("storage_manager", {}).get("l1_managers", {})
    return sum(int(m.get("total_object_count", 0)) for m in managers.values())


def pool_path(shm_name: str) -> Path:
    name = shm_name if shm_name.startswith(POOL_PREFIX) else POOL_PREFIX + shm_name
    return Path("/dev/shm") / name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LMCacheServer:
    """One `lmcache server` subprocess; stopped (and its pool unlinked) on exit."""

    def __init__(self, python: Path, log_dir: str, l1_gb: int = 1,
                 start_timeout_s: float = 180) -> None:
        self.port, self.http_port = _free_port(), _free_port()
        self.shm_name = f"kvmesh-bench-{os.getpid()}-{self.port}"
        self.log_path = Path(log_dir) / "lmcache-server.log"
        self._cmd = server_command(python, port=self.port, http_port=self.http_port,
                                   prometheus_port=_free_port(), shm_name=self.shm_name,
                                   l1_gb=l1_gb)
        self._timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None

    @property
    def rpc_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> LMCacheServer:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **LMCACHE_ENV})
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def status(self, timeout_s: float = 5) -> dict:
        """GET /status of the server's HTTP API; raises OSError if it does not answer."""
        url = f"http://127.0.0.1:{self.http_port}/status"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return json.loads(reply.read())

    def stored_chunks(self) -> int:
        return stored_chunks(self.status())

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"lmcache server exited (rc {self._proc.returncode}); "
                                   f"see {self.log_path}")
            try:
                if self.status(timeout_s=2).get("is_healthy"):
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"lmcache server not healthy within {self._timeout_s}s; "
                           f"see {self.log_path}")

    def stop(self) -> None:
        """SIGINT (the server then unlinks its pool), SIGKILL after 20 s."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        pool_path(self.shm_name).unlink(missing_ok=True)
