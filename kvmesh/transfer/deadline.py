"""`within(aw, timeout_s)`: await with a deadline, without losing a cancellation.

On Python 3.11+ this is `asyncio.timeout`, which cancels the awaiting task
itself at the deadline. Two reasons not to use `asyncio.wait_for`:

- wait_for wraps `aw` in a task of its own, which costs a task and a loop
  turn on every request (LOOKUPs on the TTFT path included);
- before Python 3.12, wait_for loses a cancellation that arrives just as the
  awaited work finishes: it returns the result and the task goes on as if
  never cancelled. A peer stopping then waits forever for a connection task
  that went back to reading (seen: a server cancelled as its handshake ended).
"""

from __future__ import annotations

import asyncio
import sys

if sys.version_info >= (3, 11):
    async def within(aw, timeout_s: float | None):
        """`await aw`, or TimeoutError after `timeout_s` (None: no deadline)."""
        async with asyncio.timeout(timeout_s):
            return await aw
else:  # Python 3.10
    within = asyncio.wait_for
