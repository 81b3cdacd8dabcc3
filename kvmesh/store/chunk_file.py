"""The disk tier's files: one per chunk, its header, and the file operations.

A chunk lives in `<key hex>.kvc`: a 48-byte header, then the payload.

    magic b"KVMESHC\\0" | version u16 | 6 reserved bytes | key (16) | length u64 | xxh3_64 u64

`write_file` writes a whole file and fsyncs it (the disk tier writes to a
hidden temp name, `.<key hex>.<random><TMP_SUFFIX>`, then renames it into
place); `read_exact` fills a buffer or reports a short file; `parse_header`
checks a header against the key its file name promises. `lock_directory`
takes the exclusive flock that makes one DiskTier per directory. None of
these keeps state or takes a lock: thread safety is the disk tier's.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from kvmesh.errors import StoreError
from kvmesh.types import CHUNK_KEY_BYTES, ChunkKey

MAGIC = b"KVMESHC\0"
VERSION = 1
HEADER = struct.Struct("<8sH6x16sQQ")  # magic, version, key, length, checksum
SUFFIX = ".kvc"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class DiskEntry:
    length: int  # payload bytes
    checksum: int  # xxh3_64 of the payload

    @property
    def file_bytes(self) -> int:
        return HEADER.size + self.length


def pack_header(key: ChunkKey, length: int, checksum: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, bytes(key), length, checksum)


def parse_header(raw: bytes | memoryview, key: ChunkKey) -> DiskEntry | None:
    """The entry a header describes; None unless it is a header of ours for `key`."""
    if len(raw) != HEADER.size:
        return None
    magic, version, raw_key, length, checksum = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION or raw_key != key:
        return None
    return DiskEntry(length, checksum)


def key_from_name(name: str) -> ChunkKey | None:
    """The key a chunk file's name holds; None for any other name."""
    if not name.endswith(SUFFIX) or len(name) != 2 * CHUNK_KEY_BYTES + len(SUFFIX):
        return None
    try:
        return ChunkKey(bytes.fromhex(name[:-len(SUFFIX)]))
    except ValueError:
        return None


def lock_directory(directory: Path) -> int:
    """The descriptor holding `<dir>/.lock`'s exclusive flock; StoreError if
    another store (in this process or another) holds it."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"disk tier directory {directory} is in use by another store") from None
    return fd


def write_file(path: Path, header: bytes, payload: memoryview) -> None:
    """Create `path` (it must not exist), write header and payload, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for data in (memoryview(header), payload):
            while data:
                data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_exact(f, out: memoryview) -> bool:
    """Fill `out` from `f`; False on a short read (EOF first)."""
    done = 0
    while done < len(out):
        n = f.readinto(out[done:])
        if not n:
            return False
        done += n
    return True


def unlink(path: Path) -> None:
    """Delete a file; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
