"""Starting standalone peer processes for multi-process tests."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from kvmesh.transfer import ucx


def transports() -> list[str]:
    """Every transport that can run here (UCX only with the extra installed)."""
    return ["tcp", "shm"] + (["ucx"] if ucx.available() else [])


class PeerProcess:
    def __init__(self, env: dict[str, str], slot_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmesh.cli", "peer", "--slot-bytes", str(slot_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1)
        ready = self.read(timeout=60)
        self.peer_id = ready["peer_id"]
        self.control_url = ready["control_url"]

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"peer gave no answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, op: str, timeout: float = 60, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def start_mesh(n: int, transport: str, slot_bytes: int = 1 << 20, cpu_bytes: str = "128MiB",
               extra_env: dict | None = None, per_peer_env: dict | None = None) -> list[PeerProcess]:
    base = {**os.environ, "KVMESH_TRANSPORT": transport, "KVMESH_CPU_BYTES": cpu_bytes,
            "KVMESH_CHUNK_TOKENS": "16", "KVMESH_TIMEOUT_S": "2", **(extra_env or {})}
    peers: list[PeerProcess] = []
    try:
        for i in range(n):
            env = dict(base)
            if peers:
                env["KVMESH_SEEDS"] = peers[0].peer_id
            env.update((per_peer_env or {}).get(i, {}))
            peers.append(PeerProcess(env, slot_bytes))
    except BaseException:
        for peer in peers:
            peer.kill()
        raise
    return peers


def wait_for_members(peers: list[PeerProcess], count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(p.send("status")["members"]) == count for p in peers):
            return
        time.sleep(0.2)
    raise TimeoutError(f"mesh did not converge to {count} members")
