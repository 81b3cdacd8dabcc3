"""A peer's way into the mesh: its listeners, SWIM membership and discovery.

The TCP listener (data path) and the UDP gossip socket share one port
number, so a member's gossip address is its peer id whenever the peer id's
host is an IP literal. With `KVMESH_PORT=0` a free TCP port is picked and the
pair is retried on another if its UDP twin is taken.

A peer bound to a wildcard (`0.0.0.0`, `::`) is known to the others by
`advertise_host` (a pod IP from the downward API), else by what this host's
name resolves to. Gossip and beacons are sealed (`membership.seal`): with
the mesh secret they are authenticated, and either way meshes of different
namespaces ignore each other.

Call everything on the peer's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Callable

from kvmesh.config import MeshConfig
from kvmesh.errors import ConfigError
from kvmesh.membership.discovery import MulticastBeacon, discover
from kvmesh.membership.seal import SealedTransport, beacon_sealer, gossip_sealer
from kvmesh.membership.swim import Swim
from kvmesh.membership.edges import ChangeFn
from kvmesh.membership.states import LIVE
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.udp import UdpTransport, format_addr
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
PORT_PAIR_ATTEMPTS = 16


def swim_config(mesh: MeshConfig) -> SwimConfig:
    """memberlist's LAN profile, scaled to the configured probe interval."""
    p = mesh.probe_interval_s
    return SwimConfig(probe_interval_s=p, probe_timeout_s=p / 2, gossip_interval_s=p / 5)


@dataclass
class Listeners:
    sock: socket.socket  # the TCP listener, non-blocking
    udp: UdpTransport
    peer_id: PeerId  # advertised host : port
    gossip_addr: str  # advertised IP literal : port, what others send datagrams to


async def open_listeners(mesh: MeshConfig, timeout_s: float) -> Listeners:
    """Bind TCP and UDP on one port number on `mesh.host`; raises OSError if impossible."""
    host = await advertised_host(mesh, timeout_s)
    ip = await _resolve_ip(host, timeout_s)
    for _ in range(PORT_PAIR_ATTEMPTS):
        sock = socket.create_server((mesh.host, mesh.port), reuse_port=False)
        port = sock.getsockname()[1]
        try:
            udp = await UdpTransport.open(mesh.host, port, timeout_s)
        except OSError:
            sock.close()
            if mesh.port:
                raise
            continue
        sock.setblocking(False)
        return Listeners(sock, udp, PeerAddress(host, port).peer_id, format_addr(ip, port))
    raise OSError(f"no port on {mesh.host} is free for both TCP and UDP")


async def advertised_host(mesh: MeshConfig, timeout_s: float) -> str:
    if mesh.advertise_host:
        return mesh.advertise_host
    if mesh.host not in WILDCARD_HOSTS:
        return mesh.host
    guess = await _resolve_ip(socket.gethostname(), timeout_s)
    if ipaddress.ip_address(guess).is_loopback:
        raise ConfigError(f"KVMESH_HOST={mesh.host} needs KVMESH_ADVERTISE_HOST: this host's "
                          f"name resolves to {guess}, which other hosts cannot reach")
    log.info("advertising %s (this host's name); set KVMESH_ADVERTISE_HOST to choose", guess)
    return guess


async def _resolve_ip(host: str, timeout_s: float) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
        host, None, type=socket.SOCK_DGRAM), timeout_s)
    return infos[0][4][0]


class MeshGossip:
    """SWIM over a sealed UDP socket, plus the multicast beacon when discovery uses one."""

    def __init__(self, listeners: Listeners, mesh: MeshConfig, namespace: bytes,
                 on_change: ChangeFn, timeout_s: float) -> None:
        self._mesh = mesh
        self._namespace = namespace
        self._timeout_s = timeout_s
        self._listeners = listeners
        self.transport = SealedTransport(listeners.udp, gossip_sealer(mesh.secret, namespace))
        self.membership = Swim(listeners.peer_id, listeners.gossip_addr, self.transport,
                               asyncio.get_running_loop(), on_change, vnodes=mesh.vnodes,
                               config=swim_config(mesh))
        self.beacon: MulticastBeacon | None = None

    async def join(self) -> bool:
        """Discover first members and join through them, waiting at most the timeout.

        False: no seed answered in time. Not fatal: SWIM keeps asking the
        seeds for `join_timeout_s`, then again whenever it finds itself
        alone, and anyone who reaches us later brings us in.
        """
        self.membership.start()
        addr = self._listeners.gossip_addr
        found = await discover(self._mesh, addr, self._timeout_s, interface=self._interface(),
                               sealer=beacon_sealer(self._mesh.secret, self._namespace))
        self.beacon = found.beacon
        if self.beacon is not None:
            self.beacon.on_heard = lambda a: self.membership.join([a])
        done = asyncio.get_running_loop().create_future()
        settle: Callable[[bool], None] = lambda ok: done.done() or done.set_result(ok)
        self.membership.join(found.seeds, settle)
        try:
            ok = await asyncio.wait_for(asyncio.shield(done), self._timeout_s)
        except asyncio.TimeoutError:
            ok = False
        if not ok:
            log.warning("no seed of %s answered within %gs; joining in the background",
                        found.seeds, self._timeout_s)
        return ok

    def learn(self, peer_id: str) -> None:
        """A peer reached us directly (TCP): if we never heard of it or hold it dead
        or gone, exchange state with it now rather than wait for gossip."""
        if self.membership.state_of(peer_id) not in LIVE and _is_ip_addr(peer_id):
            self.membership.join([peer_id])

    async def close(self, graceful: bool) -> None:
        """Leave (graceful: tell others now, else they find out by probing) and close."""
        if graceful:
            self.membership.leave()
        else:
            self.membership.stop()
        if self.beacon is not None:
            await self.beacon.stop(self._timeout_s)
        await asyncio.sleep(0)  # let the leave notices reach the socket
        self._listeners.udp.close()

    def _interface(self) -> str:
        """The IPv4 address to send and join multicast on (our own, when we know it)."""
        for host in (self._mesh.host, self._listeners.gossip_addr.rpartition(":")[0]):
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_unspecified:
                return str(ip)
        return "0.0.0.0"


def _is_ip_addr(peer_id: str) -> bool:
    try:
        ipaddress.ip_address(PeerAddress.parse(peer_id).host)
    except ValueError:
        return False
    return True
