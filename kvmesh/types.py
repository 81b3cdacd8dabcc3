"""The small value types that cross module boundaries.

Keys and peer ids are distinct types so that a peer id is never passed where a
chunk key is expected; both are plain values on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

# 16 bytes: xxh3-128 of the previous key and this chunk's tokens.
ChunkKey = NewType("ChunkKey", bytes)
# A peer's stable name for its lifetime: "host:port" of its mesh listener.
PeerId = NewType("PeerId", str)

CHUNK_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where a peer listens for mesh traffic."""

    host: str
    port: int

    @property
    def peer_id(self) -> PeerId:
        return PeerId(f"{self.host}:{self.port}")

    @classmethod
    def parse(cls, text: str) -> "PeerAddress":
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"peer address must be host:port, got {text!r}")
        return cls(host.strip("[]"), int(port))


def key_hex(key: ChunkKey) -> str:
    return bytes(key).hex()
