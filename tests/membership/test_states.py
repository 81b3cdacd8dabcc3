import itertools

import pytest

from kvmesh.errors import KvmeshError
from kvmesh.membership.states import (INCARNATION_CEILING, INCARNATION_WINDOW_S, LIVE,
                                     MAX_INCARNATION, MAX_INCARNATION_JUMP, MAX_SELF_JUMP,
                                     TRANSITIONS, IllegalTransition, Member, MemberState,
                                     admissible, admissible_about_self, catch_up_incarnation,
                                     must_refute, refute_incarnation, supersedes, transition,
                                     window_floor)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT

# Written out by hand, not derived from TRANSITIONS: which incarnation a claim
# (column) needs to replace a held state (row). ">" newer only, ">=" same or newer.
EXPECTED = {
    A: {A: ">", S: ">=", D: ">=", L: ">="},
    S: {A: ">", S: ">", D: ">=", L: ">="},
    D: {A: ">", S: ">", D: ">", L: ">="},
    L: {A: ">", S: ">", D: ">", L: ">"},
}


def test_wire_values_are_fixed():
    assert [(s.name, s.value) for s in MemberState] == [("ALIVE", 0), ("SUSPECT", 1),
                                                        ("DEAD", 2), ("LEFT", 3)]
    assert LIVE == {A, S}


def test_every_pair_has_a_rule():
    assert set(TRANSITIONS) == set(itertools.product(MemberState, MemberState))


@pytest.mark.parametrize("held, claim", list(itertools.product(MemberState, MemberState)))
def test_table(held, claim):
    rule = EXPECTED[held][claim]
    assert not supersedes(held, 5, claim, 4)  # an older incarnation never wins
    assert supersedes(held, 5, claim, 6)  # a newer one always does
    assert supersedes(held, 5, claim, 5) == (rule == ">=")
    if rule == ">=":
        assert transition(held, 5, claim, 5) == (claim, 5)
    else:
        with pytest.raises(IllegalTransition):
            transition(held, 5, claim, 5)


def test_illegal_transition_is_a_kvmesh_error_naming_the_rule():
    with pytest.raises(KvmeshError, match=r"DEAD@3 -> ALIVE@3 needs incarnation > current"):
        transition(D, 3, A, 3)
    with pytest.raises(IllegalTransition, match="out of range"):
        transition(A, 0, A, 1 << 63)


def test_suspect_refutes_by_bumping_its_incarnation():
    m = Member("p", "10.0.0.1:7400", A, 3, since=0.0)
    m.apply(S, 3, now=1.0)  # someone's probe failed
    assert (m.state, m.incarnation, m.since) == (S, 3, 1.0)
    with pytest.raises(IllegalTransition):
        m.apply(A, 3, now=2.0)  # its old alive notice cannot clear the suspicion
    inc = refute_incarnation(3, 3)
    m.apply(A, inc, now=2.0)
    assert (m.state, m.incarnation, m.since) == (A, 4, 2.0)
    assert m.live


def test_dead_is_final_for_its_incarnation():
    m = Member("p", "a:1", S, 2, since=0.0)
    m.apply(D, 2, now=5.0)
    assert not m.live
    for claim in (A, S, D):
        assert not supersedes(m.state, m.incarnation, claim, 2)
    m.apply(L, 2, now=6.0)  # a leave notice explains the death
    m.apply(A, 3, now=7.0)  # a new life
    assert m.live and m.incarnation == 3


@pytest.mark.parametrize("own, claim, claim_inc, leaving, refute", [
    (3, S, 3, False, True), (3, S, 2, False, False), (3, D, 5, False, True),
    (3, L, 3, False, True), (3, L, 3, True, False), (3, D, 3, True, False),
    (3, A, 3, False, False), (3, A, 4, False, True), (3, A, 4, True, True),
])
def test_must_refute(own, claim, claim_inc, leaving, refute):
    assert must_refute(own, claim, claim_inc, leaving) is refute


@pytest.mark.parametrize("own, claim, new", [(0, 0, 1), (3, 1, 4), (1, 7, 8)])
def test_refute_incarnation(own, claim, new):
    assert refute_incarnation(own, claim) == new


# ---- bounds on incarnations from the wire ----------------------------------------------

C, J, SJ, W = INCARNATION_CEILING, MAX_INCARNATION_JUMP, MAX_SELF_JUMP, INCARNATION_WINDOW_S


def test_bounds_leave_room_for_a_refutation():
    assert refute_incarnation(C, C) <= MAX_INCARNATION  # the worst admissible case fits the wire
    assert C <= (MAX_INCARNATION + 1) // 2 and SJ >= 2 * J  # a self claim covers a window


@pytest.mark.parametrize("claim, floor, ok", [
    (0, None, True), (C, None, True), (C + 1, None, False), (MAX_INCARNATION, None, False),
    (5 + J, 5, True), (5 + J + 1, 5, False), (3, 5, True),  # older: the table decides
    (C, C - 1, True), (C + 1, C, False),
])
def test_admissible(claim, floor, ok):
    assert admissible(claim, floor) is ok


@pytest.mark.parametrize("claim, own, ok", [
    (0, 0, True), (SJ, 0, True),  # a restarted member refutes a previous life up to SJ
    (SJ + 1, 0, False), (3 + SJ, 3, True), (4 + SJ, 3, False),
    (C, C, True), (C + 1, C, False), (MAX_INCARNATION, 0, False), (MAX_INCARNATION, C, False),
])
def test_admissible_about_self(claim, own, ok):
    assert admissible_about_self(claim, own) is ok


@pytest.mark.parametrize("floor, floor_at, held, now, expected", [
    (None, 0.0, 7, 5.0, (7, 5.0)),  # no window yet: one starts at what we hold
    (3, 5.0, 7, 5.0 + W / 2, (3, 5.0)),  # within the window: its floor stands
    (3, 5.0, 7, 5.0 + W, (7, 5.0 + W)),  # past it: a new window at what we hold
])
def test_window_floor(floor, floor_at, held, now, expected):
    assert window_floor(floor, floor_at, held, now) == expected


def test_a_member_rises_one_jump_per_window_however_many_claims_arrive():
    m = Member("p", "a:1", A, 5, since=0.0)
    assert m.admits(5 + J, now=0.0)
    m.apply(S, 5 + J, now=0.0)
    assert not m.admits(6 + J, now=W / 2)  # its refutation waits for the next window
    assert m.admits(5, now=W / 2)  # no rise: always admitted, the table decides
    assert m.admits(6 + J, now=W)
    m.apply(A, 6 + J, now=W)
    assert m.admits(5 + 2 * J, now=W) and not m.admits(7 + 2 * J, now=W)


@pytest.mark.parametrize("own, claim, claim_inc, leaving, answer", [
    (5, S, 3, False, 4), (5, D, 4, False, 5), (5, L, 0, False, 1),  # older lives: catch up
    (5, S, 5, False, None), (5, D, 9, False, None),  # our life or newer: a refutation's job
    (5, A, 3, False, None), (5, S, 3, True, None),  # not an accusation; leaving
])
def test_catch_up_incarnation(own, claim, claim_inc, leaving, answer):
    assert catch_up_incarnation(own, claim, claim_inc, leaving) == answer
