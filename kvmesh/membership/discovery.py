"""Finding first members to join: static seeds, DNS records or LAN multicast beacons.

`discover(config, self_addr)` turns `MeshConfig.discovery` and `.seeds` into
gossip addresses ("ip:port") for `Swim.join`:

- static:    each seeds entry, its host resolved to one address;
- dns:       each seeds entry is a name and port (a Kubernetes headless
             service, `kvmesh-headless.ns.svc:7400`) resolved to all of its
             A and AAAA records, each with that port;
- multicast: a `MulticastBeacon` announces `self_addr` on a LAN group
             (`multicast_group`, else the first seeds entry as group:port,
             else `DEFAULT_GROUP`) with TTL 1
             and listens for `listen_s`; it keeps running (returned to the
             caller) so peers that start later find this one, and its
             `on_heard` hook reports each new address.

Beacons are sealed by a `seal.Sealer` when one is given (the peer
always gives one: with a mesh secret it authenticates them), each announce in
a fresh envelope, so a recorded beacon replayed later is refused like any
replayed gossip (`seal`'s replay window). Every await is
bounded by `timeout_s`. A name that does not resolve is
skipped and logged, not fatal: the peer starts alone and is found later.
Our own address is never returned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import msgpack

from kvmesh.config import MeshConfig
from kvmesh.membership.seal import Sealer
from kvmesh.membership.udp import format_addr
from kvmesh.types import PeerAddress

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[list[str]]]  # (name, port) -> IP literals

DEFAULT_GROUP = PeerAddress("239.255.74.74", 7474)
BEACON_MAGIC = "kvmesh-beacon"
BEACON_VERSION = 1
MAX_BEACON_BYTES = 512
MAX_HEARD = 4096


async def system_resolve(name: str, port: int) -> list[str]:
    """All addresses of `name` (A and AAAA) from the system resolver, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_DGRAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def resolve_seeds(seeds: Sequence[PeerAddress], timeout_s: float, all_records: bool,
                        resolve: Resolve = system_resolve) -> list[str]:
    """Each seed as "ip:port": IP literals as they are, names resolved (one or all records)."""

    async def one(seed: PeerAddress) -> list[str]:
        try:
            ipaddress.ip_address(seed.host)
            return [format_addr(seed.host, seed.port)]
        except ValueError:
            pass
        try:
            ips = await asyncio.wait_for(resolve(seed.host, seed.port), timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("seed %s:%d did not resolve: %s", seed.host, seed.port, exc or "timeout")
            return []
        ips = ips if all_records else ips[:1]
        return [format_addr(ip, seed.port) for ip in ips]

    found = await asyncio.gather(*(one(seed) for seed in seeds))
    return list(dict.fromkeys(addr for addrs in found for addr in addrs))


@dataclass
class Discovered:
    seeds: list[str]
    beacon: "MulticastBeacon | None" = None  # running; the caller stops it


async def discover(config: MeshConfig, self_addr: str, timeout_s: float = 2.0, *,
                   resolve: Resolve = system_resolve, listen_s: float = 1.0,
                   cluster: str = "", interface: str = "0.0.0.0",
                   sealer: Sealer | None = None) -> Discovered:
    """Gossip addresses to join, by `config.discovery`; never includes `self_addr`."""
    if config.discovery == "multicast":
        group = config.multicast_group or (config.seeds[0] if config.seeds else DEFAULT_GROUP)
        beacon = MulticastBeacon(self_addr, group.host, group.port, cluster=cluster,
                                 interface=interface, sealer=sealer)
        await beacon.start(timeout_s)
        await asyncio.sleep(min(listen_s, timeout_s))
        return Discovered(beacon.heard(), beacon)
    addrs = await resolve_seeds(config.seeds, timeout_s, all_records=config.discovery == "dns",
                                resolve=resolve)
    return Discovered([a for a in addrs if a != self_addr])


class _BeaconProtocol(asyncio.DatagramProtocol):
    def __init__(self, beacon: "MulticastBeacon") -> None:
        self.beacon = beacon

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.beacon._received(data)


class MulticastBeacon:
    """Announce one gossip address on a multicast group and collect the others'.

    Beacons of other clusters (a different `cluster` string) and malformed
    datagrams are ignored; with a `sealer`, so are beacons whose seal does not
    verify or that replay an earlier one (counted in `rejected`; the sealer's
    `stats` say which). `on_heard(addr)` runs on the event loop
    once per newly heard address and must not block.
    """

    def __init__(self, announce: str, group: str = DEFAULT_GROUP.host,
                 port: int = DEFAULT_GROUP.port, cluster: str = "", interval_s: float = 2.0,
                 interface: str = "0.0.0.0",
                 on_heard: Callable[[str], None] | None = None,
                 sealer: Sealer | None = None) -> None:
        self.announce = announce
        self.group, self.port, self.cluster = group, port, cluster
        self.interval_s = interval_s
        self.interface = interface
        self.on_heard = on_heard
        self.malformed = 0
        self.rejected = 0
        self._sealer = sealer
        self._heard: dict[str, None] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task | None = None
        self._payload = msgpack.packb((BEACON_VERSION, BEACON_MAGIC, cluster, announce))

    def heard(self) -> list[str]:
        """Addresses heard so far, first heard first."""
        return list(self._heard)

    async def start(self, timeout_s: float = 2.0) -> None:
        """Join the group and start announcing; raises OSError if the host has no multicast."""
        sock = self._socket()
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await asyncio.wait_for(
                loop.create_datagram_endpoint(lambda: _BeaconProtocol(self), sock=sock), timeout_s)
        except BaseException:
            sock.close()
            raise
        self._task = loop.create_task(self._announce())

    async def stop(self, timeout_s: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)
        if self._transport is not None:
            self._transport.close()

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", self.port))
            iface = socket.inet_aton(self.interface)
            mreq = struct.pack("4s4s", socket.inet_aton(self.group), iface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # this LAN only
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if self.interface != "0.0.0.0":
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _announce(self) -> None:
        while True:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.sendto(self._datagram(), (self.group, self.port))
            await asyncio.sleep(self.interval_s)

    def _datagram(self) -> bytes:
        """One announce: sealed anew each time (a fresh timestamp and nonce)."""
        return self._sealer.seal(self._payload) if self._sealer is not None else self._payload

    def _received(self, data: bytes) -> None:
        if self._sealer is not None:
            data = self._sealer.unseal(data)
            if data is None:
                self.rejected += 1
                return
        try:
            if len(data) > MAX_BEACON_BYTES:
                raise ValueError("beacon too large")
            version, magic, cluster, addr = msgpack.unpackb(
                data, use_list=False, raw=False, max_str_len=255, max_bin_len=0,
                max_array_len=8, max_map_len=0, max_ext_len=0)[:4]
            if type(version) is not int or magic != BEACON_MAGIC or type(addr) is not str:
                raise ValueError("not a kvmesh beacon")
            PeerAddress.parse(addr)
        except Exception:  # noqa: BLE001 - anything on a LAN port may arrive here
            self.malformed += 1
            return
        if cluster != self.cluster or addr == self.announce or addr in self._heard:
            return
        if len(self._heard) < MAX_HEARD:
            self._heard[addr] = None
            if self.on_heard is not None:
                self.on_heard(addr)
