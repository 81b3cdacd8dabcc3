import math

import pytest

from kvmesh.membership.timing import (SwimConfig, confirmations_wanted, detection_bound_s,
                                     dissemination_rounds, first_probe_periods, gossip_fanout,
                                     push_pull_interval, remaining_suspicion_time,
                                     retransmit_limit, scale_by_awareness, suspicion_max_timeout,
                                     suspicion_timeout)


@pytest.mark.parametrize("n, scale", [
    # memberlist's TestSuspicionTimeout table: timeout / mult at a 1 s interval.
    (0, 1.0), (1, 1.0), (5, 1.0), (10, 1.0), (50, 1.69897), (100, 2.0), (500, 2.69897),
    (1000, 3.0),
])
def test_suspicion_timeout_scales_with_log10_n(n, scale):
    assert suspicion_timeout(3, n, 1.0) / 3 == pytest.approx(scale, abs=1e-5)
    assert suspicion_timeout(4, n, 0.5) == pytest.approx(2.0 * scale, abs=1e-5)


def test_suspicion_max_timeout():
    assert suspicion_max_timeout(6, 2.5) == 15.0


@pytest.mark.parametrize("confirmations, k, elapsed, expected", [
    # memberlist's TestSuspicion_remainingSuspicionTime (min 2 s, max 30 s).
    (0, 3, 0.0, 30.0), (1, 3, 2.0, 14.0), (2, 3, 3.0, 4.81), (3, 3, 4.0, -2.0),
    (4, 3, 5.0, -3.0), (5, 3, 10.0, -8.0),
    (0, 0, 1.5, 0.5),  # nobody to confirm: the minimum from the start
])
def test_remaining_suspicion_time(confirmations, k, elapsed, expected):
    assert remaining_suspicion_time(confirmations, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize("mult, n, k", [(4, 1, 0), (4, 3, 0), (4, 4, 2), (4, 1000, 2), (5, 4, 0),
                                        (5, 5, 3), (2, 50, 0)])
def test_confirmations_wanted(mult, n, k):
    assert confirmations_wanted(mult, n) == k


@pytest.mark.parametrize("mult, n, limit", [
    (3, 0, 0), (3, 1, 3), (3, 99, 6),  # memberlist's TestRetransmitLimit
    (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (4, 999, 12), (4, 1000, 16),
])
def test_retransmit_limit(mult, n, limit):
    assert retransmit_limit(mult, n) == limit


@pytest.mark.parametrize("seconds, score, scaled", [(1.0, 0, 1.0), (0.5, 3, 2.0), (0.2, 7, 1.6)])
def test_scale_by_awareness(seconds, score, scaled):
    assert scale_by_awareness(seconds, score) == pytest.approx(scaled)


@pytest.mark.parametrize("n, mult", [(1, 1), (32, 1), (33, 2), (64, 2), (65, 3), (128, 3),
                                     (129, 4), (1000, 6)])
def test_push_pull_interval_grows_past_32_members(n, mult):
    assert push_pull_interval(30.0, n) == 30.0 * mult


@pytest.mark.parametrize("configured, n, fanout", [(3, 0, 0), (3, 1, 0), (3, 2, 1), (3, 4, 3),
                                                   (3, 1000, 3)])
def test_gossip_fanout(configured, n, fanout):
    assert gossip_fanout(configured, n) == fanout


@pytest.mark.parametrize("fanout, n, rounds", [(3, 1, 0.0), (0, 10, 0.0), (1, 2, 1.693),
                                               (3, 1000, 7.286), (3, 200, 5.588)])
def test_dissemination_rounds(fanout, n, rounds):
    assert dissemination_rounds(fanout, n) == pytest.approx(rounds, abs=1e-3)


@pytest.mark.parametrize("confidence, periods", [(0.5, 1), (0.9, 3), (0.99, 5), (0.999, 7)])
def test_first_probe_periods(confidence, periods):
    assert first_probe_periods(confidence) == periods
    assert math.exp(-periods) <= 1 - confidence


def test_first_probe_periods_rejects_certainty():
    with pytest.raises(ValueError):
        first_probe_periods(1.0)


@pytest.mark.parametrize("n, bound", [
    # (7 + 1) periods + 6 * 4 * log10(n) s + retransmit_limit(4, n) * 0.2 s
    (2, 8.0 + 24.0 + 0.8), (50, 8.0 + 24 * 1.69897 + 1.6), (1000, 8.0 + 72.0 + 3.2),
])
def test_detection_bound_for_the_default_config(n, bound):
    assert detection_bound_s(SwimConfig(), n) == pytest.approx(bound, abs=1e-3)


@pytest.mark.parametrize("kwargs", [dict(probe_timeout_s=1.0), dict(probe_timeout_s=0.0),
                                    dict(suspicion_mult=0), dict(retransmit_mult=0)])
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        SwimConfig(**kwargs)
