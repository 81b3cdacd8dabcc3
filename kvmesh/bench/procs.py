"""Peer processes for benchmarks (the same stdin-driven peers the tests use)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time


class BenchPeer:
    def __init__(self, env: dict[str, str], slot_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmesh.cli", "peer", "--slot-bytes", str(slot_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1)
        self.peer_id = self._read(120)["peer_id"]

    def _read(self, timeout: float) -> dict:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise TimeoutError("benchmark peer did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark peer exited")
        return json.loads(line)

    def send(self, op: str, timeout: float = 300, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def stop(self) -> None:
        try:
            self.proc.stdin.write('{"op": "exit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def start_peers(n: int, env: dict[str, str], slot_bytes: int) -> list[BenchPeer]:
    base = {**os.environ, "KVMESH_CONTROL": "0", **env}
    peers: list[BenchPeer] = []
    for _ in range(n):
        extra = {"KVMESH_SEEDS": peers[0].peer_id} if peers else {}
        peers.append(BenchPeer({**base, **extra}, slot_bytes))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(len(p.send("status")["members"]) == n for p in peers):
            return peers
        time.sleep(0.2)
    for p in peers:
        p.stop()
    raise TimeoutError("benchmark mesh did not converge")
