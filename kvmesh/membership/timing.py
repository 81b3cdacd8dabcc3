"""SWIM timing: every interval and limit as a pure function of cluster size.

Nothing here reads a clock or keeps state; the engine (`swim.py` and its
parts) asks these functions what to wait for, and the tests check them from
tables. The formulas follow hashicorp/memberlist (and its Lifeguard
extensions):

- suspicion timeout  = mult * max(1, log10(n)) * probe interval; a suspicion
  starts at `max_mult` times that and shrinks towards it as other members
  independently confirm it (Lifeguard);
- retransmit limit   = mult * ceil(log10(n + 1)) sends of each gossip item;
- local health       : a member that misses acks and nacks scales its own
  probe interval and timeout by (score + 1), so a slow member probes less
  eagerly instead of accusing healthy ones.

`n` always counts the live members this member knows, itself included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """Protocol knobs; the defaults are memberlist's LAN profile."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5  # direct ack wait; must be < probe_interval_s
    indirect_checks: int = 3  # members asked to ping a target that missed its ack
    suspicion_mult: int = 4
    suspicion_max_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3  # fanout of each gossip round
    gossip_to_dead_s: float = 30.0  # keep gossiping to the freshly dead so they can refute
    push_pull_interval_s: float = 30.0  # full state exchange with one random member
    reconnect_interval_s: float = 10.0  # mesh-wide, one state exchange per dead member (heals)
    dead_reap_s: float = 300.0  # forget dead and left members after this long
    join_timeout_s: float = 5.0
    awareness_max: int = 8
    broadcast_queue_max: int = 1024  # pending gossip items; the oldest is dropped when full
    leave_fanout: int = 8  # members told directly of a graceful leave

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("need 0 < probe_timeout_s < probe_interval_s")
        if self.suspicion_mult < 1 or self.suspicion_max_mult < 1 or self.retransmit_mult < 1:
            raise ValueError("multipliers must be at least 1")


def suspicion_timeout(mult: int, n: int, interval_s: float) -> float:
    """The shortest a suspicion may last: mult * max(1, log10(n)) * interval."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return mult * node_scale * interval_s


def suspicion_max_timeout(max_mult: int, min_timeout_s: float) -> float:
    """The longest a suspicion lasts when nobody confirms it."""
    return max_mult * min_timeout_s


def confirmations_wanted(mult: int, n: int) -> int:
    """Independent suspicions that shrink a timeout to its minimum (none in tiny clusters)."""
    k = mult - 2
    return 0 if n - 2 < k else k


def remaining_suspicion_time(confirmations: int, k: int, elapsed_s: float,
                             min_s: float, max_s: float) -> float:
    """Seconds left on a suspicion after `confirmations` of `k` wanted (may be <= 0).

    The total timeout falls from max_s towards min_s as log(c + 1) / log(k + 1).
    """
    if k <= 0:
        return min_s - elapsed_s
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    raw = max_s - frac * (max_s - min_s)
    timeout = max(min_s, math.floor(raw * 1000.0) / 1000.0)
    return timeout - elapsed_s


def retransmit_limit(mult: int, n: int) -> int:
    """How many times each member sends one gossip item."""
    return mult * math.ceil(math.log10(n + 1))


def scale_by_awareness(seconds: float, score: int) -> float:
    """A probe interval or timeout stretched by the local health score (0 = healthy)."""
    return seconds * (score + 1)


def push_pull_interval(base_s: float, n: int) -> float:
    """Full-state exchanges get rarer past 32 members (memberlist's pushPullScale)."""
    if n <= 32:
        return base_s
    return base_s * (math.ceil(math.log2(n) - math.log2(32)) + 1)


def gossip_fanout(configured: int, n: int) -> int:
    """Members gossiped to per round: the configured fanout, or everyone else if fewer."""
    return max(0, min(configured, n - 1))


def dissemination_rounds(fanout: int, n: int) -> float:
    """Expected push-gossip rounds for one item to reach all n members.

    Pittel's estimate for push epidemics, generalised to fanout f:
    log_{1+f}(n) + ln(n) / f.
    """
    if n <= 1 or fanout <= 0:
        return 0.0
    return math.log(n) / math.log(1 + fanout) + math.log(n) / fanout


def first_probe_periods(confidence: float) -> int:
    """Probe periods within which some member probes a given member, at this confidence.

    With n members each probing one random-order target per period, a given
    member escapes a period unprobed with probability (1 - 1/(n-1))^(n-1) <= 1/e.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    return max(1, math.ceil(-math.log(1.0 - confidence)))


def detection_bound_s(cfg: SwimConfig, n: int, confidence: float = 0.999) -> float:
    """Upper bound on the time until every live member marks a crashed one dead.

    First probe of the victim, the failed probe itself, the unconfirmed
    (longest) suspicion, then the dead notice's retransmissions.
    """
    probing = (first_probe_periods(confidence) + 1) * cfg.probe_interval_s
    min_s = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval_s)
    suspicion = suspicion_max_timeout(cfg.suspicion_max_mult, min_s)
    spread = retransmit_limit(cfg.retransmit_mult, n) * cfg.gossip_interval_s
    return probing + suspicion + spread
