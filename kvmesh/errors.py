"""One error hierarchy for kvmesh.

Every failure that a caller must turn into a cache miss is a `KvmeshError`:
the transports turn the OS's connection errors and timeouts into
`TransferError`s (`StreamClosed` among them) and the kernels raise
`KernelError`, so a connector's edge catches `KvmeshError` and nothing else.
Anything else that escapes is a bug and is left to surface.
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


class StreamClosed(TransferError):
    """The other side of a connection went away (EOF, reset, or closed by us)."""


class KernelError(KvmeshError, ValueError):
    """A gather or scatter was refused: block ids, slab size or layout do not fit."""


class CodecError(KvmeshError, ValueError):
    """An encoded chunk was refused: not a valid envelope, an unknown or unaccepted
    codec, sizes that do not fit the geometry, or a corrupt payload (a cache miss)."""
