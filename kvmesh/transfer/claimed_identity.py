"""A connection's claimed peer id, and its directory changes until the claim is checked.

A connection names its peer id in its HELLO; the server asks that peer,
over its own connection to it, whether it opened this one (VOUCH: see
`server`). The answer takes a round trip, a dial at worst, and a new peer's
first advertisements arrive meanwhile: holding them back would keep its
chunks out of everyone's lookups for that long. So, until the answer:

- ADVERTISE is applied at once, and remembered (up to MAX_EARLY_KEYS keys).
  An entry only ever names the claimed peer, so an impostor can only make
  others ask the real peer for chunks it may not hold: a miss, never bytes
  from anyone else;
- WITHDRAW is held back (an impostor must not erase the real peer's
  entries), and so is every change after a held one, to keep their order.

Confirmed: the held changes are applied. Refuted: the early advertisements
are withdrawn again (the real peer's own entries for the same keys, if any,
go with them until its next advertisement: a miss, never a wrong answer).
Changes beyond the caps are dropped: a stale directory until the holder's
next rebalance. Loop thread only.
"""

from __future__ import annotations

from typing import Callable

from kvmesh.transfer import frames as f
from kvmesh.types import ChunkKey, PeerId

MAX_EARLY_KEYS = 1 << 16  # advertised before the claim was checked, remembered to undo
MAX_HELD_KEYS = 1 << 16  # held back until the claim is checked

DirectoryFn = Callable[[PeerId, tuple[ChunkKey, ...]], None]


class ClaimedIdentity:
    def __init__(self, peer: PeerId, advertise: DirectoryFn, withdraw: DirectoryFn) -> None:
        self.peer = peer  # "" for a connection that claims no peer id
        self.verified = False
        self._advertise = advertise
        self._withdraw = withdraw
        self._early: list[tuple[ChunkKey, ...]] = []
        self._early_keys = 0
        self._held: list[f.Advertise | f.Withdraw] = []
        self._held_keys = 0

    def change(self, frame: f.Advertise | f.Withdraw) -> None:
        """An ADVERTISE or WITHDRAW for this connection's own peer id."""
        if self.verified:
            self._apply(frame)
        elif (isinstance(frame, f.Advertise) and not self._held
              and self._early_keys + len(frame.keys) <= MAX_EARLY_KEYS):
            self._advertise(self.peer, frame.keys)
            self._early.append(frame.keys)
            self._early_keys += len(frame.keys)
        elif self._held_keys + len(frame.keys) <= MAX_HELD_KEYS:
            self._held.append(frame)
            self._held_keys += len(frame.keys)

    def confirmed(self) -> None:
        self.verified = True
        held, self._held, self._early = self._held, [], []
        for frame in held:
            self._apply(frame)

    def refuted(self) -> None:
        early, self._early, self._held = self._early, [], []
        for keys in early:
            self._withdraw(self.peer, keys)

    def _apply(self, frame: f.Advertise | f.Withdraw) -> None:
        (self._advertise if isinstance(frame, f.Advertise) else self._withdraw)(self.peer, frame.keys)
