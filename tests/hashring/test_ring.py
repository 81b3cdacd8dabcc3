import random
import statistics

import pytest
from hypothesis import given, settings, strategies as st

from kvmesh.hashring.ring import HashRing


KEYS = [random.Random(i).randbytes(16) for i in range(20000)]


def test_table_of_small_rings():
    # A fixed point hash makes placement exact: peer "p#i" sits at int(i)*10 + offset.
    table = {"a": 100, "b": 200, "c": 300}

    def point(data: bytes) -> int:
        peer, _, i = data.decode().partition("#")
        return table[peer] + int(i)

    ring = HashRing(["a", "b", "c"], vnodes=1, point_hash=point)
    key_at = lambda p: p.to_bytes(8, "little") + bytes(8)
    assert ring.owners(key_at(50), 1) == ["a"]
    assert ring.owners(key_at(150), 2) == ["b", "c"]
    assert ring.owners(key_at(250), 3) == ["c", "a", "b"]
    assert ring.owners(key_at(350), 2) == ["a", "b"]  # wraps around
    assert ring.owners(key_at(100), 1) == ["b"]  # a point belongs to the arc before it
    assert ring.owners(key_at(50), 9) == ["a", "b", "c"]  # never more than the peers


def test_empty_ring_and_membership():
    ring = HashRing(vnodes=4)
    assert ring.owners(b"k" * 16, 2) == []
    assert ring.add("a") and not ring.add("a")
    assert "a" in ring and len(ring) == 1
    assert ring.remove("a") and not ring.remove("a")
    with pytest.raises(ValueError):
        HashRing(vnodes=0)


def test_owners_are_distinct_and_stable():
    ring = HashRing([f"p{i}" for i in range(10)], vnodes=32)
    for key in KEYS[:500]:
        owners = ring.owners(key, 3)
        assert len(set(owners)) == 3
        assert ring.owners(key, 3) == owners


def test_balance_at_1000_peers():
    ring = HashRing([f"10.0.{i // 256}.{i % 256}:7000" for i in range(1000)], vnodes=128)
    shares = ring.shares()
    assert abs(sum(shares.values()) - 1) < 1e-9
    mean = statistics.mean(shares.values())
    assert max(shares.values()) / mean < 1.5  # 128 vnodes: max/mean is about 1.3


@pytest.mark.parametrize("change", ["join", "leave"])
def test_keys_moved_on_change_are_about_one_nth(change):
    peers = [f"p{i}" for i in range(1000)]
    ring = HashRing(peers, vnodes=64)
    before = [ring.owners(k, 1)[0] for k in KEYS]
    if change == "join":
        ring.add("newcomer")
    else:
        ring.remove("p17")
    after = [ring.owners(k, 1)[0] for k in KEYS]
    moved = sum(a != b for a, b in zip(before, after)) / len(KEYS)
    assert moved < 3 / 1000  # about 1/N; never a reshuffle
    # Only keys involving the changed peer move.
    for a, b in zip(before, after):
        if a != b:
            assert (b == "newcomer") if change == "join" else (a == "p17")


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=12),
       st.binary(min_size=16, max_size=16), st.integers(1, 4))
def test_owners_property(peers, key, r):
    ring = HashRing(sorted(peers), vnodes=8)
    owners = ring.owners(key, r)
    assert len(owners) == min(r, len(peers)) and len(set(owners)) == len(owners)
    assert set(owners) <= peers
    # The first owner does not depend on the order peers were added.
    assert HashRing(sorted(peers, reverse=True), vnodes=8).owners(key, r) == owners


def test_copy_is_independent():
    ring = HashRing(["a", "b"], vnodes=16)
    twin = ring.copy()
    assert [twin.owners(k, 2) for k in KEYS[:200]] == [ring.owners(k, 2) for k in KEYS[:200]]
    twin.add("c")
    ring.remove("a")
    assert ring.peers == {"b"} and twin.peers == {"a", "b", "c"}
    assert twin.vnodes == 16 and len(twin._points) == 48
