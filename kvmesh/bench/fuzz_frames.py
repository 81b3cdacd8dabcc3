"""Fuzz cases for the frame codec: valid frames of every type, and what mutates them.

`random_frame(rng, ftype)` builds a valid frame of any type from its
dataclass fields (values on the edges of each cap); `make_case` turns one or
a few of them into the bytes of one fuzz input, by one of the `STRATEGIES`:
valid streams (which must decode back to the same frames), byte mutations,
prefix edits (magic, type, flags and both length fields), header values
swapped for wrong types or out-of-range ones (the prefix kept consistent, so
the header parser sees them), splices of two frames, oversized counts, and
plain noise. Pure: everything comes from the `random.Random` passed in.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import msgpack
import xxhash

from kvmesh.bench import fuzz_mutate as mut
from kvmesh.errors import LocalProtocolError, RemoteProtocolError
from kvmesh.transfer import codec
from kvmesh.transfer import frames as f
from kvmesh.types import CHUNK_KEY_BYTES

FRAME_TYPES = list(f.FrameType)
_UNKNOWN_TYPES = (0, len(FRAME_TYPES) + 1, 0x7F, 0xFF)
_INTS = (0, 1, 2, 255, 65535, (1 << 31) - 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1, -1, -(1 << 63))
_NAMES = ("127.0.0.1:7400", "[::1]:7401", "a", "x" * f.MAX_PEER_ID_BYTES, "ä" * 20, "p:1")
_LEN_OFFSETS = {"header_len": 4, "payload_len": 8}
# White-box: valid frames are built right up to the codec's own caps on named fields.
_FIELD_CAPS = codec._FIELD_CAPS


@dataclass(frozen=True)
class Case:
    """One input: its bytes and, for valid streams, the frames they must decode to."""

    strategy: str
    data: bytes
    expect: tuple | None = None


def random_key(rng: random.Random) -> bytes:
    return rng.randbytes(CHUNK_KEY_BYTES)


def _value(rng: random.Random, name: str, type_name: str, many: int):
    """A valid value for one field of a frame."""
    if type_name == "int":
        return rng.choice(_INTS) if rng.random() < 0.3 else rng.randrange(1 << 20)
    if type_name == "bool":
        return rng.random() < 0.5
    if type_name == "str":
        cap = _FIELD_CAPS.get(name, 64)
        return rng.choice(_NAMES + ("", rng.randbytes(8).hex()))[:cap]
    if type_name == "bytes":
        if name == "key":
            return random_key(rng)
        return rng.randbytes(rng.choice((0, 16, 32, _FIELD_CAPS.get(name, 64))))
    if type_name == "tuple[bytes, ...]":
        return tuple(random_key(rng) for _ in range(many))
    if type_name == "tuple[int, ...]":
        return tuple(rng.randrange(1 << 32) for _ in range(many))
    if type_name == "tuple[str, ...]":
        return tuple(rng.choice(_NAMES) for _ in range(many))
    if type_name == "tuple[tuple[str, ...], ...]":
        return tuple(tuple(rng.choice(_NAMES) for _ in range(rng.randint(0, 3))) for _ in range(many))
    raise ValueError(f"no generator for {type_name}")


def _count(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.01:
        return f.MAX_KEYS_PER_REQUEST  # the cap itself is still valid
    return rng.randint(0, 3) if roll < 0.7 else rng.randint(4, 64)


def random_frame(rng: random.Random, ftype: f.FrameType) -> f.Frame:
    """A valid frame of `ftype`; list fields of one frame share one length."""
    many = _count(rng)
    cls = f.FRAME_CLASSES[ftype]
    values = {fl.name: _value(rng, fl.name, str(fl.type), many)
              for fl in dataclasses.fields(cls) if fl.name != "payload"}
    if ftype is f.FrameType.CHUNK:
        size = rng.choice((0, 1, rng.randint(2, 4096), codec.PAYLOAD_PIECE_BYTES + rng.randint(1, 999)))
        size = size if size < 4096 or rng.random() < 0.02 else rng.randint(0, 64)
        payload = rng.randbytes(size)
        values.update(length=size, payload=payload,
                      checksum=xxhash.xxh3_64_intdigest(payload) if rng.random() < 0.9 else values["checksum"])
    return cls(**values)


def frame_bytes(ftype: int, header: bytes, payload: bytes = b"", flags: int = 0) -> bytes:
    """A frame's bytes from its parts, the prefix's lengths consistent with them."""
    return codec.PREFIX.pack(codec.MAGIC, ftype, flags, len(header), len(payload)) + header + payload


# ---- strategies: each returns one Case ------------------------------------------------------

def _encodable(rng: random.Random) -> tuple[f.Frame, bytes]:
    """A random valid frame and its bytes (drawn again in the rare case its header is over the cap)."""
    while True:
        frame = random_frame(rng, rng.choice(FRAME_TYPES))
        try:
            return frame, codec.encode_bytes(frame)
        except LocalProtocolError:
            continue


def valid_stream(rng: random.Random) -> Case:
    pairs = [_encodable(rng) for _ in range(rng.randint(1, 3))]
    return Case("valid", b"".join(data for _, data in pairs), tuple(frame for frame, _ in pairs))


def _one_valid(rng: random.Random) -> bytes:
    return _encodable(rng)[1]


def byte_mutation(rng: random.Random) -> Case:
    return Case("bytes", mut.mutate(rng, _one_valid(rng)))


def prefix_edit(rng: random.Random) -> Case:
    data = bytearray(_one_valid(rng))
    field = rng.choice(("magic", "type", "flags", "header_len", "payload_len"))
    if field == "magic":
        data[rng.randrange(2)] = rng.randrange(256)
    elif field == "type":
        data[2] = rng.choice(_UNKNOWN_TYPES + tuple(FRAME_TYPES))
    elif field == "flags":
        data[3] = rng.randrange(256)
    else:
        at, width = _LEN_OFFSETS[field], (4 if field == "header_len" else 8)
        current = int.from_bytes(data[at:at + width], "big")
        value = rng.choice(mut.INTERESTING_LENGTHS + (current + 1, max(0, current - 1)))
        data[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
    return Case("prefix", bytes(data))


_WRONG_VALUES = (
    lambda rng, v: None, lambda rng, v: True, lambda rng, v: 1.5, lambda rng, v: -1,
    lambda rng, v: -(1 << 63) - 1, lambda rng, v: (1 << 64) - 1, lambda rng, v: "",
    lambda rng, v: "x" * rng.choice((256, 4097)), lambda rng, v: b"",
    lambda rng, v: rng.randbytes(rng.choice((15, 17, 65))), lambda rng, v: [],
    lambda rng, v: [v], lambda rng, v: [None], lambda rng, v: {"k": 1}, lambda rng, v: [[1]],
    lambda rng, v: [["a"]], lambda rng, v: [[rng.randbytes(3)]],
    lambda rng, v: [rng.randbytes(16)] * (f.MAX_KEYS_PER_REQUEST + 1),
    lambda rng, v: list(v)[:-1] if isinstance(v, (list, tuple)) else str(v),
)


def _wrong_value(rng: random.Random, value):
    """Something a header field should not hold: another type, an edge, an oversize."""
    return rng.choice(_WRONG_VALUES)(rng, value)


def header_edit(rng: random.Random) -> Case:
    """One header value (or the list's length) changed; the prefix still agrees with it."""
    frame = random_frame(rng, rng.choice(FRAME_TYPES))
    ftype = f.FRAME_TYPES[type(frame)]
    values = [getattr(frame, fl.name) for fl in dataclasses.fields(frame) if fl.name != "payload"]
    roll = rng.random()
    if roll < 0.1 and values:
        values.pop(rng.randrange(len(values)))
    elif roll < 0.2:
        values.insert(rng.randint(0, len(values)), _wrong_value(rng, 0))
    elif values:
        at = rng.randrange(len(values))
        values[at] = _wrong_value(rng, values[at])
    try:
        header = msgpack.packb(values, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        header = msgpack.packb(None)
    payload = getattr(frame, "payload", None) or b""
    return Case("header", frame_bytes(ftype, header, bytes(payload) if rng.random() < 0.8 else b""))


def splice_frames(rng: random.Random) -> Case:
    a, b = _one_valid(rng), _one_valid(rng)
    data = mut.splice(rng, a, b) if rng.random() < 0.7 else a + mut.mutate(rng, b)
    return Case("splice", data)


def oversized_count(rng: random.Random) -> Case:
    """A header whose arrays claim more items (or bytes) than the caps allow."""
    ftype = rng.choice(FRAME_TYPES)
    roll = rng.random()
    if roll < 0.4:
        header = rng.choice(mut.OVERSIZED_HEADS) + rng.randbytes(rng.randint(0, 64))
    elif roll < 0.7:
        keys = [random_key(rng)] * (f.MAX_KEYS_PER_REQUEST + rng.choice((1, 100)))
        header = msgpack.packb([1, keys], use_bin_type=True)
    else:
        header = mut.oversized_head(rng, msgpack.packb([1, [random_key(rng)] * 3], use_bin_type=True))
    payload = rng.randbytes(rng.randint(0, 32)) if ftype is f.FrameType.CHUNK else b""
    return Case("oversized", frame_bytes(ftype, header, payload))


def noise(rng: random.Random) -> Case:
    body = rng.randbytes(rng.randint(0, 256))
    return Case("noise", codec.MAGIC + body if rng.random() < 0.5 else body)


STRATEGIES = (valid_stream, byte_mutation, prefix_edit, header_edit, splice_frames,
              oversized_count, noise)
# How often each is drawn: most inputs are mutations of valid frames.
WEIGHTS = (2, 4, 3, 4, 2, 2, 1)


def make_case(rng: random.Random) -> Case:
    return rng.choices(STRATEGIES, WEIGHTS)[0](rng)


def normalized(frame: f.Frame):
    """A frame comparable with its original: a CHUNK's payload as bytes (None if dropped)."""
    if isinstance(frame, f.Chunk):
        payload = None if frame.payload is None else bytes(frame.payload)
        return dataclasses.replace(frame, payload=payload)
    return frame

# ---- feeding the decoder ---------------------------------------------------------------------

def _sink(chunk: f.Chunk) -> bytearray:
    return bytearray(chunk.length)


def expected(case: Case, with_sink: bool) -> list:
    """What a valid stream must decode to: a CHUNK's payload arrives only into a sink, and
    only when its checksum holds."""
    out = []
    for frame in case.expect:
        if isinstance(frame, f.Chunk):
            ok = with_sink and xxhash.xxh3_64_intdigest(frame.payload) == frame.checksum
            frame = dataclasses.replace(frame, payload=bytes(frame.payload) if ok else None)
        out.append(frame)
    return out


@dataclass(frozen=True)
class CodecInput:
    """A case and how it is fed: cut points, a payload sink or none, message framing."""

    case: Case
    cuts: list[int]
    with_sink: bool
    framed: bool

    def as_json(self) -> dict:
        return {"strategy": self.case.strategy, "hex": self.case.data.hex(), "cuts": self.cuts,
                "sink": self.with_sink, "message_framed": self.framed}


class CodecSurface:
    """`FrameDecoder.receive_data`: the documented rejection is RemoteProtocolError."""

    name = "codec"

    def make(self, rng: random.Random) -> CodecInput:
        case = make_case(rng)
        return CodecInput(case, mut.random_splits(rng, len(case.data)), rng.random() < 0.7,
                          rng.random() < 0.1)

    def run(self, inp: CodecInput) -> tuple[bool, str | None]:
        """(refused, a broken contract or None); any other exception escapes: a crash."""
        decoder = codec.FrameDecoder(sink=_sink if inp.with_sink else None,
                                     message_framed=inp.framed)
        got = []
        try:
            for piece in mut.pieces(inp.case.data, inp.cuts):
                got += decoder.receive_data(piece)
        except RemoteProtocolError:
            return True, _still_refuses(decoder)
        if not all(type(fr) in f.FRAME_TYPES for fr in got):
            return False, "decoder returned something that is not a frame"
        if inp.case.expect is not None and [normalized(fr) for fr in got] != expected(
                inp.case, inp.with_sink):
            return False, "valid stream decoded to other frames"
        return False, None


def _still_refuses(decoder: codec.FrameDecoder) -> str | None:
    """The codec's contract: once it raised, it refuses further input."""
    try:
        decoder.receive_data(b"\x00")
    except RemoteProtocolError:
        return None
    return "decoder took input after refusing the stream"
