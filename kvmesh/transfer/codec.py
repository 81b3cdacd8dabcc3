"""Sans-IO codec: frames to bytes and bytes to frames, no sockets.

Wire layout of one frame::

    prefix   16 bytes  magic "KM", type u8, flags u8, header_len u32, payload_len u64 (big endian)
    header   msgpack list of the frame's fields in declaration order
    payload  raw bytes (CHUNK only)

The decoder is pull-driven so payloads land where their owner wants them:
`get_buffer()` returns where the current stage's next bytes go (prefix,
header or payload; on a byte stream a payload at most PAYLOAD_PIECE_BYTES at a
time) and `advance(n)` says how many were written. For a
CHUNK, a sink chosen by the owner supplies the destination (e.g. a store
slot), so bulk bytes are written once, by the kernel, into their final place,
and each piece is hashed as it is advanced, while it is still in cache: a
payload is verified against the header's xxh3_64 without a second pass over
memory.
Every size is checked against a named cap before anything is allocated; any
violation raises `RemoteProtocolError` and the decoder refuses further input.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Callable

import msgpack
import xxhash

from kvmesh.errors import LocalProtocolError, RemoteProtocolError
from kvmesh.transfer import frames as f
from kvmesh.types import CHUNK_KEY_BYTES

PREFIX = struct.Struct(">2sBBIQ")
PREFIX_BYTES = PREFIX.size
MAGIC = b"KM"
_DISCARD_BYTES = 1 << 16
# A byte stream's payload is handed out this much at a time, so each piece is
# hashed right after it lands: hashed after a whole 2 MiB chunk had landed,
# its first bytes had left the cache (xxh3 at half the speed). 64 KiB pieces
# cost more in per-piece Python than they saved.
PAYLOAD_PIECE_BYTES = 256 << 10

# Field checkers by annotation; a hostile header can only ever produce these types.
_CHECKS: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 64),
    "bool": lambda v: isinstance(v, bool),
    "bytes": lambda v: isinstance(v, bytes),
    "tuple[int, ...]": lambda v: isinstance(v, list) and len(v) <= f.MAX_KEYS_PER_REQUEST
    and all(_CHECKS["int"](i) for i in v),
    "tuple[bytes, ...]": lambda v: isinstance(v, list) and len(v) <= f.MAX_KEYS_PER_REQUEST
    and all(isinstance(k, bytes) for k in v),
    "tuple[str, ...]": lambda v: isinstance(v, list) and len(v) <= f.MAX_KEYS_PER_REQUEST
    and all(isinstance(p, str) for p in v),
    "tuple[tuple[str, ...], ...]": lambda v: isinstance(v, list) and len(v) <= f.MAX_KEYS_PER_REQUEST
    and all(isinstance(h, list) and all(isinstance(p, str) for p in h) for h in v),
}


def _schema(cls: type) -> list[tuple[str, str]]:
    return [(fl.name, str(fl.type)) for fl in dataclasses.fields(cls) if fl.name != "payload"]


_SCHEMAS = {t: _schema(cls) for t, cls in f.FRAME_CLASSES.items()}
# Fields that describe the same items in parallel, so must be equally long.
_PARALLEL = {f.FrameType.CHUNK_REFS: ("indices", "keys", "checksums", "lengths", "offsets")}
# Byte (or character) caps of named string and bytes fields, in any frame.
_FIELD_CAPS = {"peer_id": f.MAX_PEER_ID_BYTES, "holder": f.MAX_PEER_ID_BYTES, "host_id": 64,
               "shm_path": 4096, "nonce": 64, "proof": 64, "pool_token": 64, "namespace": 64,
               "message": 4096}


def encode(frame: f.Frame) -> list[bytes | memoryview]:
    """Bytes for one frame: [prefix+header] or [prefix+header, payload] for a CHUNK.

    The payload is returned as given (no copy); the caller must keep it alive
    and unchanged until it has been written.
    """
    ftype = f.FRAME_TYPES.get(type(frame))
    if ftype is None:
        raise LocalProtocolError(f"not a frame: {frame!r}")
    values = [getattr(frame, name) for name, _ in _SCHEMAS[ftype]]
    header = msgpack.packb(values, use_bin_type=True)
    if len(header) > f.MAX_HEADER_BYTES:
        raise LocalProtocolError(f"{ftype.name} header of {len(header)} bytes exceeds the cap")
    payload = memoryview(b"")
    if isinstance(frame, f.Chunk):
        payload = memoryview(frame.payload).cast("B")
        if len(payload) != frame.length:
            raise LocalProtocolError(f"CHUNK says {frame.length} bytes but carries {len(payload)}")
        if len(payload) > f.MAX_PAYLOAD_BYTES:
            raise LocalProtocolError(f"CHUNK payload of {len(payload)} bytes exceeds the cap")
    head = PREFIX.pack(MAGIC, ftype, 0, len(header), len(payload)) + header
    return [head, payload] if len(payload) else [head]


def encode_bytes(frame: f.Frame) -> bytes:
    return b"".join(encode(frame))


PayloadSink = Callable[[f.Chunk], "memoryview | None"]


class FrameDecoder:
    """Turns a byte stream into frames, one stage at a time.

    `sink(chunk_header)` is called once per CHUNK before its payload arrives;
    it returns a writable memoryview of at least `chunk.length` bytes, or None
    to have the payload read and dropped (the frame is then delivered with
    `payload=None`). A payload whose xxh3_64 differs from the header's
    checksum is delivered with `payload=None` too. Not thread-safe: one
    decoder per connection.

    `max_header` and `max_payload` cap what a prefix may announce (never
    above the protocol's own caps); `set_caps` changes them between frames:
    a server keeps them small until the other side has authenticated, so a
    stranger's prefix cannot make it allocate much.
    """

    def __init__(self, sink: PayloadSink | None = None, max_payload: int = f.MAX_PAYLOAD_BYTES,
                 message_framed: bool = False, max_header: int = f.MAX_HEADER_BYTES) -> None:
        # message_framed: the transport delivers whole messages (UCX tags), so a
        # payload must be received in one piece rather than in slices.
        self._message_framed = message_framed
        self.sink = sink
        self.set_caps(max_header, max_payload)
        self._prefix = bytearray(PREFIX_BYTES)
        self._header = bytearray()
        self._discard = bytearray()
        self._stage = "prefix"
        self._buf: memoryview = memoryview(self._prefix)
        self._filled = 0
        self._read_max = PREFIX_BYTES  # the most get_buffer() hands out at once in this stage
        self._ftype: f.FrameType | None = None
        self._payload_len = 0
        self._payload_done = 0
        self._pending: f.Chunk | None = None
        self._dest: memoryview | None = None
        self._hasher: xxhash.xxh3_64 | None = None  # of the payload landing in _dest
        self._failed: RemoteProtocolError | None = None

    def set_caps(self, max_header: int, max_payload: int) -> None:
        """Cap the header and payload sizes of frames not yet begun."""
        self._max_header = min(max_header, f.MAX_HEADER_BYTES)
        self._max_payload = min(max_payload, f.MAX_PAYLOAD_BYTES)

    def get_buffer(self) -> memoryview:
        """Where the next bytes must be written; never empty."""
        if self._failed:
            raise self._failed
        return self._buf[self._filled:self._filled + self._read_max]

    def advance(self, n: int) -> f.Frame | None:
        """Record `n` bytes written into the last buffer; return a frame if one completed."""
        if self._failed:
            raise self._failed
        if n < 0 or n > self._read_max or self._filled + n > len(self._buf):
            raise LocalProtocolError("advance past the buffer that was handed out")
        if self._stage == "payload" and self._hasher is not None:
            self._hasher.update(self._buf[self._filled:self._filled + n])
        self._filled += n
        if self._filled < len(self._buf):
            return None
        try:
            return self._next_stage()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def receive_data(self, data: bytes | memoryview) -> list[f.Frame]:
        """Feed bytes as they came off a stream; returns completed frames."""
        out: list[f.Frame] = []
        view = memoryview(data).cast("B")
        while len(view):
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            frame = self.advance(n)
            if frame is not None:
                out.append(frame)
        return out

    # ---- stages -------------------------------------------------------------

    def _next_stage(self) -> f.Frame | None:
        if self._stage == "prefix":
            return self._on_prefix()
        if self._stage == "header":
            return self._on_header()
        return self._on_payload_part()

    def _expect(self, stage: str, buf: memoryview, read_max: int = 0) -> None:
        self._stage, self._buf, self._filled = stage, buf, 0
        self._read_max = read_max or len(buf)

    def _on_prefix(self) -> f.Frame | None:
        magic, ftype, _flags, header_len, payload_len = PREFIX.unpack(self._prefix)
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad magic {bytes(magic)!r}: not a kvmesh peer")
        try:
            self._ftype = f.FrameType(ftype)
        except ValueError:
            raise RemoteProtocolError(f"unknown frame type {ftype}") from None
        if not 0 < header_len <= self._max_header:
            raise RemoteProtocolError(f"header length {header_len} outside (0, {self._max_header}]")
        if payload_len and self._ftype is not f.FrameType.CHUNK:
            raise RemoteProtocolError(f"{self._ftype.name} frames carry no payload")
        if payload_len > self._max_payload:
            raise RemoteProtocolError(f"payload of {payload_len} bytes exceeds the cap {self._max_payload}")
        self._payload_len = payload_len
        self._header = bytearray(header_len)
        self._expect("header", memoryview(self._header))
        return None

    def _on_header(self) -> f.Frame | None:
        frame = _parse_header(self._ftype, bytes(self._header))
        if not isinstance(frame, f.Chunk):
            self._expect("prefix", memoryview(self._prefix))
            return frame
        if frame.length != self._payload_len:
            raise RemoteProtocolError(f"CHUNK header says {frame.length} bytes, prefix {self._payload_len}")
        self._pending = frame
        self._dest, self._hasher = None, None
        dest = self.sink(frame) if self.sink else None
        if dest is not None:
            dest = memoryview(dest).cast("B")
            if len(dest) < frame.length:
                raise LocalProtocolError("payload sink returned a buffer that is too small")
            self._dest, self._hasher = dest[: frame.length], xxhash.xxh3_64()
        self._payload_done = 0
        if frame.length == 0:
            return self._finish_chunk()
        self._expect_payload_part()
        return None

    def _expect_payload_part(self) -> None:
        if self._dest is not None:  # one stage, handed out piece by piece
            self._expect("payload", self._dest, 0 if self._message_framed else PAYLOAD_PIECE_BYTES)
            return
        remaining = self._payload_len - self._payload_done
        size = remaining if self._message_framed else min(remaining, _DISCARD_BYTES)
        if len(self._discard) < size:
            self._discard = bytearray(size)
        self._expect("payload", memoryview(self._discard)[:size])

    def _on_payload_part(self) -> f.Frame | None:
        self._payload_done += len(self._buf)
        if self._payload_done < self._payload_len:
            self._expect_payload_part()
            return None
        return self._finish_chunk()

    def _finish_chunk(self) -> f.Frame:
        chunk, dest = self._pending, self._dest
        if dest is not None and self._hasher.intdigest() != chunk.checksum:
            dest = None  # as if dropped: its owner counts a failed chunk
        self._pending, self._dest, self._hasher = None, None, None
        self._expect("prefix", memoryview(self._prefix))
        return dataclasses.replace(chunk, payload=dest)


def _parse_header(ftype: f.FrameType, raw: bytes) -> f.Frame:
    try:
        values = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                                 max_bin_len=f.MAX_HEADER_BYTES, max_str_len=f.MAX_HEADER_BYTES,
                                 max_array_len=f.MAX_KEYS_PER_REQUEST, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError(f"{ftype.name}: undecodable header ({type(exc).__name__})") from None
    schema = _SCHEMAS[ftype]
    if not isinstance(values, list) or len(values) != len(schema):
        raise RemoteProtocolError(f"{ftype.name}: expected {len(schema)} fields")
    kwargs = {}
    for (name, type_name), value in zip(schema, values):
        if not _CHECKS[type_name](value):
            raise RemoteProtocolError(f"{ftype.name}.{name}: wrong type {type(value).__name__}")
        if name == "key" and len(value) != CHUNK_KEY_BYTES or name == "keys" and any(
                len(k) != CHUNK_KEY_BYTES for k in value):
            raise RemoteProtocolError(f"{ftype.name}.{name}: chunk keys are {CHUNK_KEY_BYTES} bytes")
        if name in _FIELD_CAPS and len(value) > _FIELD_CAPS[name]:
            raise RemoteProtocolError(f"{ftype.name}.{name}: longer than {_FIELD_CAPS[name]}")
        kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value) \
            if isinstance(value, list) else value
    if len({len(kwargs[name]) for name in _PARALLEL.get(ftype, ())}) > 1:
        raise RemoteProtocolError(f"{ftype.name}: parallel fields differ in length")
    return f.FRAME_CLASSES[ftype](**kwargs)
