"""Which directory owner to ask about which key: as few owners as possible.

Every key's directory entry lives on each of its r ring owners (advertise and
withdraw go to all of them), so any one owner can answer for it. A lookup's
latency is the slowest of its parallel round trips, and on a busy host each
extra owner asked costs a process wake-up on both sides; so:

- keys this peer owns itself are answered from its own directory (no trip);
- the rest go, greedily, to the owner that covers the most keys still
  unplanned (set cover; ties go to the owner seen first, i.e. the primary).

With 8 peers and r=2 a 32-key lookup asks ~4.4 remote owners instead of ~6.9
(primary owners only). Pure function; tested from tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def plan_queries(owner_lists: Sequence[Sequence[str]], self_id: str) -> dict[str, list[int]]:
    """owner -> indices of the keys to ask it about; `self_id` for keys owned here.

    `owner_lists[i]` are key i's owners (ring order). Keys without owners are
    left out of the plan.
    """
    plan: dict[str, list[int]] = {}
    left: list[int] = []
    for i, owners in enumerate(owner_lists):
        if self_id in owners:
            plan.setdefault(self_id, []).append(i)
        elif owners:
            left.append(i)
    while left:
        counts = Counter(owner for i in left for owner in owner_lists[i])
        best = max(counts, key=counts.__getitem__)  # first of the most-covering owners
        plan[best] = [i for i in left if best in owner_lists[i]]
        left = [i for i in left if best not in owner_lists[i]]
    return plan
