"""zstd (byte shuffle + zstd): bit-exact round trips and refusals of corrupt payloads."""

import struct

import pytest
import torch

from kvmesh.codecs import HEADER_BYTES, decode_chunk, encode_chunk, encoded_bound, read_header
from kvmesh.codecs.shuffle import shuffle, unshuffle
from kvmesh.errors import CodecError

from tests.codecs.kv import DTYPES, LAYOUT_NAMES, geometry, paged_chunk


def _lowish_entropy_chunk(g, ids):
    """KV-like values: normal, so the exponent plane compresses as real KV's does."""
    raw, _, _ = paged_chunk(g, ids)
    return raw


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", [[0, 1, 2, 3], [5]])  # a full chunk and a partial one
def test_round_trip_is_bit_exact(layout, dtype, ids):
    g = geometry(layout, dtype, head_dim=32, block_size=16)
    raw = _lowish_entropy_chunk(g, ids)
    env = encode_chunk(raw, "zstd", g, len(ids))
    assert env is not None and env.numel() < raw.numel() and env.numel() % 2 == 1
    assert env.numel() <= encoded_bound("zstd", g, len(ids))
    out = decode_chunk(env, g, accept_lossy="")  # lossless: accepted in an exact namespace
    assert torch.equal(out, raw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_survive(dtype):
    g = geometry(dtype=dtype, head_dim=32, block_size=16)
    raw = _lowish_entropy_chunk(g, [0, 1])
    vals = raw.view(dtype)
    vals[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    vals[4:8].view(torch.uint8).fill_(0xFF)  # NaNs with odd payload bits
    out = decode_chunk(encode_chunk(raw, "zstd", g, 2), g, accept_lossy="fp8")
    assert torch.equal(out, raw)


def test_incompressible_chunk_stays_raw():
    g = geometry(dtype=torch.bfloat16, head_dim=32, block_size=16)
    raw = torch.randint(0, 256, (g.raw_bytes(2),), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(0))
    assert encode_chunk(raw, "zstd", g, 2) is None


@pytest.mark.parametrize("itemsize", [2, 4])
def test_shuffle_groups_bytes_by_significance(itemsize):
    raw = torch.arange(64, dtype=torch.uint8)
    planes = shuffle(raw, itemsize)
    for k in range(itemsize):
        assert planes[k].tolist() == list(range(k, 64, itemsize))
    out = torch.empty_like(raw)
    unshuffle(planes, out)
    assert torch.equal(out, raw)


G = geometry(dtype=torch.bfloat16, head_dim=32, block_size=16)


def _payload_edit(edit):
    """An envelope whose payload bytes went through `edit(bytearray)`, header fixed up."""
    raw = _lowish_entropy_chunk(G, [0, 1, 2])
    env = encode_chunk(raw, "zstd", G, 3)
    h = read_header(env)
    payload = bytearray(env[HEADER_BYTES:HEADER_BYTES + h.payload_len].numpy().tobytes())
    edit(payload)
    header = struct.pack("<4sBBHQQ", b"KVC1", h.codec_id, 0, h.blocks, h.raw_len, len(payload))
    data = header + bytes(payload)
    return data + (b"\0" if len(data) % 2 == 0 else b"")


def _flip_frame_byte(p: bytearray):
    """Flip a byte in the middle of the first plane stored as a zstd frame."""
    lengths = struct.unpack_from("<2I", p)
    plane_len = G.raw_bytes(3) // 2
    k = next(k for k, n in enumerate(lengths) if n < plane_len)
    p[8 + sum(lengths[:k]) + lengths[k] // 2] ^= 0xFF


def _swap_table(p: bytearray):
    a, b = struct.unpack_from("<2I", p)
    struct.pack_into("<2I", p, 0, b, a)


def _claim_raw_plane(p: bytearray):
    struct.pack_into("<I", p, 0, G.raw_bytes(3) // 2 + 1)


CORRUPT = {
    "flipped frame byte": _flip_frame_byte,
    "table lengths swapped": _swap_table,
    "a plane longer than a plane": _claim_raw_plane,
    "table cut short": lambda p: p.__delitem__(slice(2, None)),
    "trailing garbage": lambda p: p.extend(b"xyz"),
    "payload truncated": lambda p: p.__delitem__(slice(-5, None)),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_payload_is_refused(case):
    data = _payload_edit(CORRUPT[case])
    with pytest.raises(CodecError):
        decode_chunk(data, G, accept_lossy="")


def test_payload_beyond_the_bound_is_refused():
    raw = _lowish_entropy_chunk(G, [0])
    env = encode_chunk(raw, "zstd", G, 1)
    bound = encoded_bound("zstd", G, 1) - HEADER_BYTES
    fake = bytearray(struct.pack("<4sBBHQQ", b"KVC1", read_header(env).codec_id, 0, 1,
                                 G.raw_bytes(1), bound + 2))
    fake += bytes(bound + 2) + (b"\0" if (HEADER_BYTES + bound + 2) % 2 == 0 else b"")
    with pytest.raises(CodecError, match="bound"):
        decode_chunk(bytes(fake), G, accept_lossy="")
