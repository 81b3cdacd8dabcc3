"""The one type of an in-place chunk reader.

A load may bring a reader instead of destinations: a chunk that a holder on
this host serves out of its shared pool is then handed to
`reader(index, data)` in place, one copy in all, instead of being copied into
a local slot first (the vLLM worker scatters it straight into paged KV).

Contract: `index` is the chunk's position in the key list the load was given;
`data` is another process's memory, read-only and valid only during the call.
The reader returns True once it has consumed the chunk (anything else, or an
exception, fails that chunk). It runs on the peer's copy threads, several
chunks at once, so it must be safe to run beside itself and beside whatever
thread consumes the load's results.
"""

from __future__ import annotations

from typing import Callable

ChunkReader = Callable[[int, memoryview], bool]
