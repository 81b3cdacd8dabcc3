"""What one peer's data-plane server gives an inbound connection, at most.

Named caps and timeouts, read where they are used (`ServerLimits.default`,
`ConnectionGate.for_this_process`), so a test may lower them. Why each value:

- Connections. A member keeps one connection to each peer it talks to (and a
  short-lived probe for UCX); its engine's lookup client keeps one more. So a
  peer of an N-peer mesh serves about N; several peers share a host (one per
  engine and tensor-parallel rank), hence a per-address cap well above one.
  A connection beyond a cap is closed at once, before any byte is read.
- Before authentication a connection may send only the handshake's frames,
  whose headers are a few hundred bytes (a long shm path at worst is 4 KiB);
  once the other side has proved the mesh secret the protocol's header cap
  applies. Requests carry no payload at all.
- Idle. A connection with no request in flight is closed after
  IDLE_TIMEOUT_S without a frame. Connections between healthy peers go quiet
  for long stretches; the client side drops a connection it has not used for
  CLIENT_IDLE_S, shorter by a margin, so it never sends on one the server is
  about to close, and simply dials again on its next request.
- Send. Every frame the server writes must be written within the send
  timeout, else the connection is closed: a puller that stops reading would
  otherwise hold the request's task, and the chunk it pins, for ever.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

MAX_INBOUND_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_ADDRESS = 64
MAX_PRE_AUTH_CONNECTIONS = 128
# Inbound connections may take at most this share of the file descriptor
# limit: outbound connections, disk chunks and the pool need the rest.
INBOUND_FD_SHARE = 0.5

PRE_AUTH_MAX_HEADER_BYTES = 8 << 10
# No request carries a payload (only CHUNK does, and only servers send it),
# so a server takes none, before authentication or after.
REQUEST_MAX_PAYLOAD_BYTES = 0

IDLE_TIMEOUT_S = 300.0
CLIENT_IDLE_S = 240.0
# The send timeout is this, or the peer's network timeout if that is longer.
SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ConnectionCaps:
    total: int  # inbound connections, in the handshake or past it
    per_address: int  # from one remote IP
    pre_auth: int  # still in the handshake

    @classmethod
    def for_this_process(cls) -> "ConnectionCaps":
        """The named caps, the total lowered to INBOUND_FD_SHARE of RLIMIT_NOFILE."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        total = MAX_INBOUND_CONNECTIONS
        if soft != resource.RLIM_INFINITY:
            total = max(1, min(total, int(soft * INBOUND_FD_SHARE)))
        return cls(total, min(MAX_CONNECTIONS_PER_ADDRESS, total), min(MAX_PRE_AUTH_CONNECTIONS, total))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    handshake_s: float  # the whole handshake
    idle_s: float  # no frame and no request in flight for this long: closed
    send_s: float  # one frame not written within this: closed
    pre_auth_header_bytes: int  # the header cap until the handshake is done

    @classmethod
    def default(cls, timeout_s: float) -> "ServerLimits":
        """The named limits for a peer whose network timeout is `timeout_s`."""
        return cls(timeout_s, IDLE_TIMEOUT_S, max(SEND_TIMEOUT_S, timeout_s),
                   PRE_AUTH_MAX_HEADER_BYTES)
