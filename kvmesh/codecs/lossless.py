"""zstd: lossless, bit-exact; byte shuffle, then each byte plane compressed with zstd.

Why zstd (level 1) and not lz4, measured on real KV (15 chunks of 256 tokens
of a vLLM engine's cache, "tiny" model, fp32 and bf16, one core; a shared,
loaded machine, so speeds are only comparable with each other):

                        fp32 ratio  bf16 ratio  encode GB/s  decode GB/s
    shuffle + zstd-1       1.25        1.56      0.18-0.19    0.60-0.75
    shuffle + zstd-3       1.24        1.52      0.05-0.07    0.53-0.70
    shuffle + lz4          1.13        1.27      0.19-0.23    1.04-1.46
    zstd-1, no shuffle     1.12        1.34      0.15-0.17    0.24-0.29

The exponent plane (bf16's high byte) holds ~2.7 bits of entropy a byte;
zstd's entropy coder gets 2.9-3.0x out of it, lz4 (no entropy coder) 1.64x.
lz4 decodes faster, but neither comes near memcpy: this codec is for disk
spills and slow links, where bytes count more than a core's time. `kvmesh
bench codecs` has the current figures (real KV, 43 chunks: 1.25x fp32,
1.54x bf16).

Each plane is its own zstd frame, or stored as is when zstd does not make it
smaller (nearly random mantissa planes still gain ~5% from zstd's entropy
coder, and decode at several GB/s). Frames carry zstd's checksum, so a
corrupt frame is an error rather than other bytes. Payload: one u32 (little-endian) per
plane, its stored length (== the plane's length: stored raw), then the planes.

zstd runs on the CPU: CUDA tensors are copied to host and back.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from kvmesh.codecs.base import Codec
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.shuffle import shuffle, unshuffle
from kvmesh.errors import CodecError

ZSTD_LEVEL = 1
_ENVELOPE_OVERHEAD = 25  # header (24) + the pad of an odd payload: see `payload_bound`


class ZstdCodec(Codec):
    name = "zstd"
    codec_id = 4
    lossless = True

    def payload_bytes(self, geometry: ChunkGeometry, blocks: int) -> None:
        return None

    def payload_bound(self, geometry: ChunkGeometry, blocks: int) -> int:
        """The longest payload worth sending: its envelope must be shorter than
        the raw chunk (encode_chunk keeps the raw bytes otherwise)."""
        return max(0, geometry.raw_bytes(blocks) - _ENVELOPE_OVERHEAD)

    def encode(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int) -> torch.Tensor:
        import zstandard

        planes = shuffle(raw, geometry.itemsize).cpu().numpy()
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        stored = []
        for plane in planes:
            frame = compressor.compress(plane)
            stored.append(frame if len(frame) < plane.size else plane.tobytes())
        table = struct.pack(f"<{len(stored)}I", *map(len, stored))
        payload = np.frombuffer(b"".join([table, *stored]), dtype=np.uint8)
        return torch.from_numpy(payload.copy()).to(raw.device)

    def decode(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
               out: torch.Tensor) -> None:
        itemsize = geometry.itemsize
        plane_len = geometry.raw_bytes(blocks) // itemsize
        data = payload.cpu().numpy().tobytes()
        lengths = _plane_lengths(data, itemsize, plane_len)
        planes = torch.empty((itemsize, plane_len), dtype=torch.uint8)
        at = 4 * itemsize
        for k, length in enumerate(lengths):
            planes[k].numpy()[:] = _plane(data[at:at + length], plane_len)
            at += length
        unshuffle(planes.to(out.device), out)


def _plane_lengths(data: bytes, itemsize: int, plane_len: int) -> tuple[int, ...]:
    """The table's stored lengths, checked: each at most a plane, all adding up
    to exactly the payload."""
    if len(data) < 4 * itemsize:
        raise CodecError(f"zstd payload of {len(data)} bytes has no plane table")
    lengths = struct.unpack_from(f"<{itemsize}I", data)
    if any(n > plane_len for n in lengths) or 4 * itemsize + sum(lengths) != len(data):
        raise CodecError(f"zstd plane lengths {lengths} do not fit a payload of {len(data)} "
                         f"bytes with planes of {plane_len}")
    return lengths


def _plane(stored: bytes, plane_len: int) -> np.ndarray:
    """One plane's bytes: stored raw, or one zstd frame that must say it holds
    exactly a plane (checked before zstd allocates anything)."""
    import zstandard

    if len(stored) == plane_len:
        return np.frombuffer(stored, dtype=np.uint8)
    try:
        if zstandard.frame_content_size(stored) != plane_len:
            raise CodecError("zstd frame does not hold one plane")
        plane = zstandard.ZstdDecompressor().decompress(stored, max_output_size=plane_len)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt zstd plane: {exc}") from None
    if len(plane) != plane_len:
        raise CodecError(f"zstd plane of {len(plane)} bytes, expected {plane_len}")
    return np.frombuffer(plane, dtype=np.uint8)
