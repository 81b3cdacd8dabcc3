"""Driving `kvmesh.bench.codec_engine` processes from a benchmark.

`EngineProcess(spec, env, argv_prefix)` starts one engine (through the
prefix, e.g. `ip netns exec <ns>`, when given); `send(op, ...)` writes one
command and waits (bounded) for its reply; an error reply raises
RuntimeError with the engine's reason and the tail of its log. Not
thread-safe: one driver per engine.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

ENGINE_ARGV = (sys.executable, "-m", "kvmesh.bench.codec_engine")
READY_TIMEOUT_S = 600.0  # a loaded 2-core machine: vLLM's start plus a first compile
REPLY_TIMEOUT_S = 600.0


class EngineProcess:
    def __init__(self, spec: dict, env: Mapping[str, str], argv_prefix: Sequence[str] = ()) -> None:
        self.spec = spec
        self.log_path = Path(spec["log_path"])
        self.proc = subprocess.Popen([*argv_prefix, *ENGINE_ARGV, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(env), text=True, bufsize=1)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "EngineProcess":
        self._read(timeout)
        return self

    def send(self, op: str, timeout: float = REPLY_TIMEOUT_S, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        """A request to the engine's peer's control API, e.g. ("GET", "/status")."""
        return self.send("control", method=method, path=path, body=body)

    def counters(self) -> dict:
        return self.control("GET", "/status")["counters"]

    def stop(self, timeout: float = 60) -> None:
        """Ask the engine to shut down; kill it if it has not within `timeout`."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait()

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"engine {self.spec['engine_id']} gave no answer within "
                               f"{timeout:.0f} s; see {self.log_path}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"engine {self.spec['engine_id']} exited with "
                               f"{self.proc.wait()}:\n{self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"engine {self.spec['engine_id']}: {reply['error']}")
        return reply

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
