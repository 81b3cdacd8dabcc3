"""Full state exchanges (SYNC): joins, anti-entropy, reconnects, and strangers.

Gossip is best effort; these exchanges repair what it loses. Each sends our
whole table (`Outbox.send_state`) and, for a SYNC, gets the other's back:

- `join`: asks JOIN_FANOUT of the given addresses per probe interval until
  one answers (its SYNC_REPLY carries our join's sequence number), then
  once more with a random member after JOIN_SETTLE_PERIODS;
- `sync_random` (push-pull): one random live member, every
  `push_pull_interval` with jitter;
- `reconnect`: reaps the long dead, and with probability dead / live (as
  Serf does) syncs with one dead member, which heals partitions; when alone,
  asks the join seeds again;
- `sync_stranger`: a datagram from a sender we never heard of.

Exchanges that remote input asks for are budgeted (`budget.ReplyBudget`):
a SYNC is answered only while its source's bucket
(`SYNC_REPLY_BURST_PER_SOURCE`, then `SYNC_REPLY_RATE_PER_SOURCE` a second)
and the bucket every source shares (`SYNC_REPLY_BURST`, `SYNC_REPLY_RATE`)
both have a token; a stranger's exchange spends from the shared one. What is
refused is counted (`stats.syncs_refused_source`, `syncs_refused_total`) and
repaired later: a joiner asks again each probe interval, push-pull and
reconnects carry on, and the SYNC's own entries were merged anyway. Our own
exchanges (joins, push-pull, reconnects) are not budgeted.

Owns the pending joins (and their retry timers), the seeds, the reply
budget, and when each stranger was last answered. Called by `Swim` (its lifecycle, ticks and SYNC
handlers) and from its own timers, on the clock's thread. `running()` says
whether the engine still runs: a join's settle timer is not cancelled on
stop, so its exchange checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

from kvmesh.membership.budget import Refusal, ReplyBudget
from kvmesh.membership.edges import Clock, Timer
from kvmesh.membership.members import MemberTable
from kvmesh.membership.outbox import Outbox
from kvmesh.membership.stats import SwimStats
from kvmesh.membership.timing import SwimConfig, push_pull_interval
from kvmesh.membership.wire import Kind, Message

MAX_SEEDS = 64
JOIN_FANOUT = 3  # addresses asked per join attempt
JOIN_SETTLE_PERIODS = 3  # a joiner's second state exchange, in probe intervals
STRANGER_SYNC_S = 5.0  # state exchanges with one unknown sender are at least this far apart
MAX_STRANGERS = 256
SYNC_REPLY_BURST_PER_SOURCE = 3  # a joiner's first attempts, a lost reply or two included
SYNC_REPLY_RATE_PER_SOURCE = 0.2  # a second: then one per STRANGER_SYNC_S
SYNC_REPLY_BURST = 64  # every source together: a crowd of joiners at once
SYNC_REPLY_RATE = 16.0  # a second, every source together
MAX_SYNC_SOURCES = 1024  # per-source buckets kept; a new source past that replaces the oldest


@dataclass(slots=True)
class _Join:
    seq: int
    addrs: list[str]
    deadline: float
    on_done: Callable[[bool], None] | None
    timer: Timer | None = None
    next: int = 0  # index into addrs of the next one to ask


class StateSync:
    def __init__(self, addr: str, table: MemberTable, outbox: Outbox, clock: Clock,
                 config: SwimConfig, rng: random.Random, stats: SwimStats,
                 next_seq: Callable[[], int], running: Callable[[], bool]) -> None:
        self._addr = addr  # our own gossip address, never asked
        self._table = table
        self._outbox = outbox
        self._clock = clock
        self._config = config
        self._rng = rng
        self._stats = stats
        self._next_seq = next_seq
        self._running = running
        self._joins: dict[int, _Join] = {}
        self._seeds: list[str] = []
        self._stranger_syncs: dict[str, float] = {}  # addr -> last exchange
        self._budget = ReplyBudget((SYNC_REPLY_BURST_PER_SOURCE, SYNC_REPLY_RATE_PER_SOURCE),
                                   (SYNC_REPLY_BURST, SYNC_REPLY_RATE), MAX_SYNC_SOURCES,
                                   clock.time())

    def join(self, addrs: Iterable[str], on_done: Callable[[bool], None] | None) -> None:
        """See `Swim.join`; the engine is already started."""
        addrs = list(dict.fromkeys(a for a in addrs if a != self._addr))
        self._seeds = list(dict.fromkeys(self._seeds + addrs))[-MAX_SEEDS:]
        if not addrs:
            if on_done is not None:
                on_done(True)
            return
        self._rng.shuffle(addrs)
        join = _Join(self._next_seq(), addrs, self._clock.time() + self._config.join_timeout_s,
                     on_done)
        self._joins[join.seq] = join
        self._join_attempt(join)

    def cancel_joins(self) -> None:
        """Stop retrying; every pending join reports on_done(False)."""
        joins, self._joins = list(self._joins.values()), {}
        for join in joins:
            join.timer.cancel()
            if join.on_done is not None:
                join.on_done(False)

    def pull_delay(self) -> float:
        """Seconds until the next push-pull: the interval for our size, with jitter."""
        interval = push_pull_interval(self._config.push_pull_interval_s, len(self._table.live) + 1)
        return interval * (0.5 + self._rng.random())

    def sync_random(self) -> None:
        for peer in self._table.sample_live(1):
            if self._running():
                self._outbox.send_state(self._table.known[peer].addr, Kind.SYNC, 0)

    def reconnect(self) -> None:
        """Forget the long dead; maybe exchange state with a dead member (heals partitions).

        With probability dead / live (as Serf does), so that the whole mesh
        tries each dead member about once per reconnect interval.
        """
        self._table.reap(self._clock.time() - self._config.dead_reap_s)
        dead = self._table.dead()
        if dead and self._rng.random() < len(dead) / max(1, len(self._table.live)):
            self._outbox.send_state(self._rng.choice(dead).addr, Kind.SYNC, 0)
        if not self._table.live and self._seeds:  # alone: try to rejoin through the seeds
            for addr in self._rng.sample(self._seeds, min(JOIN_FANOUT, len(self._seeds))):
                self._outbox.send_state(addr, Kind.SYNC, 0)

    def sync_stranger(self, src: str) -> None:
        """A member we never heard of knows us: swap state (at most once per STRANGER_SYNC_S)."""
        now = self._clock.time()
        if now - self._stranger_syncs.get(src, -STRANGER_SYNC_S) < STRANGER_SYNC_S:
            return
        if len(self._stranger_syncs) >= MAX_STRANGERS:
            self._stranger_syncs = {a: t for a, t in self._stranger_syncs.items()
                                    if now - t < STRANGER_SYNC_S}
            if len(self._stranger_syncs) >= MAX_STRANGERS:
                return  # a flood of strangers: push-pull will catch up
        if not self._budget.allow_total(now):
            self._stats.syncs_refused_total += 1
            return
        self._stranger_syncs[src] = now
        self._outbox.send_state(src, Kind.SYNC, 0)

    def on_sync(self, msg: Message, src: str) -> None:
        """Answer with our state, if the reply budget allows (see the module docstring)."""
        refusal = self._budget.allow(src, self._clock.time())
        if refusal is Refusal.SOURCE:
            self._stats.syncs_refused_source += 1
        elif refusal is Refusal.TOTAL:
            self._stats.syncs_refused_total += 1
        else:
            self._outbox.send_state(src, Kind.SYNC_REPLY, msg.seq)

    def on_sync_reply(self, msg: Message, src: str) -> None:
        join = self._joins.pop(msg.seq, None)
        if join is not None:
            join.timer.cancel()
            # Members that joined alongside us may be missing from that answer:
            # one more exchange with someone else once their gossip has settled.
            self._clock.call_later(JOIN_SETTLE_PERIODS * self._config.probe_interval_s,
                                   self.sync_random)
            if join.on_done is not None:
                join.on_done(True)

    def _join_attempt(self, join: _Join) -> None:
        if self._joins.get(join.seq) is not join:
            return
        if self._clock.time() >= join.deadline:
            del self._joins[join.seq]
            if join.on_done is not None:
                join.on_done(False)
            return
        # A few addresses per attempt, in turn: each answer is our whole state
        # from one member, and a DNS name may list hundreds.
        for _ in range(min(JOIN_FANOUT, len(join.addrs))):
            self._outbox.send_state(join.addrs[join.next % len(join.addrs)], Kind.SYNC, join.seq)
            join.next += 1
        join.timer = self._clock.call_later(self._config.probe_interval_s,
                                            lambda: self._join_attempt(join))
