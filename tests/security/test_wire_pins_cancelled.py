"""A pull cut off while its chunk is being read back from disk leaks no pin.

With a disk tier the holder pins each chunk it serves on a worker thread
(reading it back into CPU may touch the disk). A puller that hangs up while
that thread runs cancels the serving task, but not the thread: the chunk it
then pinned was never unpinned, so every such hang-up kept one chunk, and
its CPU slot, pinned for the life of the holder. A hostile puller could pin
the whole pool that way, one PULL and one hang-up at a time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.store import ChunkStore
from kvmesh.transfer import frames as f
from tests.security.hostile import HostileClient
from tests.security.victims import SLOT, fill, keys_for, namespace, wait_until

pytestmark = pytest.mark.timeout(60)

READ_BACK_S = 0.3  # how long each pin for a puller takes on the worker thread


@pytest.fixture
def disk_victim(tmp_path, monkeypatch):
    slow = ChunkStore.prepare_load

    def slowed(self, key):
        time.sleep(READ_BACK_S)
        return slow(self, key)

    cfg = KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=16 * SLOT, disk_dir=tmp_path),
                       mesh=MeshConfig(), transfer=TransferConfig(transport="tcp", timeout_s=1.0),
                       control=ControlConfig(enabled=False))
    handle = PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT)
    monkeypatch.setattr(ChunkStore, "prepare_load", slowed)
    yield handle
    handle.close()


async def test_a_puller_hanging_up_mid_read_back_leaks_no_pin(disk_victim):
    keys = keys_for(disk_victim, 4)
    fill(disk_victim, keys)
    for round_ in range(3):
        attacker = await HostileClient.connect(disk_victim.peer_id, namespace(disk_victim))
        await attacker.send(f.Pull(round_ + 1, tuple(keys), False))
        await asyncio.sleep(READ_BACK_S / 3)  # the first chunk's read-back is under way
        attacker.close()
    assert wait_until(lambda: disk_victim.peer.store.stats().pinned == 0, 3 * READ_BACK_S + 2.0)
