"""A codec over one engine's chunks: what a peer's spills, sends and recodes encode with.

`ChunkEncoder` is the store's `Encoder` (`kvmesh.store.chunk_codec`) for one
codec (`kvmesh.codecs`) and the chunk geometry of this peer's engine. A chunk
it cannot encode stays raw (None): one already an envelope, one that is not
a whole number of the geometry's blocks, or one the codec would not shorten.

Encoding costs milliseconds: call `encode` on a worker thread. Any thread.
"""

from __future__ import annotations

import logging

import torch
import xxhash

from kvmesh.codecs import ChunkGeometry, Codec, encode_chunk, is_encoded
from kvmesh.errors import CodecError
from kvmesh.kernels.paged import readonly_bytes
from kvmesh.store.chunk_codec import Encoded

log = logging.getLogger(__name__)


class ChunkEncoder:
    """An `Encoder` for `codec` over chunks of `geometry`."""

    def __init__(self, codec: Codec, geometry: ChunkGeometry) -> None:
        self.codec = codec
        self.name = codec.name
        self.geometry = geometry

    def encode(self, raw: memoryview) -> Encoded | None:
        length = len(raw)
        blocks, rest = divmod(length, self.geometry.block_bytes)
        if is_encoded(length) or rest or not 1 <= blocks <= self.geometry.max_blocks:
            return None
        data = readonly_bytes(raw) if raw.readonly else torch.frombuffer(raw, dtype=torch.uint8)
        try:
            envelope = encode_chunk(data, self.codec, self.geometry, blocks)
        except CodecError as exc:  # a chunk this codec cannot take: it stays raw
            log.debug("%s did not encode a %d-byte chunk: %s", self.name, length, exc)
            return None
        if envelope is None:
            return None
        out = memoryview(envelope.numpy()).cast("B")
        return Encoded(out, xxhash.xxh3_64_intdigest(out))
