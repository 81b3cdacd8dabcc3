"""What every codec provides, and the shared helper of the fixed-ratio ones.

Contracts (all methods may run on any thread, and on CUDA tensors where the
codec's math is torch; none keeps a reference to its arguments):

- `encode(raw, geometry, blocks)`: `raw` is a chunk's bytes (contiguous 1-D
  uint8 of `geometry.raw_bytes(blocks)`), read only; returns a new payload.
- `decode(payload, geometry, blocks, out)`: `payload` was checked by the
  envelope to be `payload_bytes` long (fixed-ratio) or at most
  `payload_bound` (lossless); `out` (raw_bytes(blocks), the caller's) is
  overwritten; raises CodecError for a payload that cannot be decoded, after
  which `out` holds garbage that the caller must not use.
"""

from __future__ import annotations

import torch

from kvmesh.codecs.geometry import ChunkGeometry


class Codec:
    name: str = ""
    codec_id: int = 0  # the envelope's codec byte: part of the format, never reused
    lossless: bool = False

    def payload_bytes(self, geometry: ChunkGeometry, blocks: int) -> int | None:
        """The exact payload size (fixed-ratio codecs), or None (variable)."""
        raise NotImplementedError

    def payload_bound(self, geometry: ChunkGeometry, blocks: int) -> int:
        """The longest payload an envelope of this codec may carry."""
        raise NotImplementedError

    def encode(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, payload: torch.Tensor, geometry: ChunkGeometry, blocks: int,
               out: torch.Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<codec {self.name} id={self.codec_id}>"


class FixedRatioCodec(Codec):
    """A codec whose payload size follows from the geometry alone; it encodes
    straight into a caller's buffer (the envelope's, so no extra copy)."""

    def payload_bound(self, geometry: ChunkGeometry, blocks: int) -> int:
        return self.payload_bytes(geometry, blocks)

    def encode(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int) -> torch.Tensor:
        payload = torch.empty(self.payload_bytes(geometry, blocks), dtype=torch.uint8,
                              device=raw.device)
        self.encode_into(raw, geometry, blocks, payload)
        return payload

    def encode_into(self, raw: torch.Tensor, geometry: ChunkGeometry, blocks: int,
                    payload: torch.Tensor) -> None:
        """Write the payload of `raw` into `payload` (exactly payload_bytes long)."""
        raise NotImplementedError
