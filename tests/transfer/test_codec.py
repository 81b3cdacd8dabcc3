import struct

import msgpack
import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from kvmesh.errors import LocalProtocolError, RemoteProtocolError
from kvmesh.transfer import codec, frames as f

K = bytes(range(16))


def chunk(rid: int, index: int, payload: bytes) -> f.Chunk:
    """A CHUNK that carries its payload's true checksum."""
    return f.Chunk(rid, index, K, xxhash.xxh3_64_intdigest(payload), len(payload), payload)


SAMPLES = [
    f.Hello("127.0.0.1:1", 1, 1, b"n" * 16, "host", "/dev/shm/p", b"x" * 16, 0, 8080),
    f.Welcome("127.0.0.1:2", 1, b"n" * 16, "host", "", b"y" * 16, b"p" * 32, 5000, 0),
    f.Auth(b""),
    f.Error(7, "no such thing"),
    f.Ping(1), f.Pong(1),
    f.Lookup(3, (K, K)),
    f.Holders(3, (("a:1", "b:2"), ())),
    f.Advertise("a:1", (K,)),
    f.Withdraw("a:1", (K,)),
    f.Pull(4, (K,) * 3, True),
    chunk(4, 0, b"hello world"),
    chunk(4, 1, b""),
    chunk(4, 3, bytes(range(256)) * 2000),  # several payload pieces
    f.Miss(4, 2, K),
    f.ChunkRef(4, 2, K, 1, 4096, 8192),
    f.Release(4),
    f.Prefix(5, (K,)), f.PrefixReply(5, 1),
    f.Members(6, ("a:1", "b:2"), True),
    f.Fetch(8, (K,), "a:1"), f.Fetched(8, 1),
    f.ChunkRefs(9, (0, 2), (K, K), (1, 2), (4096, 10), (0, 8192), 3),
    f.Info("host", 0, 8080, b"t" * 32),
    f.Vouch(10, b"x" * 16), f.Vouched(10, True),
]
STREAM = b"".join(codec.encode_bytes(fr) for fr in SAMPLES)


def decode_all(data: bytes, splits: list[int]) -> list:
    decoder = codec.FrameDecoder(sink=lambda c: bytearray(c.length))
    out, pos = [], 0
    for cut in sorted(splits) + [len(data)]:
        out += decoder.receive_data(data[pos:cut])
        pos = cut
    return out


def normalize(frame):
    if isinstance(frame, f.Chunk):
        return (frame.request_id, frame.index, frame.key, frame.checksum, bytes(frame.payload))
    return frame


def test_every_frame_type_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(f.FRAME_CLASSES.values())


def test_frame_type_values_are_append_only():
    # ONLY APPEND: these numbers are on the wire.
    assert [t.value for t in f.FrameType] == list(range(1, len(f.FrameType) + 1))
    assert f.FrameType.HELLO == 1 and f.FrameType.CHUNK == 12 and f.FrameType.FETCHED == 20


def test_round_trip_byte_by_byte():
    assert [normalize(x) for x in decode_all(STREAM, list(range(len(STREAM))))] == \
        [normalize(x) for x in SAMPLES]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_round_trip_any_split(splits):
    assert [normalize(x) for x in decode_all(STREAM, splits)] == [normalize(x) for x in SAMPLES]


def test_payload_lands_in_the_sinks_buffer():
    target = bytearray(32)
    decoder = codec.FrameDecoder(sink=lambda c: memoryview(target)[4:])
    (frame,) = decoder.receive_data(codec.encode_bytes(chunk(1, 0, b"abcde")))
    assert bytes(target[4:9]) == b"abcde" and bytes(frame.payload) == b"abcde"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 700_000), max_size=30))
def test_payload_failing_its_checksum_is_delivered_without_payload(splits):
    payload = bytes(range(256)) * 2500
    bad = f.Chunk(1, 0, K, xxhash.xxh3_64_intdigest(payload) ^ 1, len(payload), payload)
    data = codec.encode_bytes(bad) + codec.encode_bytes(chunk(1, 1, b"next"))
    frames = decode_all(data, [min(cut, len(data)) for cut in splits])
    assert frames[0].payload is None and bytes(frames[1].payload) == b"next"


@pytest.mark.parametrize("message_framed", [False, True])
def test_payload_is_handed_out_in_pieces_on_a_byte_stream(message_framed):
    payload = bytes(3 * codec.PAYLOAD_PIECE_BYTES + 5)
    decoder = codec.FrameDecoder(sink=lambda c: bytearray(c.length), message_framed=message_framed)
    data, sizes, frame = memoryview(codec.encode_bytes(chunk(1, 0, payload))), [], None
    while frame is None:
        buf = decoder.get_buffer()
        sizes.append(len(buf))
        buf[:] = data[:len(buf)]
        data = data[len(buf):]
        frame = decoder.advance(len(buf))
    piece = codec.PAYLOAD_PIECE_BYTES
    assert sizes[2:] == ([len(payload)] if message_framed else [piece] * 3 + [5])
    assert bytes(frame.payload) == payload


def test_dropped_payload_is_skipped_and_the_stream_continues():
    data = codec.encode_bytes(f.Chunk(1, 0, K, 0, 200_000, bytes(200_000))) + \
        codec.encode_bytes(f.Ping(9))
    chunk, ping = codec.FrameDecoder(sink=lambda c: None).receive_data(data)
    assert chunk.payload is None and ping == f.Ping(9)


def prefix(ftype=1, header_len=4, payload_len=0, magic=b"KM") -> bytes:
    return struct.pack(">2sBBIQ", magic, ftype, 0, header_len, payload_len)


def framed(ftype, header) -> bytes:
    raw = msgpack.packb(header)
    return prefix(ftype=ftype, header_len=len(raw)) + raw


@pytest.mark.parametrize("data,message", [
    (prefix(magic=b"HT"), "bad magic"),
    (prefix(ftype=250), "unknown frame type"),
    (prefix(header_len=0), "header length"),
    (prefix(header_len=f.MAX_HEADER_BYTES + 1), "header length"),
    (prefix(ftype=f.FrameType.PING, payload_len=5), "carry no payload"),
    (prefix(ftype=f.FrameType.CHUNK, payload_len=f.MAX_PAYLOAD_BYTES + 1), "exceeds the cap"),
    (prefix(ftype=f.FrameType.PING, header_len=2) + b"\xc1\xc1", "undecodable"),
    (framed(f.FrameType.PING, [1, 2]), "expected 1 fields"),
    (framed(f.FrameType.PING, ["x"]), "wrong type"),
    (framed(f.FrameType.PING, [True]), "wrong type"),
    (framed(f.FrameType.LOOKUP, [1, [b"abc"]]), "16 bytes"),
    (framed(f.FrameType.HOLDERS, [1, [[1]]]), "wrong type"),
    (framed(f.FrameType.PING, {"a": 1}), "undecodable|expected"),
])
def test_hostile_bytes_raise_protocol_errors(data, message):
    decoder = codec.FrameDecoder()
    with pytest.raises(RemoteProtocolError, match=message):
        decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError):  # a failed decoder stays failed
        decoder.get_buffer()


def test_too_many_keys_are_refused_before_allocation():
    header = msgpack.packb([1, [K] * (f.MAX_KEYS_PER_REQUEST + 1)])
    data = prefix(ftype=f.FrameType.LOOKUP, header_len=len(header)) + header
    with pytest.raises(RemoteProtocolError):
        codec.FrameDecoder().receive_data(data)


def test_chunk_header_and_prefix_must_agree():
    good = codec.encode_bytes(chunk(1, 0, b"abc"))
    bad = good[:8] + struct.pack(">Q", 4) + good[16:] + b"d"
    with pytest.raises(RemoteProtocolError, match="says"):
        codec.FrameDecoder().receive_data(bad)


def test_chunk_refs_fields_must_run_in_parallel():
    header = msgpack.packb([9, [0, 1], [K], [1, 2], [4096, 4096], [0, 4096], 1])
    data = codec.PREFIX.pack(codec.MAGIC, f.FrameType.CHUNK_REFS, 0, len(header), 0) + header
    with pytest.raises(RemoteProtocolError, match="parallel fields"):
        codec.FrameDecoder().receive_data(data)


def test_chunk_refs_unpack_into_chunk_refs():
    refs = f.ChunkRefs(9, (0, 2), (K, K), (1, 2), (4096, 10), (0, 8192)).refs()
    assert refs == [f.ChunkRef(9, 0, K, 1, 4096, 0), f.ChunkRef(9, 2, K, 2, 10, 8192)]


def test_local_errors_are_distinct():
    with pytest.raises(LocalProtocolError):
        codec.encode(object())
    with pytest.raises(LocalProtocolError):
        codec.encode(f.Chunk(1, 0, K, 0, 10, b"short"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_garbage_never_crashes_differently(data):
    """Garbage is either a well-typed HOLDERS frame or a RemoteProtocolError, never another exception."""
    decoder = codec.FrameDecoder(sink=lambda c: bytearray(c.length))
    try:
        frames = decoder.receive_data(prefix(ftype=f.FrameType.HOLDERS, header_len=len(data) or 1)
                                      + data)
    except RemoteProtocolError:
        return
    assert all(isinstance(fr, f.Holders) for fr in frames)
    for fr in frames:
        assert all(isinstance(p, str) for holders in fr.holders for p in holders)


def test_caps_set_between_frames_bound_what_a_prefix_may_announce():
    decoder = codec.FrameDecoder()
    decoder.set_caps(64, 0)
    assert decoder.receive_data(codec.encode_bytes(f.Ping(1))) == [f.Ping(1)]
    with pytest.raises(RemoteProtocolError, match=r"outside \(0, 64\]"):
        decoder.receive_data(prefix(ftype=f.FrameType.PING, header_len=65))
    lifted = codec.FrameDecoder(max_header=64, max_payload=0)
    lifted.set_caps(f.MAX_HEADER_BYTES * 2, f.MAX_PAYLOAD_BYTES * 2)  # never past the protocol's
    with pytest.raises(RemoteProtocolError, match="outside"):
        lifted.receive_data(prefix(ftype=f.FrameType.PING, header_len=f.MAX_HEADER_BYTES + 1))


def test_a_payload_past_the_cap_is_refused_before_allocation():
    decoder = codec.FrameDecoder(max_payload=0)
    with pytest.raises(RemoteProtocolError, match="exceeds the cap 0"):
        decoder.receive_data(codec.encode_bytes(chunk(1, 0, b"abc")))
