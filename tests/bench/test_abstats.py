"""Paired A/B statistics: order, ratios, quartiles and the bootstrap interval."""

from __future__ import annotations

import random

import pytest

from kvmesh.bench.abstats import (
    RatioSummary,
    abba_order,
    balanced_orders,
    bootstrap_median_ci,
    pair_ratios,
    quartiles,
    summarize,
)


def test_abba_order_alternates_which_arm_goes_first():
    assert abba_order(4) == [("on", "off"), ("off", "on"), ("on", "off"), ("off", "on")]
    assert abba_order(3, "a", "b") == [("a", "b"), ("b", "a"), ("a", "b")]
    assert abba_order(0) == []


def test_abba_order_runs_each_arm_first_equally_often_over_even_pairs():
    firsts = [order[0] for order in abba_order(10)]
    assert firsts.count("on") == firsts.count("off") == 5


def test_pair_ratios_divide_pair_by_pair():
    assert pair_ratios([2.0, 3.0, 1.0], [1.0, 2.0, 4.0]) == [2.0, 1.5, 0.25]


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([1.0], [0.0]), ([1.0], [-1.0])])
def test_pair_ratios_refuse_unpaired_or_non_positive_baselines(a, b):
    with pytest.raises(ValueError):
        pair_ratios(a, b)


@pytest.mark.parametrize("values, expected", [
    ([5.0], (5.0, 5.0, 5.0)),
    ([1.0, 2.0, 3.0, 4.0, 5.0], (2.0, 3.0, 4.0)),
    ([4.0, 1.0, 3.0, 2.0], (1.75, 2.5, 3.25)),
    ([1.0, 1.0, 1.0, 10.0], (1.0, 1.0, 3.25)),
])
def test_quartiles(values, expected):
    assert quartiles(values) == pytest.approx(expected)


def test_quartiles_of_nothing_raise():
    with pytest.raises(ValueError):
        quartiles([])


def test_bootstrap_of_identical_ratios_is_a_point():
    assert bootstrap_median_ci([1.01] * 12) == (1.01, 1.01)


def test_bootstrap_is_reproducible_per_seed():
    values = [random.Random(3).gauss(1.0, 0.05) for _ in range(20)]
    assert bootstrap_median_ci(values, seed=7) == bootstrap_median_ci(values, seed=7)


def test_bootstrap_interval_brackets_the_median_and_shrinks_with_more_pairs():
    rng = random.Random(1)
    few = [rng.gauss(1.0, 0.05) for _ in range(10)]
    many = [rng.gauss(1.0, 0.05) for _ in range(400)]
    for values in (few, many):
        lo, hi = bootstrap_median_ci(values)
        assert lo <= quartiles(values)[1] <= hi
    assert bootstrap_median_ci(many)[1] - bootstrap_median_ci(many)[0] < \
        bootstrap_median_ci(few)[1] - bootstrap_median_ci(few)[0]


def test_bootstrap_covers_the_true_median_about_as_often_as_it_claims():
    rng = random.Random(2)
    covered = 0
    for trial in range(100):
        lo, hi = bootstrap_median_ci([rng.gauss(1.0, 0.1) for _ in range(25)], resamples=500,
                                     seed=trial)
        covered += lo <= 1.0 <= hi
    assert 85 <= covered <= 100


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_bootstrap_refuses_a_meaningless_confidence(confidence):
    with pytest.raises(ValueError):
        bootstrap_median_ci([1.0, 2.0], confidence)


def test_summarize_and_spread():
    s = summarize([0.98, 1.0, 1.01, 1.02, 1.05])
    assert (s.n, s.median, s.q1, s.q3) == (5, 1.01, 1.0, 1.02)
    assert s.ci_lo <= s.median <= s.ci_hi and s.confidence == 0.95
    text = RatioSummary(30, 1.0123, 0.995, 1.03, 1.001, 1.021, 0.95).spread()
    assert text == "IQR 0.995-1.030; 95% CI 1.001-1.021"


def test_balanced_orders_of_two_is_abba():
    assert balanced_orders(2, 4) == [[0, 1], [1, 0], [0, 1], [1, 0]]


@pytest.mark.parametrize("n", [1, 3, 4, 5, 6])
def test_balanced_orders_balance_positions_and_predecessors(n):
    cycle = n if n % 2 == 0 else 2 * n
    orders = balanced_orders(n, cycle)
    assert all(sorted(o) == list(range(n)) for o in orders)
    for position in range(n):
        column = [o[position] for o in orders]
        assert all(column.count(u) == cycle // n for u in range(n))
    follows = [(o[i], o[i + 1]) for o in orders for i in range(n - 1)]
    pairs = {(a, b) for a in range(n) for b in range(n) if a != b}
    assert all(follows.count(p) == (cycle // n) for p in pairs)


def test_balanced_orders_repeat_their_cycle():
    assert balanced_orders(4, 9)[8] == balanced_orders(4, 9)[0]
    with pytest.raises(ValueError):
        balanced_orders(0, 1)
