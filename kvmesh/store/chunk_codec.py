"""What the store asks of a codec: the envelope of a raw chunk.

A chunk is held as its raw bytes (even length) or as an envelope of a codec
(odd length: `kvmesh.codecs`); the store never decodes, and never imports a
codec: it is handed an `Encoder` (spills, recodes). The peer's
(`peers/chunk_encoder.py`) wraps a codec and its engine's chunk geometry.

Encoding costs milliseconds per chunk: call `encode` on a worker thread,
never on an event loop. It only reads `raw`, and may run on several threads
at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Encoded:
    """An envelope, and the checksum a store or a stream records for it."""

    data: memoryview  # odd length, shorter than the chunk it encodes
    checksum: int  # xxh3_64 of data

    def __len__(self) -> int:
        return len(self.data)


class Encoder(Protocol):
    name: str  # the codec's name, for counters

    def encode(self, raw: memoryview) -> Encoded | None:
        """The envelope of the chunk `raw` holds; None when the bytes stay as
        they are: already an envelope, not whole blocks, or no smaller."""
