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

Incarnations arrive from the network, so how far a claim may raise one is
bounded too (`admissible`, `admissible_about_self`); a claim past a bound is
refused whole, before the table is asked:

- nothing above `INCARNATION_CEILING` (a quarter of the wire's range) is
  merged, so a refutation (claim + 1) always fits the wire, however many
  claims came before;
- a member we hold rises in our view by at most `MAX_INCARNATION_JUMP` per
  `INCARNATION_WINDOW_S` (`window_floor`), however many claims arrive in
  that window: reaching the ceiling takes longer than any mesh lives;
- a claim about ourselves may be at most `MAX_SELF_JUMP` above our own
  incarnation. It is twice the jump, so we can refute whatever another
  member may have accepted about us within one window, and refute it to
  them. A restarted member (back at 0) refutes its previous life at
  known + 1 while that life's incarnation is within `MAX_SELF_JUMP` (over
  two million refutations); past that, it is readmitted once the others
  have reaped the old life (`SwimConfig.dead_reap_s`);
- a member we do not hold is bounded by the ceiling alone.

Bounded claims leave one gap: a member may hold us at an older life than
our own and refuse our (too new) alive notice. An accusation from such a
member is answered with `catch_up_incarnation`: alive at its incarnation + 1,
which it always accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from kvmesh.errors import LocalProtocolError
from kvmesh.types import PeerId

MAX_INCARNATION = (1 << 63) - 1  # the wire's range (`wire.decode` refuses more)
INCARNATION_CEILING = 1 << 62  # no claim above it is merged: claim + 1 always fits the wire
MAX_INCARNATION_JUMP = 1 << 20  # a member's rise in our view per window (refutations are +1)
INCARNATION_WINDOW_S = 1.0
MAX_SELF_JUMP = 2 * MAX_INCARNATION_JUMP  # a claim about us may be this far above our own


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


def admissible(incarnation: int, floor: int | None) -> bool:
    """Whether a claim about another member may be merged at all.

    `floor`: the member's incarnation at the start of the current window
    (`window_floor`); None for a member we do not hold.
    """
    if incarnation > INCARNATION_CEILING:
        return False
    return floor is None or incarnation <= floor + MAX_INCARNATION_JUMP


def admissible_about_self(incarnation: int, own_incarnation: int) -> bool:
    """Whether a claim about ourselves may be acted on (refuted) at all."""
    return incarnation <= min(INCARNATION_CEILING, own_incarnation + MAX_SELF_JUMP)


def window_floor(floor: int | None, floor_at: float, held: int,
                 now: float) -> tuple[int, float]:
    """The (floor, since) that bounds claims about a member now.

    The floor is what we held at the window's start: a new window starts
    once `INCARNATION_WINDOW_S` has passed since the last one (or when none
    was started), at the incarnation we hold now.
    """
    if floor is None or now - floor_at >= INCARNATION_WINDOW_S:
        return held, now
    return floor, floor_at


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
    """The incarnation that overrides a claim about us.

    At most INCARNATION_CEILING + 1 for an admissible claim and an own
    incarnation that only admissible claims raised: it always fits the wire.
    """
    return max(own_incarnation, claim_incarnation) + 1


def catch_up_incarnation(own_incarnation: int, claim: MemberState, claim_incarnation: int,
                         leaving: bool) -> int | None:
    """For an accusation about an older life than ours: the alive incarnation to answer it with.

    Whoever sent it holds us at that older life and may refuse our own alive
    notice (too far above what it holds); alive at its claim + 1 is the
    smallest claim that overrides its accusation, and it always admits it.
    None: nothing to answer (not an accusation, not older, or we are leaving).
    """
    if claim is MemberState.ALIVE or leaving or claim_incarnation >= own_incarnation:
        return None
    return claim_incarnation + 1


@dataclass(slots=True)
class Member:
    """What this member believes about one other member."""

    peer: PeerId
    addr: str  # gossip address, "host:port"
    state: MemberState
    incarnation: int
    since: float  # clock time of the last state change
    floor: int | None = None  # incarnation at the start of the current window (`window_floor`)
    floor_at: float = 0.0

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def admits(self, incarnation: int, now: float) -> bool:
        """Whether a claim at `incarnation` may be merged now (see `admissible`).

        A rise starts a new window first if the last one is over.
        """
        if incarnation <= self.incarnation:
            return True  # no rise: the table decides
        self.floor, self.floor_at = window_floor(self.floor, self.floor_at, self.incarnation, now)
        return admissible(incarnation, self.floor)

    def apply(self, new_state: MemberState, new_incarnation: int, now: float) -> None:
        """Move to a new state by the table; raises IllegalTransition."""
        state, self.incarnation = transition(self.state, self.incarnation, new_state,
                                             new_incarnation)
        if state is not self.state:
            self.since = now
        self.state = state
