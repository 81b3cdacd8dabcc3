"""A framed, bidirectional connection: one decoder, one writer lock.

Owns the stream. Frames are written whole under a lock so concurrent
requests interleave at frame boundaries; reading is done by whoever owns the
connection's read loop (client or server), one frame at a time.

Sends are not timed here: a client bounds each request itself, and a server
has a `ConnectionWatch` (kvmesh.transfer.watch) read `sending_since` (the
time.monotonic() the frame being written began, None when none is) and
`last_active` (the last frame read, or the start or end of the last frame
written). Two clock reads per frame cost far less than a timer per frame.
"""

from __future__ import annotations

import asyncio
import time

from kvmesh.transfer import codec
from kvmesh.transfer import frames as f
from kvmesh.transfer.streams import Stream


class FramedConnection:
    def __init__(self, stream: Stream, sink: codec.PayloadSink | None = None) -> None:
        self.stream = stream
        self._decoder = codec.FrameDecoder(sink=sink, message_framed=stream.kind == "ucx")
        self._write_lock = asyncio.Lock()
        self.closed = False
        self.last_active = time.monotonic()
        self.sending_since: float | None = None

    def set_sink(self, sink: codec.PayloadSink | None) -> None:
        self._decoder.sink = sink

    def set_frame_caps(self, max_header: int, max_payload: int) -> None:
        """Cap the sizes later frames may announce (see FrameDecoder.set_caps)."""
        self._decoder.set_caps(max_header, max_payload)

    async def send(self, frame: f.Frame) -> None:
        parts = codec.encode(frame)
        self.last_active = time.monotonic()  # waiting for the lock is activity too
        async with self._write_lock:
            self.sending_since = time.monotonic()
            try:
                await self.stream.send(parts)
            finally:
                self.sending_since = None
                self.last_active = time.monotonic()

    async def read_frame(self) -> f.Frame:
        """The next whole frame; raises StreamClosed or RemoteProtocolError."""
        while True:
            frame = self._decoder.advance(await self.stream.recv_into(self._decoder.get_buffer()))
            if frame is not None:
                self.last_active = time.monotonic()
                return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stream.close()
