"""Paired A/B statistics for benchmarks on a noisy machine. Pure: numbers in, numbers out.

Two arms run as many short pairs (or rounds, when an arm has several units,
e.g. engine processes). Within a pair the arms run back to back, so both see
nearly the same machine; the pair's ratio cancels whatever drifts slower than
a pair (other people's jobs, thermal state). The order inside a pair
alternates (AB, BA, AB, ...: ABBA; `balanced_orders` for more units), so a
cost that falls on whichever arm runs first or second cancels too. The summary is the median ratio, robust to
the odd pair hit by a burst of load, with its interquartile range (how much
pairs disagree) and a percentile-bootstrap confidence interval of the median
(how well the median is known).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


def abba_order(pairs: int, a: str = "on", b: str = "off") -> list[tuple[str, str]]:
    """The arm order of each pair: (a, b), (b, a), (a, b), ..."""
    return [(a, b) if i % 2 == 0 else (b, a) for i in range(pairs)]


def balanced_orders(n: int, rounds: int) -> list[list[int]]:
    """Orders of `n` units for `rounds` rounds, ABBA generalized (a Williams square).

    Over each full cycle (n rounds for even n, 2n for odd n) every unit runs in
    every position equally often and directly after every other unit equally
    often, so neither a position effect nor a carry-over from the unit before
    favours anyone. For n = 2 this is AB, BA, AB, ...
    """
    if n < 1:
        raise ValueError("no units to order")
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    cycle = [[(u + shift) % n for u in first] for shift in range(n)]
    if n % 2:
        cycle += [row[::-1] for row in cycle]
    return [cycle[r % len(cycle)] for r in range(rounds)]


@dataclass(frozen=True, slots=True)
class RatioSummary:
    n: int
    median: float
    q1: float  # interquartile range of the pair ratios: [q1, q3]
    q3: float
    ci_lo: float  # bootstrap interval of the median: [ci_lo, ci_hi]
    ci_hi: float
    confidence: float

    def spread(self) -> str:
        """e.g. 'IQR 0.995-1.030; 95% CI 1.001-1.021'."""
        return (f"IQR {self.q1:.3f}-{self.q3:.3f}; "
                f"{self.confidence:.0%} CI {self.ci_lo:.3f}-{self.ci_hi:.3f}")


def pair_ratios(a: list[float], b: list[float]) -> list[float]:
    """a[i] / b[i] for each pair."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values of one arm against {len(b)} of the other")
    if any(v <= 0 for v in b):
        raise ValueError("the denominator arm has a value <= 0")
    return [x / y for x, y in zip(a, b)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), interpolated between order statistics."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def bootstrap_median_ci(values: list[float], confidence: float = 0.95, resamples: int = 4000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median; the same seed gives the same interval."""
    if not values:
        raise ValueError("no values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not in (0, 1)")
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = medians[int(tail * (resamples - 1))]
    hi = medians[int(round((1 - tail) * (resamples - 1)))]
    return lo, hi


def summarize(ratios: list[float], confidence: float = 0.95, seed: int = 0) -> RatioSummary:
    q1, med, q3 = quartiles(ratios)
    lo, hi = bootstrap_median_ci(ratios, confidence, seed=seed)
    return RatioSummary(len(ratios), med, q1, q3, lo, hi, confidence)
