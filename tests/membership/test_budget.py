"""Token buckets and the reply budget, from tables: time passed in, nothing sent."""

import pytest

from kvmesh.membership.budget import Refusal, ReplyBudget, TokenBucket


@pytest.mark.parametrize("takes, expected", [
    # (time, took?) for a bucket of 2 tokens refilled at 1 a second, full at t=0
    ([0, 0, 0], [True, True, False]),
    ([0, 0, 0.5, 1.0], [True, True, False, True]),  # half a token is not a token
    ([0, 0, 10, 10, 10], [True, True, True, True, False]),  # refills up to capacity only
    ([5, 4, 4], [True, True, False]),  # time going back adds nothing
])
def test_token_bucket(takes, expected):
    bucket = TokenBucket.full(2, 1.0, now=0)
    assert [bucket.take(t) for t in takes] == expected


def budget(max_sources=8):
    return ReplyBudget(per_source=(2, 0.5), total=(3, 1.0), max_sources=max_sources, now=0)


def test_each_source_has_its_own_budget_and_all_share_one():
    b = budget()
    assert [b.allow("a", 0) for _ in range(3)] == [None, None, Refusal.SOURCE]
    assert b.allow("b", 0) is None  # the shared bucket had one more
    assert b.allow("c", 0) is Refusal.TOTAL
    assert b.allow("a", 1) is Refusal.SOURCE  # half a token of its own
    assert b.allow("c", 1) is None  # its own bucket was untouched; the shared one refilled
    assert b.allow("b", 1) is Refusal.TOTAL
    assert b.allow("a", 2) is None


def test_a_refused_source_spends_nothing_from_the_shared_budget():
    b = budget()
    b.allow("a", 0), b.allow("a", 0)
    for _ in range(10):
        assert b.allow("a", 0) is Refusal.SOURCE
    assert b.allow("b", 0) is None


def test_sources_are_bounded():
    b = ReplyBudget(per_source=(1, 0.01), total=(1000, 1000.0), max_sources=4, now=0)
    for i in range(100):
        assert b.allow(f"s{i}", 0) is None
        assert len(b) <= 4
    assert b.allow("s99", 0) is Refusal.SOURCE  # recent ones are remembered
    assert b.allow_total(0)
