"""Timing several cases against each other on a noisy machine."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable


def interleaved_medians(fns: list[Callable[[], None]], reps: int) -> list[float]:
    """Median seconds of each fn over `reps` rounds, after one warm-up call
    each. Each round runs every fn once, in a fresh (seeded) random order:
    load from other processes hits every case alike, and so does the place
    in the round. In a fixed order the case right after
    the baselines ran up to 25% slower here, whatever it was."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    order, rng = list(range(len(fns))), random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]
