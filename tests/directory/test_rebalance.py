"""Which directory entries move on a ring change: only those with a new owner."""

import random

import pytest

from kvmesh.hashring.ring import HashRing
from kvmesh.directory.rebalance import moved_fraction, new_owners, unowned

KEYS = [random.Random(i).randbytes(16) for i in range(6000)]


def ring(n: int) -> HashRing:
    return HashRing([f"10.0.0.{i}:7400" for i in range(n)], vnodes=128)


def test_unchanged_ring_moves_nothing():
    assert new_owners(KEYS, ring(4), ring(4), 2) == {}


def test_a_join_sends_entries_only_to_the_newcomer():
    old, new = ring(4), ring(5)
    moved = new_owners(KEYS, old, new, 2)
    assert set(moved) == {"10.0.0.4:7400"}
    for key in moved["10.0.0.4:7400"]:
        assert "10.0.0.4:7400" in new.owners(key, 2)
        assert "10.0.0.4:7400" not in old.owners(key, 2)


def test_a_death_sends_each_orphaned_entry_to_one_new_owner():
    old, new = ring(5), ring(5)
    new.remove("10.0.0.2:7400")
    moved = new_owners(KEYS, old, new, 2)
    orphaned = [k for k in KEYS if "10.0.0.2:7400" in old.owners(k, 2)]
    assert sorted(k for keys in moved.values() for k in keys) == sorted(orphaned)
    assert "10.0.0.2:7400" not in moved


@pytest.mark.parametrize("n", [4, 8, 16])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_one_join_or_leave_moves_about_one_nth_of_the_entries(n, r):
    # The member that comes or goes owns 1/(n+1) of the entries of the larger ring.
    small, big = ring(n), ring(n + 1)
    for old, new in ((small, big), (big, small)):
        assert moved_fraction(KEYS, old, new, r) == pytest.approx(1 / (n + 1), rel=0.2)


def test_shrinking_into_a_full_directory_sends_every_entry_to_every_new_owner():
    old, new = ring(5), ring(5)
    new.remove("10.0.0.4:7400")
    moved = new_owners(KEYS[:500], old, new, 2, new_r=4)
    for owner, keys in moved.items():
        assert sorted(keys) == sorted(k for k in KEYS[:500] if owner not in old.owners(k, 2))
    assert set(moved) == set(new.peers)  # every survivor lacked some entries


def test_unowned_is_what_a_peer_keeps_but_no_longer_owns():
    old, new = ring(4), ring(5)
    me = "10.0.0.1:7400"
    kept = [k for k in KEYS if me in old.owners(k, 2)]
    gone = unowned(kept, new, 2, me)
    assert gone and set(gone) == {k for k in kept if me not in new.owners(k, 2)}
    assert unowned(kept, old, 2, me) == []
