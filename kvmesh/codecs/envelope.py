"""The envelope: an encoded chunk as a self-describing, odd-length byte string.

Raw chunks always have an even length (K and V), envelopes an odd one, so a
chunk's length alone says which it is and nothing else in the mesh changes.

Layout (little-endian): magic b"KVC1", codec id u8, flags u8 (0: none are
defined), blocks u16, raw_len u64, payload_len u64, then the payload, then
one zero byte when needed to make the length odd.

Every field is checked against what this peer expects before anything is
sized from it: the codec must be known and accepted (lossless always; a lossy
one only if it is the namespace's), the block count within the geometry's,
raw_len what the geometry gives for it, payload_len exactly the codec's
(fixed-ratio) or within its bound (lossless), and the length exactly header +
payload + pad. Any mismatch is a CodecError: a cache miss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from kvmesh.codecs.base import Codec, FixedRatioCodec
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.registry import CODECS_BY_ID, get_codec
from kvmesh.errors import CodecError

MAGIC = b"KVC1"
_HEADER = struct.Struct("<4sBBHQQ")
HEADER_BYTES = _HEADER.size  # 24: payloads start 8-byte aligned
MAX_BLOCKS = 0xFFFF


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    codec_id: int
    flags: int
    blocks: int
    raw_len: int
    payload_len: int


def is_encoded(length: int) -> bool:
    """Whether a stored or received chunk of `length` bytes is an envelope."""
    return length % 2 == 1


def envelope_length(payload_len: int) -> int:
    """Header + payload, plus the pad byte when that sum is even."""
    total = HEADER_BYTES + payload_len
    return total if total % 2 else total + 1


def encoded_bound(codec: Codec | str, geometry: ChunkGeometry, blocks: int) -> int:
    """The longest envelope `encode_chunk` can return for `blocks` blocks (the
    raw chunk it declines to encode is `geometry.raw_bytes(blocks)`)."""
    codec = _as_codec(codec)
    return envelope_length(codec.payload_bound(geometry, blocks))


def encode_chunk(raw: torch.Tensor, codec: Codec | str, geometry: ChunkGeometry,
                 blocks: int) -> torch.Tensor | None:
    """The envelope of the raw chunk `raw` (read only), on `raw`'s device; None
    when it would not be shorter than `raw` (the caller keeps the raw bytes)."""
    codec = _as_codec(codec)
    geometry.check_blocks(blocks)
    raw_len = geometry.raw_bytes(blocks)
    if blocks > MAX_BLOCKS or raw.numel() != raw_len:
        raise CodecError(f"{raw.numel()} raw bytes for {blocks} blocks of {raw_len}")
    fixed = codec.payload_bytes(geometry, blocks)
    if fixed is not None and isinstance(codec, FixedRatioCodec):
        if envelope_length(fixed) >= raw_len:
            return None
        out = torch.empty(envelope_length(fixed), dtype=torch.uint8, device=raw.device)
        codec.encode_into(raw, geometry, blocks, out[HEADER_BYTES:HEADER_BYTES + fixed])
        payload_len = fixed
    else:
        payload = codec.encode(raw, geometry, blocks)
        payload_len = payload.numel()
        if (payload_len > codec.payload_bound(geometry, blocks)
                or envelope_length(payload_len) >= raw_len):
            return None
        out = torch.empty(envelope_length(payload_len), dtype=torch.uint8, device=raw.device)
        out[HEADER_BYTES:HEADER_BYTES + payload_len].copy_(payload)
    header = _HEADER.pack(MAGIC, codec.codec_id, 0, blocks, raw_len, payload_len)
    out[:HEADER_BYTES].copy_(torch.frombuffer(bytearray(header), dtype=torch.uint8))
    out[HEADER_BYTES + payload_len:].zero_()
    return out


def read_header(data) -> EnvelopeHeader:
    """The header of the envelope `data` (uint8 tensor or bytes-like), after
    the checks that need no geometry: odd length, magic, flags, and a length
    that is exactly header + payload + pad."""
    data = as_byte_tensor(data)
    length = data.numel()
    if not is_encoded(length):
        raise CodecError(f"a chunk of even length {length} is raw, not an envelope")
    if length < HEADER_BYTES:
        raise CodecError(f"{length} bytes is shorter than an envelope header")
    magic, codec_id, flags, blocks, raw_len, payload_len = _HEADER.unpack(
        data[:HEADER_BYTES].cpu().numpy().tobytes())
    if magic != MAGIC:
        raise CodecError(f"bad envelope magic {magic!r}")
    if flags:
        raise CodecError(f"unknown envelope flags {flags:#x}")
    if length != envelope_length(payload_len):
        raise CodecError(f"envelope of {length} bytes says its payload is {payload_len}")
    return EnvelopeHeader(codec_id, flags, blocks, raw_len, payload_len)


def decode_chunk(data, geometry: ChunkGeometry, accept_lossy: str,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """The raw chunk of the envelope `data`, decoded into `out` (a contiguous
    uint8 tensor at least raw_len long; the decoded bytes are its first
    raw_len, returned as a view) or into a new tensor on `data`'s device.

    `accept_lossy` is the namespace's `lossy_codec` ("" for an exact one).
    Raises CodecError, having allocated nothing, for an envelope that does not
    fit `geometry` or is not accepted; if the payload itself turns out corrupt,
    CodecError after `out` was partly written.
    """
    data = as_byte_tensor(data)
    header = read_header(data)
    codec = CODECS_BY_ID.get(header.codec_id)
    if codec is None:
        raise CodecError(f"unknown codec id {header.codec_id}")
    if not codec.lossless and codec.name != accept_lossy:
        raise CodecError(f"lossy codec {codec.name!r} is not accepted here "
                         f"(namespace's lossy codec: {accept_lossy or 'none, exact'})")
    _check_sizes(header, codec, geometry)
    target = _target(out, header.raw_len, data.device)
    if data.storage_offset() % 8:  # payload views of bf16/fp32 need aligned bytes
        data = data.clone()
    payload = data[HEADER_BYTES:HEADER_BYTES + header.payload_len]
    codec.decode(payload, geometry, header.blocks, target)
    return target


def as_byte_tensor(data) -> torch.Tensor:
    """`data` as a 1-D uint8 tensor: a tensor as is (no copy), a writable
    buffer viewed, a read-only one (bytes) copied."""
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or data.dim() != 1 or not data.is_contiguous():
            raise CodecError(f"expected contiguous 1-D uint8 bytes, got {data.dtype} "
                             f"{tuple(data.shape)}")
        return data
    view = memoryview(data).cast("B")
    if view.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(view if not view.readonly else bytearray(view), dtype=torch.uint8)


def _check_sizes(header: EnvelopeHeader, codec: Codec, geometry: ChunkGeometry) -> None:
    geometry.check_blocks(header.blocks)
    if header.raw_len != geometry.raw_bytes(header.blocks):
        raise CodecError(f"envelope says {header.raw_len} raw bytes for {header.blocks} "
                         f"blocks, the geometry {geometry.raw_bytes(header.blocks)}")
    fixed = codec.payload_bytes(geometry, header.blocks)
    if fixed is not None and header.payload_len != fixed:
        raise CodecError(f"{codec.name} payload of {header.payload_len} bytes for "
                         f"{header.blocks} blocks, expected {fixed}")
    bound = codec.payload_bound(geometry, header.blocks)
    if header.payload_len > bound:
        raise CodecError(f"{codec.name} payload of {header.payload_len} bytes exceeds "
                         f"its bound {bound}")


def _target(out: torch.Tensor | None, raw_len: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(raw_len, dtype=torch.uint8, device=device)
    if out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous():
        raise CodecError("out must be a contiguous 1-D uint8 tensor")
    if out.numel() < raw_len:
        raise CodecError(f"out holds {out.numel()} bytes, the chunk {raw_len}")
    return out[:raw_len]


def _as_codec(codec: Codec | str) -> Codec:
    return get_codec(codec) if isinstance(codec, str) else codec
