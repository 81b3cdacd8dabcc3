"""The loader's slot reservations ahead of a pull (stores with a disk tier)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kvmesh.config import StoreConfig
from kvmesh.peers import loader
from kvmesh.store import ChunkStore
from kvmesh.types import ChunkKey

SLOT = 4096


def _keys(n: int) -> list[ChunkKey]:
    return [ChunkKey(i.to_bytes(16, "big")) for i in range(n)]


@pytest.fixture
def disk_store(tmp_path):
    store = ChunkStore(StoreConfig(cpu_bytes=4 * SLOT, disk_dir=tmp_path, disk_bytes=1 << 20),
                       SLOT, shared=False)
    yield store
    store.close()


async def test_slots_are_reserved_until_the_cpu_tier_is_full(disk_store):
    ticket = disk_store.prepare_store(_keys(1)[0])  # being stored: gets no second slot
    reserved = await loader._reserve(disk_store, _keys(6))
    assert sorted(reserved) == [1, 2, 3]  # key 0 is in flight, in the first of 4 slots
    loader._abandon(disk_store, [ticket, *reserved.values()])
    assert disk_store.stats().cpu_slots_used == 0


async def test_slots_reserved_for_a_cancelled_pull_are_given_back(disk_store, monkeypatch):
    entered, proceed, finished = threading.Event(), threading.Event(), threading.Event()
    reserve = loader._reserve_slots

    def slow_reserve(store, keys):
        entered.set()
        proceed.wait(5)
        try:
            return reserve(store, keys)
        finally:
            finished.set()

    monkeypatch.setattr(loader, "_reserve_slots", slow_reserve)
    task = asyncio.get_running_loop().create_task(loader._reserve(disk_store, _keys(3)))
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    proceed.set()
    assert await asyncio.to_thread(finished.wait, 5)
    for _ in range(100):  # the give-back runs on the loop once the thread is done
        if disk_store.stats().cpu_slots_used == 0:
            break
        await asyncio.sleep(0.01)
    assert disk_store.stats().cpu_slots_used == 0
