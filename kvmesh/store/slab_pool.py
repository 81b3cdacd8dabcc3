"""A fixed pool of equal CPU slots carved out of one buffer.

The buffer is allocated once and the pool never grows, so a transport can
register it (UCX) once. With `shared=True` the buffer is a file in /dev/shm
(the temp dir if there is no /dev/shm), mapped read-write; another process on
the same host opens `shm_path`, maps it read-only (`map_readonly`) and copies a
chunk out at `offset(slot)`: the same-host transfer path. The file is created
with mode 0600, so only the same user can map it. With `prefault=True` a
background thread faults every page in right away (`prefault.Prefaulter`), so
no save pays the kernel's first-touch cost.

A killed process cannot unlink its file, so the owner holds a shared flock on
it for its lifetime (the kernel drops it however the process dies), and every
new shared pool first deletes `kvmesh-slab-*` files that nobody holds locked
and that are older than STALE_AFTER_S (the age guards the instant between
creating a file and locking it).

Threading: `alloc` and `free` are not thread-safe; the owner serializes them
(ChunkStore calls them under its lock). `view`, `tensor` and `offset` read only
state fixed at construction and may be called from any thread.

Buffers: the pool owns the memory. Views and tensors handed out alias a slot;
they must not be used once the slot is freed (it is handed out again), and they
keep the mapping alive past `close()` (the file is unlinked regardless), so a
stale tensor reads stale bytes rather than faulting.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import time
import weakref
from pathlib import Path

import torch

from kvmesh.errors import StoreError
from kvmesh.store.prefault import Prefaulter

SHM_DIR = Path("/dev/shm")
FILE_PREFIX = "kvmesh-slab-"
STALE_AFTER_S = 10.0


class SlabPool:
    def __init__(self, slot_bytes: int, cap_bytes: int, shared: bool = True,
                 prefault: bool = False) -> None:
        if slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be positive, got {slot_bytes}")
        num_slots = cap_bytes // slot_bytes
        if num_slots < 1:
            raise ValueError(
                f"a CPU pool of {cap_bytes} bytes holds no slot of {slot_bytes} bytes: "
                "raise the CPU tier size (KVMESH_CPU_BYTES) or lower chunk_tokens")
        self.slot_bytes = slot_bytes
        self.num_slots = num_slots
        size = num_slots * slot_bytes
        self.shm_path: str | None = None
        lock_fd = None
        if shared:
            self.shm_path, lock_fd, self._mmap = _create_shared(size)
        else:
            self._mmap = mmap.mmap(-1, size)
        self._finalizer = weakref.finalize(self, _release_file, self.shm_path, lock_fd)
        # Tensors are built over memoryviews, never over the mmap itself: torch
        # keeps a reference to the object but drops its buffer export, so a
        # tensor over the bare mmap would dangle once the mmap is closed.
        self._view: memoryview | None = memoryview(self._mmap)
        self._tensors: list[torch.Tensor | None] = [None] * num_slots  # built on first use
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out slot 0 first
        self._in_use = bytearray(num_slots)
        # Page faults taken now, in the background, not by the first save into each slot.
        self.prefaulter = Prefaulter(self._mmap) if prefault else None

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.num_slots - len(self._free)

    def offset(self, slot: int) -> int:
        """Byte offset of `slot` in the buffer (and in the file at `shm_path`)."""
        self._check_slot(slot)
        return slot * self.slot_bytes

    def view(self, slot: int) -> memoryview:
        """A writable view of the whole slot, `slot_bytes` long."""
        if self._view is None:
            raise StoreError("the slab pool is closed")
        start = self.offset(slot)
        return self._view[start:start + self.slot_bytes]

    def tensor(self, slot: int) -> torch.Tensor:
        """A 1-D uint8 tensor sharing the slot's memory, `slot_bytes` long.

        The same tensor object is returned for a slot every time (building one
        costs ~5 us); callers must not change its metadata in place (resize_,
        set_, as_strided_): take views of it instead.
        """
        tensor = self._tensors[slot] if 0 <= slot < self.num_slots else None
        if tensor is None:
            tensor = self._tensors[slot] = torch.frombuffer(self.view(slot), dtype=torch.uint8)
        return tensor

    def alloc(self) -> int | None:
        """A free slot, or None when every slot is in use (the pool never grows)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._in_use[slot] = 1
        return slot

    def free(self, slot: int) -> None:
        """Return a slot; ValueError if it is not allocated (a double free)."""
        self._check_slot(slot)
        if not self._in_use[slot]:
            raise ValueError(f"slot {slot} is not allocated (double free?)")
        self._in_use[slot] = 0
        self._free.append(slot)

    def close(self) -> None:
        """Unmap the buffer and unlink its file. Safe to call twice.

        If views or tensors handed out are still alive, the mapping stays until
        the last of them is dropped; the file is unlinked now either way.
        """
        if self.prefaulter is not None:
            self.prefaulter.stop()  # no madvise may run on the range once it is unmapped
        if self._view is not None:
            self._tensors = [None] * self.num_slots
            self._view.release()
            self._view = None
            try:
                self._mmap.close()
            except BufferError:
                pass  # live views still alias it; it unmaps when they are gone
        self._finalizer()

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.num_slots})")


def map_readonly(shm_path: str) -> mmap.mmap:
    """Map another process's pool file read-only, to copy chunks out of it.

    The caller owns the returned mapping and closes it. Bytes of a slot are
    only meaningful while its holder keeps the chunk pinned.
    """
    with open(shm_path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _create_shared(size: int) -> tuple[str, int, mmap.mmap]:
    """Create, lock, size and map a pool file; the returned fd holds the lock."""
    directory = SHM_DIR if SHM_DIR.is_dir() else Path(tempfile.gettempdir())
    delete_stale_files(directory)
    fd, path = tempfile.mkstemp(prefix=f"{FILE_PREFIX}{os.getpid()}-", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # "alive" for as long as this fd is open
        _reserve(fd, size, path)
        mapping = mmap.mmap(fd, size)  # MAP_SHARED, read-write
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return path, fd, mapping


def delete_stale_files(directory: Path) -> list[str]:
    """Delete pool files whose owner died without cleaning up; returns their paths.

    A file is stale when no process holds its flock and it is older than
    STALE_AFTER_S. Files of other users cannot be opened and are skipped.
    """
    deleted = []
    now = time.time()
    for path in directory.glob(f"{FILE_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if now - os.fstat(fd).st_mtime < STALE_AFTER_S:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # BlockingIOError: its owner is alive
        finally:
            os.close(fd)
        _release_file(str(path), None)
        deleted.append(str(path))
    return deleted


def _reserve(fd: int, size: int, path: str) -> None:
    """Commit the file's pages now: a full tmpfs fails here, not with SIGBUS later."""
    if not hasattr(os, "posix_fallocate"):
        os.ftruncate(fd, size)
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise StoreError(
            f"cannot reserve {size} bytes for the CPU pool at {path}: {exc.strerror}; "
            "/dev/shm may be too small (containers often default to 64 MiB: "
            "raise --shm-size) or lower KVMESH_CPU_BYTES") from exc


def _release_file(path: str | None, lock_fd: int | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if lock_fd is not None:
        os.close(lock_fd)
