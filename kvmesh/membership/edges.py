"""The seams between the SWIM engine and the world: clock, transport, change callback.

The engine owns no socket and no timer; whoever builds a `Swim` passes these
in. An asyncio event loop is a `Clock`, and so is `sim_network.SimClock`;
`udp.UdpTransport`, `seal.SealedTransport` and
`sim_network.SimEndpoint` are `GossipTransport`s.

Threading: every timer callback and every `receive` call must come on the
clock's thread (the peer's event loop), and nothing in the engine is
thread-safe. None of these may block.
"""

from __future__ import annotations

from typing import Callable, Protocol

from kvmesh.types import PeerId

ChangeFn = Callable[[set[PeerId], set[PeerId]], None]
"""on_change(joined, left): once per batch of membership changes; must not block.

The sets are handed over: the engine keeps no reference to them.
"""


class Timer(Protocol):
    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran or was cancelled."""


class Clock(Protocol):
    def time(self) -> float:
        """Monotonic seconds."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run `callback` once on the clock's thread after `delay` seconds."""


class GossipTransport(Protocol):
    def send(self, addr: str, data: bytes) -> None:
        """Send one datagram to "host:port". Never blocks; may drop silently; `data` is not kept."""

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        """Call `receive(data, src_addr)` for each datagram from now on (None: stop)."""
