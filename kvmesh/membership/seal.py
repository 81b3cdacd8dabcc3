"""Sealing gossip datagrams and discovery beacons: a truncated HMAC over a timestamped envelope.

A sealed datagram is

    payload || timestamp (8 bytes, big-endian microseconds) || nonce (12) || tag (16)

the tag being the first `TAG_BYTES` of HMAC-SHA256 over everything before it,
under a key derived from the mesh secret and a context (the peers' namespace
digest, and what kind of datagram it is). `ENVELOPE_BYTES` (36) ride on top of
the payload: a 1,400-byte gossip datagram goes out as 1,436, under the 1,452
an IPv6 UDP datagram fits in one Ethernet frame.

What is dropped (unread, counted in `Sealer.stats`):

- a tag that does not verify (`rejected`): with a mesh secret that
  authenticates every datagram, so a host without the secret can neither join
  nor accuse, refute or resurrect anyone; without one the key derives from the
  namespace only, which is not authentication: anyone who knows the namespace
  can seal, and the tag only keeps meshes with different namespaces (another
  model, another TP rank) apart, as the TCP handshake does for the data path;
- a replay (`replay.ReplayGuard`): a timestamp more than `REPLAY_WINDOW_S` from
  our clock, or older than what the bounded nonce cache had to forget, is
  `stale`; a nonce seen within the window is `replayed`. The clocks of member
  hosts are assumed to agree within the window (wall clock, `time.time`; an
  injectable `WallClock`, e.g. `sim_network.SimClock` in tests). The window
  is shorter than the time members keep the dead (`SwimConfig.dead_reap_s`,
  300 s), so a member's recorded datagram cannot bring it back after the
  others have forgotten it. Within the window a datagram may still be
  replayed to a member that did not receive it (the envelope does not name
  the receiver); incarnations make that harmless (a claim about a life
  already declared dead cannot revive it). Without a secret a stranger can
  seal fresh datagrams anyway; the window stops replays, not forgeries.

Replay protection holds with and without a mesh secret, for gossip and
beacons alike. `Sealer` keeps the nonces it admitted, so one `Sealer` per
receiving socket; it may also seal what that socket sends.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from kvmesh.membership.edges import GossipTransport
from kvmesh.membership.replay import US, ReplayGuard, Verdict

TAG_BYTES = 16
STAMP_BYTES = 8
NONCE_BYTES = 12
ENVELOPE_BYTES = STAMP_BYTES + NONCE_BYTES + TAG_BYTES
REPLAY_WINDOW_S = 30.0  # clock skew between member hosts must stay within it
MAX_REPLAY_NONCES = 16384  # ~2,000 datagrams a window is a busy member's load; 8x headroom
GOSSIP_CONTEXT = b"kvmesh-gossip-v2"  # v2: the timestamped envelope
BEACON_CONTEXT = b"kvmesh-beacon-v2"


class WallClock(Protocol):
    def time(self) -> float:
        """Seconds on a clock every member shares within REPLAY_WINDOW_S (wall clock)."""


@dataclass(slots=True)
class SealStats:
    rejected: int = 0  # missing or wrong tag
    stale: int = 0  # outside the replay window, or older than its horizon
    replayed: int = 0  # a nonce already seen within the window


class Sealer:
    """Seals with one key and checks tags and the replay window of what arrives.

    No I/O. `unseal` remembers what it admitted (bounded), so share a Sealer
    only among the users of one receiving socket, on one thread.
    """

    def __init__(self, secret: bytes | None, context: bytes, *, clock: WallClock = time,
                 window_s: float = REPLAY_WINDOW_S, max_nonces: int = MAX_REPLAY_NONCES,
                 nonce: Callable[[int], bytes] = os.urandom) -> None:
        self.authenticated = secret is not None
        self.stats = SealStats()
        self._key = hmac.digest(secret or b"", context, hashlib.sha256)
        self._clock = clock
        self._nonce = nonce
        self._guard = ReplayGuard(window_s, max_nonces, self._now_us())

    def seal(self, payload: bytes) -> bytes:
        """`payload` in a fresh envelope: our time now, a new random nonce, the tag."""
        body = payload + self._now_us().to_bytes(STAMP_BYTES, "big") + self._nonce(NONCE_BYTES)
        return body + hmac.digest(self._key, body, hashlib.sha256)[:TAG_BYTES]

    def unseal(self, data: bytes) -> bytes | None:
        """The payload, or None (counted) for a bad tag, a stale datagram or a replay."""
        if len(data) < ENVELOPE_BYTES:
            self.stats.rejected += 1
            return None
        body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        if not hmac.compare_digest(tag, hmac.digest(self._key, body, hashlib.sha256)[:TAG_BYTES]):
            self.stats.rejected += 1
            return None
        stamp = int.from_bytes(body[-NONCE_BYTES - STAMP_BYTES:-NONCE_BYTES], "big")
        verdict = self._guard.check(stamp, body[-NONCE_BYTES:], self._now_us())
        if verdict is Verdict.STALE:
            self.stats.stale += 1
            return None
        if verdict is Verdict.REPLAYED:
            self.stats.replayed += 1
            return None
        return body[:-NONCE_BYTES - STAMP_BYTES]

    def _now_us(self) -> int:
        return int(self._clock.time() * US)


def gossip_sealer(secret: bytes | None, namespace: bytes, **kwargs) -> Sealer:
    """The sealer of one gossip socket; kwargs as `Sealer` (clock, window)."""
    return Sealer(secret, GOSSIP_CONTEXT + namespace, **kwargs)


def beacon_sealer(secret: bytes | None, namespace: bytes, **kwargs) -> Sealer:
    """The sealer of one beacon socket; kwargs as `Sealer` (clock, window)."""
    return Sealer(secret, BEACON_CONTEXT + namespace, **kwargs)


class SealedTransport:
    """A `GossipTransport` that seals what it sends and drops what does not unseal.

    Wraps another transport; same threading and ownership contract. `stats`
    are the sealer's.
    """

    def __init__(self, inner: GossipTransport, sealer: Sealer) -> None:
        self.inner = inner
        self.sealer = sealer
        self.stats = sealer.stats

    def send(self, addr: str, data: bytes) -> None:
        self.inner.send(addr, self.sealer.seal(data))

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        if receive is None:
            self.inner.set_receiver(None)
            return

        def unsealed(data: bytes, src: str) -> None:
            payload = self.sealer.unseal(data)
            if payload is not None:
                receive(payload, src)

        self.inner.set_receiver(unsealed)
