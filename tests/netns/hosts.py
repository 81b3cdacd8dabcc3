"""kvmesh peers running inside hosts made of network namespaces (`kvmesh.bench.hosts`)."""

from __future__ import annotations

import os
import subprocess
import time

from kvmesh.bench.hosts import Hosts
from kvmesh.bench.procs import PeerProcess


class HostPeer(PeerProcess):
    """A standalone peer (`kvmesh peer`) inside one host, bound to its address."""

    READY_TIMEOUT_S = 120.0  # every host imports at once

    def __init__(self, hosts: Hosts, i: int, env: dict[str, str], slot_bytes: int) -> None:
        self.host = i
        super().__init__({**env, "KVMESH_HOST": hosts.ip(i)}, slot_bytes, argv_prefix=hosts.exec_argv(i))

    def members(self) -> list[str]:
        return self.send("status")["members"]


def start_peers(hosts: Hosts, which: list[int], env: dict[str, str],
                slot_bytes: int = 1 << 20) -> list[HostPeer]:
    """Start one peer per host, all at once (imports dominate start-up), and wait for each."""
    # Off loopback a peer starts only with the mesh secret.
    base = {**os.environ, "KVMESH_CHUNK_TOKENS": "16", "KVMESH_CPU_BYTES": "64MiB",
            "KVMESH_TIMEOUT_S": "2", "KVMESH_SECRET": "netns-test-secret", **env}
    peers = [HostPeer(hosts, i, base, slot_bytes) for i in which]
    try:
        return [p.wait_ready() for p in peers]
    except BaseException:
        for p in peers:
            p.kill()
        raise


def stop_peers(peers: list[HostPeer]) -> None:
    """Ask every peer to exit at once, then reap them (SIGKILL past 10 s)."""
    for peer in peers:
        try:
            peer.write("exit")
        except OSError:
            pass
    for peer in peers:
        try:
            peer.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        peer.kill()


def wait_until(pred, timeout_s: float, what: str, every_s: float = 0.1) -> float:
    """Seconds until pred() held; AssertionError naming `what` past timeout_s."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(every_s)
    return time.monotonic() - start
