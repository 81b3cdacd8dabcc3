"""A framed, bidirectional connection: one decoder, one writer lock.

Owns the stream. Frames are written whole under a lock so concurrent
requests interleave at frame boundaries; reading is done by whoever owns the
connection's read loop (client or server), one frame at a time.
"""

from __future__ import annotations

import asyncio

from kvmesh.transfer import codec
from kvmesh.transfer import frames as f
from kvmesh.transfer.streams import Stream


class FramedConnection:
    def __init__(self, stream: Stream, sink: codec.PayloadSink | None = None) -> None:
        self.stream = stream
        self._decoder = codec.FrameDecoder(sink=sink, message_framed=stream.kind == "ucx")
        self._write_lock = asyncio.Lock()
        self.closed = False

    def set_sink(self, sink: codec.PayloadSink | None) -> None:
        self._decoder.sink = sink

    async def send(self, frame: f.Frame) -> None:
        parts = codec.encode(frame)
        async with self._write_lock:
            await self.stream.send(parts)

    async def read_frame(self) -> f.Frame:
        """The next whole frame; raises StreamClosed or RemoteProtocolError."""
        while True:
            frame = self._decoder.advance(await self.stream.recv_into(self._decoder.get_buffer()))
            if frame is not None:
                return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stream.close()
