"""With a disk tier, a load's disk I/O runs off the peer's event loop.

A pull that needs room spills chunks to disk, and a load of a chunk held
only on disk reads it back; both used to run on the loop (the pull's payload
sink, and the facade pinning each landed chunk), so a slow disk froze every
connection of the peer, PINGs from other peers included.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.store.disk_tier import DiskTier
from kvmesh.types import PeerAddress

pytestmark = pytest.mark.timeout(120)

SLOT = 64 << 10
CPU_SLOTS = 32
DISK_DELAY_S = 0.2
MAX_PING_S = 0.05


def _config(disk_dir=None, seed: str | None = None) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16,
                        store=StoreConfig(cpu_bytes=CPU_SLOTS * SLOT, disk_dir=disk_dir),
                        mesh=MeshConfig(seeds=(PeerAddress.parse(seed),) if seed else ()),
                        transfer=TransferConfig(transport="tcp", timeout_s=2.0),
                        control=ControlConfig(enabled=False))


def _save(handle: PeerHandle, n: int, seed: int) -> list[bytes]:
    keys = handle.peer.hasher.keys(np.random.default_rng(seed).integers(0, 1 << 20, n * 16))
    for i, key in enumerate(keys):
        ticket = handle.prepare_save(key)
        ticket.data[:] = (seed + i) % 251
        handle.commit_save(ticket)
    return keys


def _slow(method):
    def slowed(self, *args, **kwargs):
        time.sleep(DISK_DELAY_S)
        return method(self, *args, **kwargs)
    return slowed


class Prober(threading.Thread):
    """PINGs `target` from `source` back to back; keeps each round trip."""

    def __init__(self, source: PeerHandle, target: str) -> None:
        super().__init__(daemon=True)
        self.source, self.target = source, target
        self.rtts: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            start = time.perf_counter()
            self.source.call(self.source.peer.ping(self.target), timeout=5)
            self.rtts.append(time.perf_counter() - start)
            time.sleep(0.01)


def _drain(jobs) -> int:
    ok = 0
    for job in jobs:
        for result in job.results(30):
            ok += result.data is not None
            result.release()
    return ok


def test_a_slow_disk_does_not_stall_the_loop_during_a_pull_and_a_load(tmp_path, monkeypatch):
    holder_cfg = _config()
    holder = PeerHandle.start(holder_cfg, standalone_hasher(holder_cfg, SLOT), SLOT)
    puller_cfg = _config(tmp_path / "disk", holder.peer_id)
    puller = PeerHandle.start(puller_cfg, standalone_hasher(puller_cfg, SLOT), SLOT)
    try:
        remote = _save(holder, 16, seed=1)
        local = _save(puller, CPU_SLOTS, seed=2)  # the CPU tier is full, nothing on disk
        assert puller.call(puller.peer.move(local[:4], "disk")) == [True] * 4
        deadline = time.monotonic() + 10
        while puller.lookup_prefix(remote) < len(remote):
            assert time.monotonic() < deadline, "the holder's chunks were never advertised"
            time.sleep(0.05)
        holder.call(holder.peer.ping(puller.peer_id))  # connected before the clock starts

        monkeypatch.setattr(DiskTier, "write_reserved", _slow(DiskTier.write_reserved))
        monkeypatch.setattr(DiskTier, "read_into", _slow(DiskTier.read_into))
        prober = Prober(holder, puller.peer_id)
        prober.start()
        try:
            started = time.perf_counter()
            jobs = [puller.start_load(local[:4]), puller.start_load(remote)]
            assert _drain(jobs) == 4 + len(remote)
            took = time.perf_counter() - started
        finally:
            prober.stopping.set()
            prober.join()
        worst = max(prober.rtts)
        print(f"pull + load took {took:.2f}s; {len(prober.rtts)} PINGs meanwhile, "
              f"worst {worst * 1e3:.1f} ms")
        assert took > 4 * DISK_DELAY_S  # the disk really was slow
        assert worst < MAX_PING_S, f"the puller's loop stalled: a PING took {worst * 1e3:.0f} ms"
    finally:
        puller.close()
        holder.close()
