"""Drift of one run's greedy outputs from another's, from tables."""

from __future__ import annotations

import pytest

from kvmesh.bench.drift_stats import drift, first_divergence


def out(tokens, logprobs=None):
    return {"tokens": list(tokens), "logprobs": list(logprobs or [-1.0] * len(tokens))}


@pytest.mark.parametrize("got, want, n", [
    ([1, 2, 3], [1, 2, 3], 3),
    ([1, 2, 3], [1, 9, 3], 1),  # the later match after a divergence does not count
    ([7], [1], 0),
    ([1, 2], [1, 2, 3], 2),
    ([], [], 0),
])
def test_first_divergence(got, want, n):
    assert first_divergence(out(got), out(want)) == n


def test_identical_runs_have_no_drift():
    runs = [out([1, 2, 3], [-0.5, -1.0, -2.0]), out([4, 5, 6], [-0.1, -0.2, -0.3])]
    d = drift(runs, runs)
    assert (d.prompts, d.identical, d.mean_matching, d.tokens) == (2, 2, 3.0, 3)
    assert d.max_dlogprob == d.mean_dlogprob == 0.0 and d.positions == 6


def test_logprobs_compare_only_before_the_first_divergence():
    want = [out([1, 2, 3, 4], [-1.0, -1.0, -1.0, -1.0]), out([5, 6, 7, 8], [-1.0] * 4)]
    got = [out([1, 2, 9, 4], [-1.5, -1.25, -9.0, -9.0]),  # diverges at 2: 0.5, 0.25 count
           out([5, 6, 7, 8], [-1.0, -1.0, -1.0, -1.125])]  # identical tokens: 0.125 at the end
    d = drift(got, want)
    assert d.identical == 1
    assert d.mean_matching == (2 + 4) / 2
    assert d.positions == 6
    assert d.max_dlogprob == 0.5
    assert d.mean_dlogprob == pytest.approx((0.5 + 0.25 + 0.125) / 6)


def test_a_shorter_output_is_not_identical():
    d = drift([out([1, 2])], [out([1, 2, 3])])
    assert d.identical == 0 and d.mean_matching == 2


def test_outputs_must_pair_up():
    with pytest.raises(ValueError):
        drift([out([1])], [])
