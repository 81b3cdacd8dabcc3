"""Several peer processes on loopback, over every available transport."""

from __future__ import annotations

import mmap
import os
import time

import pytest

from kvmesh.bench.procs import wait_for_members
from tests.peers.mesh_procs import start_loopback_mesh, transports

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=transports())
def transport(request) -> str:
    return request.param


def _stop(peers) -> None:
    for peer in peers:
        peer.stop()


def test_pull_64_chunks_bit_exact(transport):
    peers = start_loopback_mesh(4, transport)
    try:
        wait_for_members(peers, 4)
        assert peers[0].send("fill", seed=1, chunks=64) == {"stored": 64}
        time.sleep(0.3)  # advertisements are batched one loop turn; let them land
        assert peers[2].send("lookup", seed=1, chunks=64)["matched"] == 64
        assert peers[2].send("lookup", seed=2, chunks=8)["matched"] == 0
        got = peers[2].send("load", seed=1, chunks=64)
        assert got["ok"] == 64 and got["corrupt"] == 0 and got["failed"] == 0
        assert got["sources"] == {peers[0].peer_id: 64}
        status = peers[2].send("status")
        expected = "shm" if transport == "shm" else transport
        assert status["transports"][peers[0].peer_id] == expected
        # A second load is served from the local store.
        again = peers[2].send("load", seed=1, chunks=64)
        assert again["ok"] == 64 and set(again["sources"]) == {"cpu"}
    finally:
        _stop(peers)


def test_holder_killed_mid_pull_gives_misses_not_hangs(transport):
    # 4 MiB chunks over 64 keys: the pull lasts long enough to be cut.
    peers = start_loopback_mesh(3, transport, slot_bytes=4 << 20, cpu_bytes="320MiB")
    try:
        wait_for_members(peers, 3)
        holder, replica, puller = peers
        assert holder.send("fill", seed=7, chunks=64)["stored"] == 64
        time.sleep(0.3)
        half = replica.send("load", seed=7, chunks=32)  # the replica holds the first half
        assert half["ok"] == 32
        time.sleep(0.3)
        puller.write("load", seed=7, chunks=64, timeout=20)  # the reply is read after the kill
        time.sleep(0.05)
        holder.kill()
        started = time.monotonic()
        got = puller.read(timeout=30)
        assert time.monotonic() - started < 25, "the pull must end within its timeout"
        assert got["corrupt"] == 0
        assert got["ok"] + got["failed"] == 64
        assert got["ok"] >= 32, "chunks the replica holds must still arrive"
    finally:
        _stop(peers)


def test_corrupt_payload_is_rejected(transport):
    # Over shm no payload travels: bytes flipped in the holder's own pool are
    # only seen by a puller that verifies checksums (lease mode trusts pins).
    verify = {1: {"KVMESH_SHM_VERIFY": "checksum"}} if transport == "shm" else None
    peers = start_loopback_mesh(2, transport, per_peer_env=verify)
    try:
        wait_for_members(peers, 2)
        holder, puller = peers
        assert holder.send("fill", seed=3, chunks=8)["stored"] == 8
        time.sleep(0.3)
        shm_path = holder.send("status")["pool_path"]  # /proc/<pid>/fd/<n> of its memfd
        fd = os.open(shm_path, os.O_RDWR)  # flip bytes behind the holder's back
        try:
            with mmap.mmap(fd, 0) as pool:
                for offset in range(0, len(pool), 4096):
                    pool[offset] ^= 0xFF
        finally:
            os.close(fd)
        got = puller.send("load", seed=3, chunks=8)
        assert got["ok"] == 0 and got["corrupt"] == 0 and got["failed"] == 8
    finally:
        _stop(peers)


def test_wrong_secret_cannot_join_lookup_or_pull(transport):
    peers = start_loopback_mesh(2, transport, per_peer_env={0: {"KVMESH_SECRET": "right"},
                                                            1: {"KVMESH_SECRET": "wrong"}})
    try:
        owner, intruder = peers
        assert owner.send("fill", seed=5, chunks=8)["stored"] == 8
        time.sleep(1.5)  # several gossip rounds
        assert owner.send("status")["members"] == [owner.peer_id]
        assert intruder.send("status")["members"] == [intruder.peer_id]
        assert intruder.send("lookup", seed=5, chunks=8)["matched"] == 0
        got = intruder.send("load", seed=5, chunks=8)
        assert got["ok"] == 0 and got["failed"] == 8
    finally:
        _stop(peers)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif("ucx" not in transports(), reason="needs the ucx extra")
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_ucx_peers_sleep_when_idle_and_exit_when_asked():
    """After a pull, with a receive posted on each side, idle peers use a few
    percent of a core (ucxx's default busy wait took a whole one), and exit
    cleanly: ucxx's notifier thread must not hold the interpreter open."""
    peers = start_loopback_mesh(2, "ucx")
    try:
        wait_for_members(peers, 2)
        assert peers[0].send("fill", seed=3, chunks=8) == {"stored": 8}
        time.sleep(0.3)
        assert peers[1].send("load", seed=3, chunks=8)["ok"] == 8
        before = [_cpu_seconds(p.proc.pid) for p in peers]
        start = time.monotonic()
        time.sleep(2)
        shares = [(_cpu_seconds(p.proc.pid) - b) / (time.monotonic() - start)
                  for p, b in zip(peers, before)]
        assert max(shares) < 0.5, shares
        for peer in peers:
            peer.write("exit")
        assert [p.proc.wait(timeout=20) for p in peers] == [0, 0]
    finally:
        _stop(peers)
