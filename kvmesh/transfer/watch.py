"""Ending a served connection that went idle or stopped taking frames.

`ConnectionWatch` closes its connection when
- a frame has been being written for `send_s`: the other side stopped
  reading, and the request writing it holds a task (and a pinned chunk);
- or it has been idle for `idle_s`: no request in flight, no frame read or
  written.
Closing wakes whatever waits on the stream (it raises StreamClosed), so the
serving task ends and its requests release what they hold.

One timer per connection, firing every min(idle_s, send_s) /
CHECKS_PER_LIMIT, so a limit is noticed at most that much late. Frames cost
two clock reads each (`FramedConnection`); an asyncio timeout around every
send cost 7 us a frame. Loop thread only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from kvmesh.transfer.connection import FramedConnection

CHECKS_PER_LIMIT = 4
IDLE = "idle"
SEND_TIMEOUT = "send_timeout"


class ConnectionWatch:
    """See the module docstring. start() once; stop() when the connection
    ends; `ended_by` is IDLE or SEND_TIMEOUT if this watch closed it."""

    def __init__(self, conn: FramedConnection, busy: Callable[[], bool], idle_s: float,
                 send_s: float) -> None:
        self._conn = conn
        self._busy = busy  # a request is in flight: not idle
        self._idle_s = idle_s
        self._send_s = send_s
        self._period = min(idle_s, send_s) / CHECKS_PER_LIMIT
        self._timer: asyncio.TimerHandle | None = None
        self.ended_by: str | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._period, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        conn, now = self._conn, time.monotonic()
        sending = conn.sending_since
        if sending is not None and now - sending >= self._send_s:
            self._end(SEND_TIMEOUT)
        elif sending is None and not self._busy() and now - conn.last_active >= self._idle_s:
            self._end(IDLE)
        else:
            self.start()

    def _end(self, reason: str) -> None:
        self._timer = None
        self.ended_by = reason
        self._conn.close()
