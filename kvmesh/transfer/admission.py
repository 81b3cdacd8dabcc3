"""Admission of inbound connections: the caps of `limits.ConnectionCaps`, counted.

`ConnectionGate.admit(remote)` is asked once per inbound stream, before a
byte of it is read. It returns an `Admission` that the connection holds for
as long as it lives, or None when a cap is full: the caller closes the
stream at once. An admission counts as "in the handshake" until
`authenticated()`, and gives everything back on `release()` (both
idempotent). The per-address table is keyed by remote input, so it holds
only addresses with a connection open: never more than the total cap.
Pure counting, no I/O; loop thread only.
"""

from __future__ import annotations

from kvmesh.transfer.limits import ConnectionCaps

REASONS = ("total", "per_address", "pre_auth")


class Admission:
    """One admitted connection's share of the gate's counts."""

    __slots__ = ("_gate", "_remote", "_pre_auth", "_released")

    def __init__(self, gate: "ConnectionGate", remote: str) -> None:
        self._gate, self._remote = gate, remote
        self._pre_auth, self._released = True, False

    def authenticated(self) -> None:
        """The other side finished the handshake: no longer counted as pre-auth."""
        if self._pre_auth and not self._released:
            self._pre_auth = False
            self._gate.pre_auth -= 1

    def release(self) -> None:
        """The connection ended."""
        if self._released:
            return
        self._released = True
        gate = self._gate
        gate.open -= 1
        if self._pre_auth:
            gate.pre_auth -= 1
        if self._remote:
            left = gate.by_address[self._remote] - 1
            if left:
                gate.by_address[self._remote] = left
            else:
                del gate.by_address[self._remote]


class ConnectionGate:
    """Counts open inbound connections against `caps`; see the module docstring."""

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self.open = 0
        self.pre_auth = 0
        self.by_address: dict[str, int] = {}  # remote IP -> open connections
        self.refused = dict.fromkeys(REASONS, 0)

    def admit(self, remote: str) -> Admission | None:
        """An admission for a stream from `remote` (an IP; "" when unknown,
        which only the total and pre-auth caps then apply to), or None if
        it must be refused; `refused` counts why."""
        reason = self._full(remote)
        if reason is not None:
            self.refused[reason] += 1
            return None
        self.open += 1
        self.pre_auth += 1
        if remote:
            self.by_address[remote] = self.by_address.get(remote, 0) + 1
        return Admission(self, remote)

    def _full(self, remote: str) -> str | None:
        if self.open >= self.caps.total:
            return "total"
        if remote and self.by_address.get(remote, 0) >= self.caps.per_address:
            return "per_address"
        if self.pre_auth >= self.caps.pre_auth:
            return "pre_auth"
        return None
