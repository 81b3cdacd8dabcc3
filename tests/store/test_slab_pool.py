import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from kvmesh.errors import StoreError
from kvmesh.store import slab_pool
from kvmesh.store.slab_pool import SlabPool, map_readonly


@pytest.fixture
def pool():
    p = SlabPool(slot_bytes=64, cap_bytes=64 * 4 + 10)
    yield p
    p.close()


def test_slots_are_carved_from_cap_and_never_grow(pool):
    assert pool.num_slots == 4
    slots = [pool.alloc() for _ in range(4)]
    assert sorted(slots) == [0, 1, 2, 3]
    assert pool.alloc() is None
    assert pool.used_slots == 4 and pool.free_slots == 0


def test_cap_smaller_than_a_slot_is_refused_clearly():
    with pytest.raises(ValueError, match="holds no slot of 128 bytes"):
        SlabPool(slot_bytes=128, cap_bytes=100)
    with pytest.raises(ValueError, match="positive"):
        SlabPool(slot_bytes=0, cap_bytes=100)


def test_free_returns_the_slot_and_catches_double_free(pool):
    slot = pool.alloc()
    pool.free(slot)
    assert pool.free_slots == 4
    with pytest.raises(ValueError, match="double free"):
        pool.free(slot)
    with pytest.raises(ValueError, match="out of range"):
        pool.free(99)


def test_view_and_tensor_share_the_slot_memory(pool):
    slot = pool.alloc()
    view = pool.view(slot)
    assert len(view) == 64 and not view.readonly
    view[:3] = b"abc"
    tensor = pool.tensor(slot)
    assert tensor.dtype == torch.uint8 and tensor.numel() == 64
    assert bytes(tensor[:3].numpy()) == b"abc"
    tensor[3] = 7
    assert pool.view(slot)[3] == 7
    assert pool.offset(slot) == slot * 64


def test_slots_do_not_overlap(pool):
    for slot in range(4):
        pool.view(slot)[:] = bytes([slot]) * 64
    for slot in range(4):
        assert bytes(pool.view(slot)) == bytes([slot]) * 64


def test_shared_pool_lives_in_shm_and_close_unlinks_it_twice_safely():
    pool = SlabPool(64, 256)
    path = pool.shm_path
    assert path is not None and os.path.exists(path)
    assert os.path.getsize(path) == 256
    if os.path.isdir("/dev/shm"):
        assert path.startswith("/dev/shm/")
    pool.close()
    pool.close()
    assert not os.path.exists(path)
    with pytest.raises(StoreError, match="closed"):
        pool.view(0)


def test_unshared_pool_has_no_file():
    pool = SlabPool(64, 256, shared=False)
    assert pool.shm_path is None
    pool.view(1)[:2] = b"ok"
    assert bytes(pool.tensor(1)[:2].numpy()) == b"ok"
    pool.close()


def test_close_with_live_tensor_keeps_the_mapping_valid():
    pool = SlabPool(64, 256)
    tensor = pool.tensor(2)
    tensor.fill_(9)
    path = pool.shm_path
    pool.close()
    assert not os.path.exists(path)
    assert int(tensor.sum()) == 9 * 64  # still mapped: no use-after-unmap


def test_another_process_reads_a_slot_through_the_file(pool):
    slot = pool.alloc()
    pool.view(slot)[:] = bytes(range(64))
    script = (
        "import mmap, sys\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
        "off = int(sys.argv[2])\n"
        "sys.stdout.write(m[off:off + 64].hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", script, pool.shm_path, str(pool.offset(slot))],
                         capture_output=True, text=True, check=True, timeout=30)
    assert bytes.fromhex(out.stdout) == bytes(range(64))


def test_map_readonly_sees_writes_and_refuses_writes(pool):
    slot = pool.alloc()
    peer = map_readonly(pool.shm_path)
    pool.view(slot)[:4] = b"live"
    off = pool.offset(slot)
    assert peer[off:off + 4] == b"live"
    with pytest.raises(TypeError):
        peer[off] = 0
    peer.close()


def test_files_left_by_dead_owners_are_deleted_by_the_next_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(slab_pool, "SHM_DIR", tmp_path)
    live = SlabPool(64, 256)
    dead = tmp_path / "kvmesh-slab-999999-dead"  # nobody holds its lock: its owner died
    dead.write_bytes(b"\0" * 256)
    young = tmp_path / "kvmesh-slab-999999-young"  # may be a pool being created right now
    young.write_bytes(b"\0" * 256)
    hour_ago = time.time() - 3600
    for path in (dead, live.shm_path):
        os.utime(path, (hour_ago, hour_ago))

    fresh = SlabPool(64, 256)
    assert not dead.exists()
    assert os.path.exists(live.shm_path) and young.exists()  # locked by a live owner / too young
    assert os.path.dirname(fresh.shm_path) == str(tmp_path)
    live.close()
    fresh.close()


def _resident_bytes(path: str) -> int:
    """Rss of this process's mapping of `path`, from /proc/self/smaps."""
    mapped = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            mapped = fields[-1] == path
        elif mapped and fields[0] == "Rss:":
            return int(fields[1]) * 1024
    raise AssertionError(f"{path} is not mapped")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
@pytest.mark.parametrize("prefault", [False, True])
def test_prefault_makes_every_page_resident_without_touching_the_bytes(prefault):
    p = SlabPool(slot_bytes=1 << 20, cap_bytes=8 << 20, prefault=prefault)
    try:
        p.view(p.alloc())[:5] = b"early"  # a save may land while the thread runs
        if prefault:
            assert p.prefaulter.done.wait(10)
            if p.prefaulter.populated_bytes == 0:
                pytest.skip("this kernel lacks MADV_POPULATE_WRITE")
            assert p.prefaulter.populated_bytes == 8 << 20
            assert _resident_bytes(p.shm_path) == 8 << 20
        else:
            assert p.prefaulter is None
            assert _resident_bytes(p.shm_path) < 1 << 20  # only the page written above
        assert bytes(p.view(0)[:5]) == b"early"
        assert bytes(p.view(5)[:4096]) == bytes(4096)
    finally:
        p.close()


def test_close_waits_out_a_running_prefault_step_and_stops_the_rest(monkeypatch):
    from kvmesh.store import prefault
    entered, release = threading.Event(), threading.Event()
    real = prefault._madvise

    def slow_first_step(address, length, advice):
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return real(address, length, advice)

    monkeypatch.setattr(prefault, "STEP_BYTES", 1 << 20)
    monkeypatch.setattr(prefault, "_madvise", slow_first_step)
    p = SlabPool(slot_bytes=1 << 20, cap_bytes=8 << 20, prefault=True)
    assert entered.wait(10)
    closer = threading.Thread(target=p.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # the range is not unmapped under a running step
    release.set()
    closer.join(10)
    assert not closer.is_alive() and p.prefaulter.done.wait(10)
    assert p.prefaulter.populated_bytes in (0, 1 << 20)  # that step only (0: no kernel support)
