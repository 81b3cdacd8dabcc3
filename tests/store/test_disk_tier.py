import os

import pytest
import xxhash

from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.store.disk_tier import HEADER, DiskTier
from kvmesh.types import ChunkKey


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "big"))


def payload(i: int, n: int = 100) -> bytes:
    return bytes((i + j) % 256 for j in range(n))


def put(tier: DiskTier, i: int, n: int = 100) -> list[ChunkKey]:
    data = payload(i, n)
    return tier.write(key(i), data, xxhash.xxh3_64_intdigest(data))


def read(tier: DiskTier, i: int, n: int = 100) -> bytes:
    out = memoryview(bytearray(n))
    length, checksum = tier.read_into(key(i), out)
    assert checksum == xxhash.xxh3_64_intdigest(out[:length])
    return bytes(out[:length])


FILE = HEADER.size + 100


@pytest.fixture
def tier(tmp_path):
    t = DiskTier(tmp_path, cap_bytes=FILE * 3)
    yield t
    t.close()


def test_write_then_read_round_trips(tier, tmp_path):
    assert put(tier, 1) == []
    assert tier.contains(key(1)) and not tier.contains(key(2))
    assert read(tier, 1) == payload(1)
    assert tier.used_bytes == FILE
    assert (tmp_path / (key(1).hex() + ".kvc")).stat().st_size == FILE


def test_lru_eviction_respects_cap_and_reports_keys(tier):
    for i in range(3):
        put(tier, i)
    read(tier, 0)  # 0 becomes most recently used
    assert put(tier, 3) == [key(1)]
    assert sorted(tier.keys()) == [key(0), key(2), key(3)]
    assert tier.used_bytes == 3 * FILE


def test_pinned_files_are_never_evicted(tier):
    for i in range(3):
        put(tier, i)
    assert tier.pin(key(0)) and tier.pin(key(1))
    assert put(tier, 3) == [key(2)]
    tier.pin(key(3))
    with pytest.raises(StoreFullError, match="pinned"):
        put(tier, 4)
    assert sorted(tier.keys()) == [key(0), key(1), key(3)]  # nothing changed
    assert tier.unpin(key(0)) and not tier.unpin(key(0))
    assert put(tier, 4) == [key(0)]


def test_chunk_bigger_than_cap_is_refused(tier):
    with pytest.raises(StoreFullError, match="exceeds"):
        put(tier, 1, n=FILE * 3)
    assert tier.used_bytes == 0


def test_restart_indexes_chunks_and_deletes_leftover_temp_files(tmp_path):
    tier = DiskTier(tmp_path, cap_bytes=1 << 20)
    put(tier, 1)
    put(tier, 2)
    tier.close()
    leftover = tmp_path / f".{key(3).hex()}.dead.tmp"
    leftover.write_bytes(b"half a chunk")
    stray = tmp_path / "notes.txt"
    stray.write_text("not ours")

    tier = DiskTier(tmp_path, cap_bytes=1 << 20)
    assert sorted(tier.keys()) == [key(1), key(2)]
    assert not tier.contains(key(3)) and not leftover.exists()
    assert stray.exists()  # files that are not ours are left alone
    assert read(tier, 2) == payload(2)
    assert tier.used_bytes == 2 * FILE
    tier.close()


def test_restart_deletes_truncated_chunk_files(tmp_path):
    tier = DiskTier(tmp_path, cap_bytes=1 << 20)
    put(tier, 1)
    put(tier, 2)
    tier.close()
    path = tmp_path / (key(2).hex() + ".kvc")
    path.write_bytes(path.read_bytes()[:-10])
    tier = DiskTier(tmp_path, cap_bytes=1 << 20)
    assert tier.keys() == [key(1)] and not path.exists()
    tier.close()


def test_restart_with_smaller_cap_evicts_oldest(tmp_path):
    tier = DiskTier(tmp_path, cap_bytes=1 << 20)
    for i in range(3):
        put(tier, i)
        os.utime(tmp_path / (key(i).hex() + ".kvc"), ns=(i * 10**9, i * 10**9))
    tier.close()
    tier = DiskTier(tmp_path, cap_bytes=FILE * 2)
    assert tier.keys() == [key(1), key(2)]
    tier.close()


def test_corrupt_payload_is_a_miss_and_the_file_is_deleted(tier, tmp_path):
    put(tier, 1)
    path = tmp_path / (key(1).hex() + ".kvc")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChunkMissingError, match="corrupt"):
        read(tier, 1)
    assert not tier.contains(key(1)) and not path.exists()
    assert tier.used_bytes == 0


def test_vanished_file_is_a_miss(tier, tmp_path):
    put(tier, 1)
    (tmp_path / (key(1).hex() + ".kvc")).unlink()
    with pytest.raises(ChunkMissingError, match="vanished"):
        read(tier, 1)
    assert not tier.contains(key(1))


def test_failed_write_leaves_nothing(tier, tmp_path, monkeypatch):
    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        put(tier, 1)
    assert not tier.contains(key(1)) and tier.used_bytes == 0
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    monkeypatch.undo()
    put(tier, 1)
    put(tier, 2)
    put(tier, 3)  # the failed write's reservation was released
    assert len(tier) == 3


def test_remove_and_missing(tier):
    put(tier, 1)
    assert tier.remove(key(1)) and not tier.remove(key(1))
    with pytest.raises(ChunkMissingError):
        read(tier, 1)


def test_second_tier_on_the_same_directory_is_refused(tier, tmp_path):
    with pytest.raises(StoreError, match="in use"):
        DiskTier(tmp_path, cap_bytes=FILE)
