"""Member states (alive -> suspect -> dead, and left) as a transition table.

Every claim about a member carries the member's incarnation, a counter only
the member itself raises. A claim replaces what we hold when the table says
its incarnation is high enough:

- alive needs a strictly newer incarnation to override anything: that is how
  a suspected (or wrongly declared dead) member refutes, by bumping its
  incarnation and gossiping alive;
- suspect, dead and left override a live state at the same incarnation, so an
  accusation about the current life of a member wins over its alive notice;
- dead is final for that incarnation: only a newer incarnation revives.

`transition` raises `IllegalTransition` for anything the table forbids; gossip
handling asks `supersedes` first, so stale gossip is ignored, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from kvmesh.errors import LocalProtocolError
from kvmesh.types import PeerId

MAX_INCARNATION = (1 << 63) - 1


class MemberState(IntEnum):
    """ONLY APPEND TO THIS LIST: the values are part of the gossip protocol."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


LIVE = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


class Needs(Enum):
    NEWER = "incarnation > current"
    SAME_OR_NEWER = "incarnation >= current"


_A, _S, _D, _L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT

TRANSITIONS: dict[tuple[MemberState, MemberState], Needs] = {
    (_A, _A): Needs.NEWER,  # a refutation or a restart
    (_A, _S): Needs.SAME_OR_NEWER,
    (_A, _D): Needs.SAME_OR_NEWER,
    (_A, _L): Needs.SAME_OR_NEWER,
    (_S, _A): Needs.NEWER,  # the suspect refuted
    (_S, _S): Needs.NEWER,  # same incarnation is a confirmation, not a change
    (_S, _D): Needs.SAME_OR_NEWER,
    (_S, _L): Needs.SAME_OR_NEWER,
    (_D, _A): Needs.NEWER,  # back from the dead only as a new incarnation
    (_D, _S): Needs.NEWER,
    (_D, _D): Needs.NEWER,  # died again in a later life
    (_D, _L): Needs.SAME_OR_NEWER,  # a graceful leave explains a death
    (_L, _A): Needs.NEWER,
    (_L, _S): Needs.NEWER,
    (_L, _D): Needs.NEWER,
    (_L, _L): Needs.NEWER,
}


class IllegalTransition(LocalProtocolError):
    """A state change the table forbids was attempted (a bug in the caller)."""


def supersedes(state: MemberState, incarnation: int,
               new_state: MemberState, new_incarnation: int) -> bool:
    """Whether a claim (new_state, new_incarnation) replaces what we hold."""
    needs = TRANSITIONS.get((state, new_state))
    if needs is None:
        return False
    if needs is Needs.NEWER:
        return new_incarnation > incarnation
    return new_incarnation >= incarnation


def transition(state: MemberState, incarnation: int, new_state: MemberState,
               new_incarnation: int) -> tuple[MemberState, int]:
    """The state after the change; raises IllegalTransition if the table forbids it."""
    if not 0 <= new_incarnation <= MAX_INCARNATION:
        raise IllegalTransition(f"incarnation {new_incarnation} out of range")
    if not supersedes(state, incarnation, new_state, new_incarnation):
        raise IllegalTransition(f"{state.name}@{incarnation} -> {new_state.name}@{new_incarnation}"
                                f" needs {TRANSITIONS[(state, new_state)].value}")
    return new_state, new_incarnation


def must_refute(own_incarnation: int, claim: MemberState, claim_incarnation: int,
                leaving: bool) -> bool:
    """Whether a claim about ourselves needs an answer with a newer incarnation.

    Accusations (suspect, dead, left) about our current life are refuted unless
    we are leaving; an alive claim newer than ours is a previous life's notice
    (we restarted) and is refuted too.
    """
    if claim is MemberState.ALIVE:
        return claim_incarnation > own_incarnation
    return not leaving and claim_incarnation >= own_incarnation


def refute_incarnation(own_incarnation: int, claim_incarnation: int) -> int:
    """The incarnation that overrides a claim about us."""
    return max(own_incarnation, claim_incarnation) + 1


@dataclass(slots=True)
class Member:
    """What this member believes about one other member."""

    peer: PeerId
    addr: str  # gossip address, "host:port"
    state: MemberState
    incarnation: int
    since: float  # clock time of the last state change

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def apply(self, new_state: MemberState, new_incarnation: int, now: float) -> None:
        """Move to a new state by the table; raises IllegalTransition."""
        state, self.incarnation = transition(self.state, self.incarnation, new_state,
                                             new_incarnation)
        if state is not self.state:
            self.since = now
        self.state = state
