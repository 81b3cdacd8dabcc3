"""A `GossipTransport` over one asyncio UDP socket.

`send` never blocks and never raises: datagrams to names that are not IP
literals (resolve them first, in `discovery`), larger than
`MAX_SEND_BYTES`, or sent while the kernel buffer is full (asyncio paused
writing) are dropped and counted, as gossip may be. Received datagrams go to
the receiver callback with the source as "host:port" ("[v6]:port" for IPv6);
an exception from the receiver is logged and counted, never allowed to close
the socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable

from kvmesh.types import PeerAddress

log = logging.getLogger(__name__)

MAX_SEND_BYTES = 65507
MAX_CACHED_ADDRS = 4096

Receiver = Callable[[bytes, str], None]


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class UdpStats:
    sent: int = 0
    received: int = 0
    dropped: int = 0  # bad address, too large, paused or closed
    errors: int = 0  # socket errors reported by the kernel (e.g. ICMP unreachable)
    receiver_errors: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "UdpTransport") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.stats.errors += 1

    def pause_writing(self) -> None:
        self.owner._paused = True

    def resume_writing(self) -> None:
        self.owner._paused = False


class UdpTransport:
    """Open with `await UdpTransport.open(host, port)`; close with `close()`."""

    def __init__(self) -> None:
        self.stats = UdpStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: Receiver | None = None
        self._paused = False
        self._targets: dict[str, tuple[str, int]] = {}
        self.addr = ""

    @classmethod
    async def open(cls, host: str, port: int = 0, timeout_s: float = 2.0) -> "UdpTransport":
        """Bind host:port (0: any free port); `addr` is then the bound "host:port"."""
        self = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await asyncio.wait_for(
            loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port)),
            timeout_s)
        self._transport = transport
        bound = transport.get_extra_info("sockname")
        self.addr = format_addr(bound[0], bound[1])
        return self

    def send(self, addr: str, data: bytes) -> None:
        target = self._target(addr)
        if (target is None or len(data) > MAX_SEND_BYTES or self._paused
                or self._transport is None or self._transport.is_closing()):
            self.stats.dropped += 1
            return
        self._transport.sendto(data, target)
        self.stats.sent += 1

    def set_receiver(self, receive: Receiver | None) -> None:
        self._receiver = receive

    def close(self) -> None:
        """Close the socket; datagrams already handed to asyncio are flushed in the background."""
        if self._transport is not None:
            self._transport.close()

    def _target(self, addr: str) -> tuple[str, int] | None:
        target = self._targets.get(addr)
        if target is None:
            try:
                parsed = PeerAddress.parse(addr)
                ipaddress.ip_address(parsed.host)
            except ValueError:
                return None
            if len(self._targets) >= MAX_CACHED_ADDRS:
                self._targets.clear()
            target = self._targets[addr] = (parsed.host, parsed.port)
        return target

    def _received(self, data: bytes, addr: tuple) -> None:
        self.stats.received += 1
        if self._receiver is None:
            return
        try:
            self._receiver(data, format_addr(addr[0], addr[1]))
        except Exception:  # noqa: BLE001 - a receiver bug must not close the socket
            self.stats.receiver_errors += 1
            log.exception("gossip receiver failed")
