import itertools

import pytest

from kvmesh.errors import KvmeshError
from kvmesh.membership.states import (LIVE, TRANSITIONS, IllegalTransition, Member, MemberState,
                                     must_refute, refute_incarnation, supersedes, transition)

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
