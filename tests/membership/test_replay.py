"""The replay guard's bookkeeping, from tables: times in microseconds, no clock."""

import pytest

from kvmesh.membership.replay import US, ReplayGuard, Verdict

F, S, R = Verdict.FRESH, Verdict.STALE, Verdict.REPLAYED
T0 = 1_000 * US


@pytest.mark.parametrize("steps", [
    # (stamp offset s, nonce, now offset s, verdict); window 10 s, room for 3 nonces
    [(0, b"a", 0, F), (0, b"a", 1, R), (0, b"a", 9.9, R)],
    [(0, b"a", 10, F), (-10.001, b"b", 0, S), (10.001, b"c", 0, S)],  # window both ways
    [(-0.5, b"a", 0, S)],  # stamped before the guard started
    [(1, b"a", 1, F), (2, b"b", 2, F), (3, b"c", 3, F),
     (4, b"d", 4, F),  # full: "a" forgotten, horizon at 1 s
     (1, b"a", 5, S), (1, b"x", 5, S),  # at or before the horizon: refused, forgotten or not
     (1.5, b"y", 5, S),  # "b" forgotten to make room, horizon at 2 s: stale too
     (5, b"e", 5, F)],
    [(1, b"a", 1, F), (5, b"b", 12, F),  # "a" expired at 12 s
     (1, b"a", 5, S)],  # the clock stepped back: still refused
])
def test_verdicts(steps):
    guard = ReplayGuard(window_s=10.0, max_nonces=3, now_us=T0)
    for stamp, nonce, now, verdict in steps:
        assert guard.check(T0 + int(stamp * US), nonce, T0 + int(now * US)) is verdict, \
            (stamp, nonce, now)
        assert len(guard) <= 3


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        ReplayGuard(window_s=0, max_nonces=3, now_us=T0)
    with pytest.raises(ValueError):
        ReplayGuard(window_s=1, max_nonces=0, now_us=T0)
