"""A fixed pool of equal CPU slots carved out of one buffer.

The buffer is allocated once and the pool never grows, so a transport can
register it (UCX) once. With `shared=True` the buffer is an anonymous
in-memory file (`memfd_create`), mapped read-write here and sealed so its size
can never change (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL): a reader's
mapping of it can never fault past the end. Other processes on this host get
it only as a read-only file descriptor from `share_fd()`, handed over a Unix
socket by `kvmesh.transfer.pool_door`; they map it with `map_shared_fd` and
copy chunks out at `offset(slot)`: the same-host transfer path. There is no
name in any filesystem, so nothing can open the pool by path, and nothing is
left behind when the process dies, however it dies (the kernel frees the
memory once the last descriptor and mapping are gone). Files that releases
before this one left in /dev/shm are still swept at startup
(`delete_stale_files`).

Threading: `alloc` and `free` are not thread-safe; the owner serializes them
(ChunkStore calls them under its lock). `view`, `tensor`, `offset` and
`share_fd` read only state fixed at construction and may be called from any
thread.

Buffers: the pool owns the memory. Views and tensors handed out alias a slot;
they must not be used once the slot is freed (it is handed out again), and they
keep the mapping alive past `close()`, so a stale tensor reads stale bytes
rather than faulting.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import tempfile
import time
import weakref
from pathlib import Path

import torch

from kvmesh.errors import StoreError
from kvmesh.store.prefault import Prefaulter

SHM_DIR = Path("/dev/shm")
FILE_PREFIX = "kvmesh-slab-"  # pool files of releases before memfd pools
STALE_AFTER_S = 10.0
# A shared pool's size is fixed for good: no mapping of it can ever fault.
SIZE_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4)


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
        self.size = size
        self.fd: int | None = None  # the memfd of a shared pool
        if shared:
            self.fd, self._mmap = _create_shared(size)
        else:
            self._mmap = mmap.mmap(-1, size)
        self._finalizer = weakref.finalize(self, _close_fd, self.fd)
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
    def shared(self) -> bool:
        return self.fd is not None

    @property
    def proc_path(self) -> str | None:
        """/proc/<pid>/fd/<n> of a shared pool (for tests and debugging)."""
        return None if self.fd is None else f"/proc/{os.getpid()}/fd/{self.fd}"

    def share_fd(self) -> int:
        """A new read-only descriptor of the shared pool, for another process on
        this host; the caller owns it and closes it once sent. StoreError if
        the pool is not shared or is closed."""
        if self.fd is None or self._view is None:
            raise StoreError("this pool is not shared")
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.num_slots - len(self._free)

    def offset(self, slot: int) -> int:
        """Byte offset of `slot` in the buffer (and in the shared pool's file)."""
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
        """Unmap the buffer and close its file. Safe to call twice.

        If views or tensors handed out are still alive, the mapping stays until
        the last of them is dropped (and so does the memory of a shared pool
        that another process still maps).
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


def map_shared_fd(fd: int) -> mmap.mmap:
    """Map a pool another process shared (`SlabPool.share_fd`), read-only.

    The descriptor came from another process, so it is checked first: it must
    be a regular file whose size is sealed (so the mapping can never fault
    past a shrunk end). Raises OSError or ValueError otherwise. The caller
    still owns `fd` (it may close it once this returns) and owns the mapping.
    Bytes of a slot are only meaningful while its holder keeps the chunk pinned.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size <= 0:
        raise ValueError("a shared pool must be a non-empty regular file")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except (OSError, AttributeError):  # EINVAL: a file that cannot be sealed at all
        seals = 0
    if seals & SIZE_SEALS != SIZE_SEALS:
        raise ValueError("a shared pool's size must be sealed")
    return mmap.mmap(fd, info.st_size, access=mmap.ACCESS_READ)


def _create_shared(size: int) -> tuple[int, mmap.mmap]:
    """An anonymous in-memory file of `size` bytes, its pages reserved and its
    size sealed, mapped read-write; returns (fd, mapping)."""
    delete_stale_files(SHM_DIR if SHM_DIR.is_dir() else Path(tempfile.gettempdir()))
    if not hasattr(os, "memfd_create"):
        raise StoreError("shared CPU pools need memfd_create (Linux)")
    fd = os.memfd_create("kvmesh-pool", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        _reserve(fd, size)
        mapping = mmap.mmap(fd, size)  # MAP_SHARED, read-write
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd, mapping


def delete_stale_files(directory: Path) -> list[str]:
    """Delete pool files whose owner died without cleaning up; returns their paths.

    A file is stale when no process holds its flock and it is older than
    STALE_AFTER_S. Files of other users cannot be opened and are skipped.
    """
    deleted = []
    now = time.time()
    for path in directory.glob(f"{FILE_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
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
        _unlink(str(path))
        deleted.append(str(path))
    return deleted


def _reserve(fd: int, size: int) -> None:
    """Commit the file's pages now: running out of memory fails here, not
    with SIGBUS later."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise StoreError(
            f"cannot reserve {size} bytes for the CPU pool: {exc.strerror}; "
            "lower KVMESH_CPU_BYTES or raise the memory limit") from exc


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
