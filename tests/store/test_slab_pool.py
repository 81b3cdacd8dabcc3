import fcntl
import mmap
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from kvmesh.errors import StoreError
from kvmesh.store import slab_pool
from kvmesh.store.slab_pool import SlabPool, map_shared_fd


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


def test_shared_pool_is_a_sealed_memfd_with_no_name_and_closes_twice_safely():
    pool = SlabPool(64, 256)
    assert pool.shared and pool.size == 256
    assert os.readlink(pool.proc_path).startswith("/memfd:kvmesh-pool")  # no file anywhere
    seals = fcntl.fcntl(pool.fd, fcntl.F_GET_SEALS)
    assert seals & slab_pool.SIZE_SEALS == slab_pool.SIZE_SEALS
    with pytest.raises(OSError):
        os.ftruncate(pool.fd, 64)  # a mapping of it can never fault past a shrunk end
    pool.close()
    pool.close()
    with pytest.raises(StoreError, match="closed"):
        pool.view(0)


def test_unshared_pool_has_no_file():
    pool = SlabPool(64, 256, shared=False)
    assert not pool.shared and pool.proc_path is None
    with pytest.raises(StoreError):
        pool.share_fd()
    pool.view(1)[:2] = b"ok"
    assert bytes(pool.tensor(1)[:2].numpy()) == b"ok"
    pool.close()


def test_close_with_live_tensor_keeps_the_mapping_valid():
    pool = SlabPool(64, 256)
    tensor = pool.tensor(2)
    tensor.fill_(9)
    pool.close()
    assert int(tensor.sum()) == 9 * 64  # still mapped: no use-after-unmap


def test_another_process_reads_a_slot_through_a_shared_descriptor(pool):
    slot = pool.alloc()
    pool.view(slot)[:] = bytes(range(64))
    script = (
        "import os, sys\n"
        "from kvmesh.store.slab_pool import map_shared_fd\n"
        "m = map_shared_fd(int(sys.argv[1]))\n"
        "off = int(sys.argv[2])\n"
        "sys.stdout.write(m[off:off + 64].hex())\n"
    )
    fd = pool.share_fd()
    try:
        out = subprocess.run([sys.executable, "-c", script, str(fd), str(pool.offset(slot))],
                             capture_output=True, text=True, check=True, timeout=60,
                             pass_fds=(fd,))
    finally:
        os.close(fd)
    assert bytes.fromhex(out.stdout) == bytes(range(64))


def test_a_shared_descriptor_is_read_only_and_sees_live_writes(pool):
    slot = pool.alloc()
    fd = pool.share_fd()
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(OSError):
            mmap.mmap(fd, 0)  # a writable shared mapping needs a writable descriptor
        peer = map_shared_fd(fd)
    finally:
        os.close(fd)
    pool.view(slot)[:4] = b"live"
    off = pool.offset(slot)
    assert peer[off:off + 4] == b"live"
    with pytest.raises(TypeError):
        peer[off] = 0
    peer.close()


def test_map_shared_fd_refuses_what_is_not_a_sealed_pool(tmp_path):
    plain = tmp_path / "not-a-pool"
    plain.write_bytes(b"\0" * 4096)  # a file another process could shrink under us
    with open(plain, "rb") as f:
        with pytest.raises(ValueError, match="sealed"):
            map_shared_fd(f.fileno())
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="regular file"):
            map_shared_fd(r)
    finally:
        os.close(r)
        os.close(w)


def test_files_left_by_releases_before_memfd_are_deleted_by_the_next_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(slab_pool, "SHM_DIR", tmp_path)
    dead = tmp_path / "kvmesh-slab-999999-dead"  # nobody holds its lock: its owner died
    dead.write_bytes(b"\0" * 256)
    young = tmp_path / "kvmesh-slab-999999-young"  # may be a pool being created right now
    young.write_bytes(b"\0" * 256)
    hour_ago = time.time() - 3600
    os.utime(dead, (hour_ago, hour_ago))
    fresh = SlabPool(64, 256)
    assert not dead.exists() and young.exists()
    fresh.close()


def _resident_bytes(pool: SlabPool) -> int:
    """Rss of this process's mapping of `pool`, from /proc/self/smaps."""
    inode = str(os.fstat(pool.fd).st_ino)
    mapped = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            mapped = fields[4] == inode and "kvmesh-pool" in line
        elif mapped and fields[0] == "Rss:":
            return int(fields[1]) * 1024
    raise AssertionError("the pool is not mapped")


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
            assert _resident_bytes(p) == 8 << 20
        else:
            assert p.prefaulter is None
            assert _resident_bytes(p) < 1 << 20  # only the page written above
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
