"""Fault a pool's pages in ahead of use, on a background thread.

A page of the pool is allocated and zeroed by the kernel the first time it is
written. That cost lands on whoever writes the slot first: a save's gather
took 1.05 ms for a 1.5 MiB chunk into never-written pages against 0.24 ms into
written ones (on these 2-core VMs, ~2 us per 4 KiB page). Engines save into a
fresh slot on every request that brings new prefixes, so until the pool has
been filled once every save paid it, on a thread that shares the engine's cores.

`Prefaulter` takes that cost once, at startup, off the engine's path:
`madvise(MADV_POPULATE_WRITE)` (Linux 5.14+) over the mapping in steps, from
a daemon thread, with the GIL released (ctypes drops it for foreign calls;
`mmap.madvise` does not). It allocates the pages without writing to them, so
it is safe while saves already fill slots. A 1 GiB pool takes ~0.35 s of one
core here. The pool's whole cap is then resident, as vLLM's KV cache and
LMCache's CPU buffer are. Where the kernel lacks the call, pages stay lazy.

It is off by default (KVMESH_PREFAULT). The save thread's CPU per request in
the no-reuse benchmark fell from 5.8 ms to 1.3 ms with it, but the engine
that faulted its pool in at startup ran its forward pass ~11% slower than its
twin that did not, in both of two runs that swapped which engine did it: a
cost far above the 4.5 ms it saves. Why was not pinned down: vLLM opens the
peer (and its pool) after allocating its KV cache, the machine has one NUMA
node and automatic NUMA balancing off, and the slowdown lasted the whole run.
Without it, each slot's first save pays the faults once; once the pool has
filled, slots are reused and no save faults.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import threading

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23  # linux/mman.h; not exported by Python's mmap module
STEP_BYTES = 32 << 20  # one madvise call: how long close() may wait for the thread

_libc = ctypes.CDLL(None, use_errno=True)
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int


class Prefaulter:
    """Populates `mapping` in STEP_BYTES steps until done, failed, or stopped."""

    def __init__(self, mapping: mmap.mmap) -> None:
        anchor = ctypes.c_char.from_buffer(mapping)  # a buffer export: mapping stays open
        self._address = ctypes.addressof(anchor)
        del anchor  # released, so the owner can still close the mapping (after stop())
        self._mapping = mapping  # and an owner dropped without close() cannot unmap it under us
        self._size = len(mapping)
        self._lock = threading.Lock()  # held across each step; stop() waits on it
        self._stopped = False
        self.done = threading.Event()  # set when the thread ends, whatever the reason
        self.populated_bytes = 0
        self._thread = threading.Thread(target=self._run, name="kvmesh-prefault", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop before the next step; returns once no step is running, so the
        caller may unmap the range."""
        self._stopped = True  # seen by the next step, whichever thread the lock goes to next
        with self._lock:  # held: no step is running
            pass

    def _run(self) -> None:
        try:
            for start in range(0, self._size, STEP_BYTES):
                with self._lock:
                    if self._stopped:
                        return
                    length = min(STEP_BYTES, self._size - start)
                    if _madvise(self._address + start, length, MADV_POPULATE_WRITE) != 0:
                        err = ctypes.get_errno()
                        log.debug("pool pages stay lazy: madvise(MADV_POPULATE_WRITE) "
                                  "failed with errno %d", err)
                        return
                    self.populated_bytes = start + length
        finally:
            self.done.set()
