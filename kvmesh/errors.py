"""One error hierarchy for kvmesh.

Connectors catch `KvmeshError` at the engine edge and turn it into a cache
miss; nothing below them decides what a failure means to the engine.
"""


class KvmeshError(Exception):
    """Base of every error kvmesh raises on purpose."""


class ConfigError(KvmeshError, ValueError):
    """A setting is missing, malformed or out of range."""


class StoreError(KvmeshError):
    """The chunk store could not do what was asked."""


class StoreFullError(StoreError):
    """Every slot is pinned or in flight: nothing can be evicted to make room."""


class ChunkMissingError(StoreError):
    """The chunk is not (or no longer) in this store."""


class ProtocolError(KvmeshError):
    """Bytes on the wire broke the protocol; the connection must close."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug here)."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something the protocol forbids."""


class HandshakeError(ProtocolError):
    """The peers refuse each other: version, namespace or secret mismatch."""


class TransferError(KvmeshError):
    """A pull failed: dead peer, timeout, miss or corrupt payload."""
