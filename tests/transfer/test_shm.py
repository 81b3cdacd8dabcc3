"""Copying a chunk out of another peer's pool: bounds, lease and checksum checks."""

import os
import time

import pytest
import xxhash

from kvmesh.store.slab_pool import SlabPool, map_shared_fd
from kvmesh.transfer.shm import LEASE_MARGIN_S, SHARED_LEASE_S, PoolMapping, SharedCopier


class SharedPoolReader(SharedCopier):
    """The copier plus the holder's pool mapped the way the client maps it."""

    def __init__(self, verify_checksum: bool = False) -> None:
        super().__init__(verify_checksum)
        self.maps: dict[int, PoolMapping] = {}

    def source(self, pool: SlabPool, offset: int, length: int):
        if id(pool) not in self.maps:
            fd = pool.share_fd()
            try:
                self.maps[id(pool)] = PoolMapping(map_shared_fd(fd))
            finally:
                os.close(fd)
        return self.maps[id(pool)].source(offset, length)

    def close(self) -> None:
        for mapping in self.maps.values():
            mapping.close()
        super().close()


@pytest.fixture
def pool():
    pool = SlabPool(slot_bytes=1 << 16, cap_bytes=4 << 16, shared=True)
    pool.view(2)[:] = bytes(range(256)) * 256
    yield pool
    pool.close()


def _copy_out(reader, pool, offset, length, out, checksum, deadline):
    """What the client does for one ref: find the bytes on the loop, copy them."""
    src = reader.source(pool, offset, length)
    return src is not None and reader.copy(out, src, checksum, deadline)


def _copy(reader, pool, deadline, checksum=0, length=1 << 16):
    out = bytearray(1 << 16)
    ok = _copy_out(reader, pool, pool.offset(2), length, memoryview(out), checksum, deadline)
    return ok, bytes(out)


def test_lease_copy_within_the_lease_is_exact(pool):
    reader = SharedPoolReader()
    ok, out = _copy(reader, pool, time.monotonic() + 5)
    assert ok and out == bytes(pool.view(2))
    reader.close()


def test_lease_copy_after_the_lease_is_a_miss(pool):
    reader = SharedPoolReader()
    assert _copy(reader, pool, time.monotonic() - 0.001)[0] is False
    reader.close()


def test_lease_deadline_ends_before_the_holders_lease():
    sent = 100.0
    assert SharedPoolReader.lease_deadline(sent) == sent + SHARED_LEASE_S - LEASE_MARGIN_S
    assert 0 < LEASE_MARGIN_S < SHARED_LEASE_S


def test_checksum_mode_rejects_bytes_that_do_not_match(pool):
    reader = SharedPoolReader(verify_checksum=True)
    good = xxhash.xxh3_64_intdigest(bytes(pool.view(2)))
    assert _copy(reader, pool, time.monotonic() + 5, checksum=good)[0] is True
    assert _copy(reader, pool, time.monotonic() + 5, checksum=good ^ 1)[0] is False
    reader.close()


@pytest.mark.parametrize("offset_delta, length, out_bytes", [
    (0, 1 << 16, (1 << 16) - 1),  # longer than the destination
    (2 << 16, 16, 16),  # past the end of the pool file
    (-(4 << 16), 16, 16),  # a negative offset
])
def test_out_of_range_refs_are_misses(pool, offset_delta, length, out_bytes):
    reader = SharedPoolReader()
    out = memoryview(bytearray(out_bytes))
    assert _copy_out(reader, pool, pool.offset(2) + offset_delta, length, out, 0,
                     time.monotonic() + 5) is False
    assert bytes(out) == bytes(out_bytes)  # nothing written
    reader.close()


def test_a_reader_gets_the_holders_bytes_in_place(pool):
    reader, seen = SharedPoolReader(), []
    src = reader.source(pool, pool.offset(2), 1 << 16)
    assert reader.read(lambda index, data: seen.append((index, bytes(data))) is None, 7, src, 0,
                       time.monotonic() + 5) is True
    assert seen == [(7, bytes(pool.view(2)))]
    reader.close()


@pytest.mark.parametrize("read", [lambda index, data: False, lambda index, data: 1 / 0,
                                  lambda index, data: None])
def test_a_reader_that_fails_or_raises_is_a_miss(pool, read):
    reader = SharedPoolReader()
    src = reader.source(pool, pool.offset(2), 1 << 16)
    assert reader.read(read, 0, src, 0, time.monotonic() + 5) is False
    reader.close()


def test_a_read_after_the_lease_or_against_a_wrong_checksum_is_a_miss(pool):
    src_bytes = bytes(pool.view(2))
    good = xxhash.xxh3_64_intdigest(src_bytes)
    lease = SharedPoolReader()
    src = lease.source(pool, pool.offset(2), 1 << 16)
    assert lease.read(lambda index, data: True, 0, src, 0, time.monotonic() - 0.001) is False
    lease.close()
    verify = SharedPoolReader(verify_checksum=True)
    src = verify.source(pool, pool.offset(2), 1 << 16)
    assert verify.read(lambda index, data: True, 0, src, good, time.monotonic() + 5) is True
    assert verify.read(lambda index, data: True, 0, src, good ^ 1, time.monotonic() + 5) is False
    verify.close()
