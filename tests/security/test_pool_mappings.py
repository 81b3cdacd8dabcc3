"""Finding 6: dead holders' pools stayed mapped.

Reproduced on protocol 2: after three crash/restart cycles of a same-host
holder, a surviving peer still mapped 192 MiB of deleted pools (mappings
were kept per pool path, forever). Now a mapping lives as long as the
connection it came with: a holder that dies takes its mapping with it, and
the kernel frees its pool.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from kvmesh.bench.procs import PeerProcess

SLOT = 1 << 20
POOL = "16MiB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "KVMESH_TRANSPORT": "shm", "KVMESH_CPU_BYTES": POOL,
            "KVMESH_CHUNK_TOKENS": "16", "KVMESH_TIMEOUT_S": "2",
            "KVMESH_PROBE_INTERVAL_S": "0.2", **extra}


def foreign_pools(peer: PeerProcess) -> set[int]:
    """Inodes of other processes' pools that `peer` maps (its own left out)."""
    own = os.stat(peer.send("status")["pool_path"]).st_ino
    inodes = set()
    with open(f"/proc/{peer.proc.pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if "kvmesh-pool" in line and int(fields[4]) != own:
                inodes.add(int(fields[4]))
    return inodes


def _wait(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not cond():
        time.sleep(0.1)
    return cond()


@pytest.mark.timeout(180)
def test_a_dead_holders_pool_is_unmapped_across_crash_restart_cycles():
    puller = PeerProcess(_env(), SLOT).wait_ready()
    port = _free_port()
    seen: set[int] = set()
    try:
        for cycle in range(3):
            holder = PeerProcess(_env(KVMESH_PORT=str(port), KVMESH_SEEDS=puller.peer_id),
                                 SLOT).wait_ready()
            try:
                assert holder.send("fill", seed=cycle, chunks=8)["stored"] == 8
                assert _wait(lambda: puller.send("lookup", seed=cycle, chunks=8)["matched"] == 8)
                loaded = puller.send("load", seed=cycle, chunks=8)
                assert loaded["ok"] == 8 and loaded["corrupt"] == 0
                mapped = foreign_pools(puller)
                assert len(mapped) == 1  # the live holder's pool, read in place
                seen |= mapped
            finally:
                holder.kill()  # SIGKILL: no leave, no goodbye
            assert _wait(lambda: not foreign_pools(puller)), "a dead holder's pool is still mapped"
        assert len(seen) == 3  # three lives, three pools: each mapped in turn, none kept
    finally:
        puller.stop()
