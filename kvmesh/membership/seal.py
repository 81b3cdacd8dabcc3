"""Sealing gossip datagrams and discovery beacons with a truncated HMAC.

A sealed datagram is `payload || tag`, the tag being the first `TAG_BYTES` of
HMAC-SHA256 over the payload under a key derived from the mesh secret and a
context (the peers' namespace digest, and what kind of datagram it is).
Anything whose tag does not verify is dropped unread and counted:

- with a mesh secret, that authenticates every datagram: a host without the
  secret can neither join nor accuse, refute or resurrect anyone;
- without one, the tag only keeps meshes with different namespaces (another
  model, another TP rank) apart, as the TCP handshake does for the data path.

Not covered: replay. A recorded datagram stays valid; SWIM's incarnation
numbers make old claims lose to newer ones, and a member refutes a replayed
accusation about its current life as it would a false one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable

from kvmesh.membership.edges import GossipTransport

TAG_BYTES = 16
GOSSIP_CONTEXT = b"kvmesh-gossip-v1"
BEACON_CONTEXT = b"kvmesh-beacon-v1"


class Sealer:
    """Adds and checks tags for one key. Pure, no I/O; safe to share on one thread."""

    def __init__(self, secret: bytes | None, context: bytes) -> None:
        self.authenticated = secret is not None
        self._key = hmac.digest(secret or b"", context, hashlib.sha256)

    def seal(self, payload: bytes) -> bytes:
        return payload + hmac.digest(self._key, payload, hashlib.sha256)[:TAG_BYTES]

    def unseal(self, data: bytes) -> bytes | None:
        """The payload, or None if the tag is missing or wrong."""
        if len(data) < TAG_BYTES:
            return None
        payload, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        want = hmac.digest(self._key, payload, hashlib.sha256)[:TAG_BYTES]
        return payload if hmac.compare_digest(tag, want) else None


def gossip_sealer(secret: bytes | None, namespace: bytes) -> Sealer:
    return Sealer(secret, GOSSIP_CONTEXT + namespace)


def beacon_sealer(secret: bytes | None, namespace: bytes) -> Sealer:
    return Sealer(secret, BEACON_CONTEXT + namespace)


@dataclass(slots=True)
class SealStats:
    rejected: int = 0  # datagrams dropped for a missing or wrong tag


class SealedTransport:
    """A `GossipTransport` that seals what it sends and drops what does not unseal.

    Wraps another transport; same threading and ownership contract.
    """

    def __init__(self, inner: GossipTransport, sealer: Sealer) -> None:
        self.inner = inner
        self.sealer = sealer
        self.stats = SealStats()

    def send(self, addr: str, data: bytes) -> None:
        self.inner.send(addr, self.sealer.seal(data))

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        if receive is None:
            self.inner.set_receiver(None)
            return

        def unsealed(data: bytes, src: str) -> None:
            payload = self.sealer.unseal(data)
            if payload is None:
                self.stats.rejected += 1
                return
            receive(payload, src)

        self.inner.set_receiver(unsealed)
