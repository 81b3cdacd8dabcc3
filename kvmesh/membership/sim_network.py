"""An in-memory datagram network on a simulated clock, for many peers in one process.

`SimClock` is a discrete-event clock: `call_later` pushes onto a heap and
`run_until` pops events in (time, insertion) order, jumping over idle time,
so a simulated hour of a quiet mesh costs only its events. `SimNetwork`
hands out `SimEndpoint`s (each a `GossipTransport`) and delivers datagrams
after a random delay unless they are lost (random loss), blocked (partition)
or addressed to a killed endpoint. All randomness comes from seeded
`random.Random`s, and ties break by insertion order: a run is a pure
function of its seeds.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Callable, Iterable


class SimTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """A `Clock` whose time moves only in `run_until`/`run_for`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, Callable, tuple, SimTimer | None]] = []
        self._seq = 0

    def time(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> SimTimer:
        timer = SimTimer()
        self._push(self._now + max(0.0, delay), callback, (), timer)
        return timer

    def call_at(self, when: float, callback: Callable, *args) -> None:
        """Run callback(*args) at `when` (no handle: for the network's deliveries)."""
        self._push(max(when, self._now), callback, args, None)

    def _push(self, when: float, callback: Callable, args: tuple, timer: SimTimer | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, callback, args, timer))

    def run_until(self, end: float, stop: Callable[[], bool] | None = None,
                  check_every_s: float = 0.1) -> bool:
        """Run events due up to `end`; with `stop`, return True as soon as it holds.

        `stop` is evaluated at most once per `check_every_s` of simulated time.
        """
        heap, pop = self._heap, heapq.heappop
        next_check = self._now
        while heap and heap[0][0] <= end:
            when, _, callback, args, timer = pop(heap)
            self._now = when
            if timer is None:
                callback(*args)
            elif not timer.cancelled:
                timer.cancelled = True
                callback()
            if stop is not None and when >= next_check:
                if stop():
                    return True
                next_check = when + check_every_s
        self._now = max(self._now, end)
        return stop is not None and stop()

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self._now + seconds, stop)


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # random loss
    blocked: int = 0  # partitions and killed endpoints


class SimEndpoint:
    """One address on a `SimNetwork`; a `GossipTransport`."""

    __slots__ = ("addr", "_net", "receiver")

    def __init__(self, net: "SimNetwork", addr: str) -> None:
        self.addr = addr
        self._net = net
        self.receiver: Callable[[bytes, str], None] | None = None

    def send(self, addr: str, data: bytes) -> None:
        self._net._send(self.addr, addr, data)

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        self.receiver = receive


class SimNetwork:
    """Datagrams between endpoints with seeded loss, delay and partitions."""

    def __init__(self, clock: SimClock, seed: int = 0, loss: float = 0.0,
                 delay_s: tuple[float, float] = (0.0005, 0.002)) -> None:
        self.clock = clock
        self.loss = loss
        self.delay_s = delay_s
        self.stats = NetStats()
        self._rng = random.Random(seed)
        self._endpoints: dict[str, SimEndpoint] = {}
        self._down: set[str] = set()
        self._group: dict[str, int] = {}  # partitions: addr -> side; unlisted reach everyone

    def endpoint(self, addr: str) -> SimEndpoint:
        if addr in self._endpoints:
            raise ValueError(f"address {addr} is taken")
        self._endpoints[addr] = ep = SimEndpoint(self, addr)
        return ep

    def kill(self, addr: str) -> None:
        """Drop everything to and from `addr` (a crashed host)."""
        self._down.add(addr)

    def revive(self, addr: str) -> None:
        self._down.discard(addr)

    def partition(self, *sides: Iterable[str]) -> None:
        """Split the listed addresses into sides that cannot reach each other."""
        self._group = {addr: i for i, side in enumerate(sides) for addr in side}

    def heal(self) -> None:
        self._group = {}

    def _send(self, src: str, dst: str, data: bytes) -> None:
        self.stats.sent += 1
        if src in self._down or dst in self._down or not self._reachable(src, dst):
            self.stats.blocked += 1
            return
        if self.loss and self._rng.random() < self.loss:
            self.stats.lost += 1
            return
        lo, hi = self.delay_s
        self.clock.call_at(self.clock.time() + lo + (hi - lo) * self._rng.random(),
                           self._deliver, src, dst, data)

    def _reachable(self, src: str, dst: str) -> bool:
        if not self._group:
            return True
        a, b = self._group.get(src), self._group.get(dst)
        return a is None or b is None or a == b

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        ep = self._endpoints.get(dst)
        if ep is None or ep.receiver is None or dst in self._down:
            self.stats.blocked += 1
            return
        self.stats.delivered += 1
        ep.receiver(data, src)
