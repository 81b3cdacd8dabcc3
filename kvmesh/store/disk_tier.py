"""The disk tier: one file per chunk, crash-safe writes, LRU under a byte cap.

A chunk lives in `<key hex>.kvc`, a header then the payload (the format and
the file operations: `chunk_file`). A write goes to a hidden temp file that
is flushed and fsync'ed, then renamed into place, so a crash never leaves a
half-written chunk visible. On start, leftover temp files are deleted and
chunk files are indexed (their headers checked; payload checksums are
checked on every read), oldest mtime first in the LRU, so chunks survive a
restart. The directory is not fsync'ed after a rename: a crash may forget a
chunk, never corrupt one.

The byte cap counts whole files (header included). Writes evict least recently
used unpinned files to fit and return the evicted keys, so the caller can
report them. Pinned files (`pin`) are never evicted.

Threading: every method is thread-safe. One lock guards the index; payload I/O
in `write`, `write_reserved` and `read_into` runs outside it. One DiskTier per
directory: an exclusive flock on `<dir>/.lock` refuses a second one (in this
process or another) until `close()`.
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import xxhash

from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.store.chunk_file import (HEADER, SUFFIX, TMP_SUFFIX, DiskEntry, key_from_name, lock_directory,
                                     pack_header, parse_header, read_exact, unlink, write_file)
from kvmesh.types import ChunkKey, key_hex

__all__ = ["HEADER", "DiskEntry", "DiskTier"]


class DiskTier:
    def __init__(self, directory: Path, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise ValueError(f"disk tier cap must be positive, got {cap_bytes}")
        self.directory = Path(directory)
        self.cap_bytes = cap_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.directory)
        self._closer = weakref.finalize(self, os.close, self._lock_fd)
        self._lock = threading.Lock()
        self._entries: dict[ChunkKey, DiskEntry] = {}
        self._lru: OrderedDict[ChunkKey, None] = OrderedDict()  # unpinned, oldest first
        self._used = 0  # bytes of indexed files
        self._reserved = 0  # bytes promised to writes in progress
        self._index_existing()

    # -- queries ---------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, key: ChunkKey) -> bool:
        return key in self._entries

    def entry(self, key: ChunkKey) -> DiskEntry | None:
        return self._entries.get(key)

    def keys(self) -> list[ChunkKey]:
        """Every indexed key, least recently used first (pinned ones last)."""
        with self._lock:
            return list(self._lru) + [k for k in self._entries if k not in self._lru]

    # -- writes ----------------------------------------------------------

    def write(self, key: ChunkKey, view: memoryview | bytes, checksum: int) -> list[ChunkKey]:
        """Store `view` (the payload; `checksum` is its xxh3_64, not re-checked).

        Returns the keys evicted to make room. Raises StoreFullError if the
        chunk cannot fit even after evicting every unpinned file; OSError on
        I/O failure. Either way the tier is unchanged and no file is left.
        """
        evicted = self.reserve(memoryview(view).nbytes)
        self.write_reserved(key, view, checksum)
        return evicted

    def reserve(self, length: int) -> list[ChunkKey]:
        """Make room for a payload of `length` bytes and hold it for one
        `write_reserved`. Returns the evicted keys; raises StoreFullError
        (evicting nothing) when it cannot fit."""
        need = HEADER.size + length
        if need > self.cap_bytes:
            raise StoreFullError(f"a {need}-byte chunk file exceeds the disk tier cap of {self.cap_bytes} bytes")
        with self._lock:
            victims, room = [], self.cap_bytes - self._used - self._reserved
            for key in self._lru:
                if room >= need:
                    break
                victims.append(key)
                room += self._entries[key].file_bytes
            if room < need:
                raise StoreFullError(f"disk tier {self.directory} is full: every file is pinned or being written")
            for key in victims:
                self._drop(key)
            self._reserved += need
        return victims

    def write_reserved(self, key: ChunkKey, view: memoryview | bytes, checksum: int,
                       pinned: bool = False, reserved: int | None = None) -> None:
        """Write a chunk into space taken by `reserve(reserved)` (default:
        `len(view)`; a payload encoded after its space was reserved may be
        shorter); the whole reservation is released, written or not.
        `pinned=True` publishes it already pinned, so no eviction can slip in
        before the caller takes over."""
        payload = memoryview(view).cast("B")
        need = HEADER.size + (payload.nbytes if reserved is None else reserved)
        final = self._path(key)
        tmp = self.directory / f".{key_hex(key)}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            if HEADER.size + payload.nbytes > need:
                raise ValueError(f"a {payload.nbytes}-byte payload exceeds the {reserved} bytes reserved")
            write_file(tmp, pack_header(key, payload.nbytes, checksum), payload)
        except BaseException:
            with self._lock:
                self._reserved -= need
            unlink(tmp)
            raise
        with self._lock:
            self._reserved -= need
            try:
                os.replace(tmp, final)  # atomic: readers see the old file or the new one
            except BaseException:
                unlink(tmp)
                raise
            old = self._entries.get(key)
            if old is not None:
                self._used -= old.file_bytes
                pinned = pinned or key not in self._lru
                self._lru.pop(key, None)
            self._entries[key] = DiskEntry(payload.nbytes, checksum)
            self._used += HEADER.size + payload.nbytes
            if not pinned:
                self._lru[key] = None

    # -- reads, pins, removal --------------------------------------------

    def read_into(self, key: ChunkKey, out: memoryview) -> tuple[int, int]:
        """Copy the payload into `out[:length]` and return (length, checksum).

        The payload is verified against its checksum. A missing file raises
        ChunkMissingError; a corrupt one (bad header, wrong size, checksum
        mismatch) is deleted, forgotten, and raises ChunkMissingError too.
        Other I/O errors raise StoreError. After any error the contents of
        `out` are undefined.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise ChunkMissingError(f"chunk {key_hex(key)} is not on disk")
            if key in self._lru:
                self._lru.move_to_end(key)
        if len(out) < entry.length:
            raise ValueError(f"buffer of {len(out)} bytes is too small for a {entry.length}-byte chunk")
        payload = out[:entry.length]
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                header = bytearray(HEADER.size)
                intact = (read_exact(f, memoryview(header)) and parse_header(header, key) == entry
                          and read_exact(f, payload) and not f.read(1))
        except FileNotFoundError:
            self._forget(key, entry)
            raise ChunkMissingError(f"chunk file for {key_hex(key)} vanished") from None
        except OSError as exc:
            raise StoreError(f"reading chunk {key_hex(key)} from disk: {exc}") from exc
        if not intact or xxhash.xxh3_64_intdigest(payload) != entry.checksum:
            self._forget(key, entry, delete=True)
            raise ChunkMissingError(f"chunk file for {key_hex(key)} was corrupt and has been deleted")
        return entry.length, entry.checksum

    def pin(self, key: ChunkKey) -> bool:
        """Exempt a file from eviction; False if unknown. Not counted: one unpin undoes any pins."""
        with self._lock:
            if key not in self._entries:
                return False
            self._lru.pop(key, None)
            return True

    def unpin(self, key: ChunkKey) -> bool:
        """Make a file evictable again, as most recently used; False if unknown or not pinned."""
        with self._lock:
            if key not in self._entries or key in self._lru:
                return False
            self._lru[key] = None
            return True

    def remove(self, key: ChunkKey) -> bool:
        """Delete a chunk file, pinned or not; False if it was not indexed."""
        with self._lock:
            if key not in self._entries:
                return False
            self._drop(key)
            return True

    def close(self) -> None:
        """Release the directory lock. Files stay for the next start. Safe to call twice."""
        self._closer()

    # -- private ---------------------------------------------------------

    def _path(self, key: ChunkKey) -> Path:
        return self.directory / f"{key_hex(key)}{SUFFIX}"

    def _drop(self, key: ChunkKey) -> None:
        """Forget and delete one file. Lock held."""
        entry = self._entries.pop(key)
        self._lru.pop(key, None)
        self._used -= entry.file_bytes
        unlink(self._path(key))

    def _forget(self, key: ChunkKey, entry: DiskEntry, delete: bool = False) -> None:
        with self._lock:
            if self._entries.get(key) is entry:  # not replaced by a newer write meanwhile
                if delete:
                    self._drop(key)
                else:
                    del self._entries[key]
                    self._lru.pop(key, None)
                    self._used -= entry.file_bytes

    def _index_existing(self) -> None:
        found = []
        for path in self.directory.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                unlink(path)  # a write that never finished
                continue
            key = key_from_name(name)
            if key is None:
                continue  # not ours
            try:
                stat = path.stat()
                with open(path, "rb") as f:
                    entry = parse_header(f.read(HEADER.size), key)
            except OSError:
                continue
            if entry is None or entry.file_bytes != stat.st_size:
                unlink(path)
                continue
            found.append((stat.st_mtime_ns, key, entry))
        for _, key, entry in sorted(found, key=lambda item: item[0]):
            self._entries[key] = entry
            self._lru[key] = None
            self._used += entry.file_bytes
        while self._used > self.cap_bytes:  # the cap shrank since the last run
            self._drop(next(iter(self._lru)))
