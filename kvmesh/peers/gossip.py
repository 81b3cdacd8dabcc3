"""A peer's way into the mesh: SWIM membership over its endpoint's gossip
socket, and discovery of first members.

Gossip and beacons are sealed (`membership.seal`): with the mesh secret they
are authenticated, and either way meshes of different namespaces ignore each
other. The endpoint (`kvmesh.peers.network`) owns the socket; this owns the
membership engine and the multicast beacon.

Call everything on the peer's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Callable

from kvmesh.config import MeshConfig
from kvmesh.membership.discovery import MulticastBeacon, discover
from kvmesh.membership.edges import ChangeFn
from kvmesh.membership.seal import SealedTransport, beacon_sealer, gossip_sealer
from kvmesh.membership.states import LIVE
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig
from kvmesh.peers.network import Endpoint
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)


def swim_config(mesh: MeshConfig) -> SwimConfig:
    """memberlist's LAN profile, scaled to the configured probe interval."""
    p = mesh.probe_interval_s
    return SwimConfig(probe_interval_s=p, probe_timeout_s=p / 2, gossip_interval_s=p / 5)


class MeshGossip:
    """SWIM over a sealed UDP socket, plus the multicast beacon when discovery uses one."""

    def __init__(self, endpoint: Endpoint, mesh: MeshConfig, namespace: bytes,
                 on_change: ChangeFn, timeout_s: float) -> None:
        self._mesh = mesh
        self._namespace = namespace
        self._timeout_s = timeout_s
        self._endpoint = endpoint
        self.transport = SealedTransport(endpoint.gossip, gossip_sealer(mesh.secret, namespace))
        self.membership = Swim(endpoint.peer_id, endpoint.gossip_addr, self.transport,
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
        addr = self._endpoint.gossip_addr
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

    def learn(self, peer_id: PeerId) -> None:
        """A peer reached us directly (TCP): if we never heard of it or hold it dead
        or gone, exchange state with it now rather than wait for gossip."""
        if self.membership.state_of(peer_id) not in LIVE and _is_ip_addr(peer_id):
            self.membership.join([peer_id])

    async def close(self, graceful: bool) -> None:
        """Leave (graceful: tell others now, else they find out by probing); the
        endpoint's owner closes the socket after this returns."""
        if graceful:
            self.membership.leave()
        else:
            self.membership.stop()
        if self.beacon is not None:
            await self.beacon.stop(self._timeout_s)
        await asyncio.sleep(0)  # let the leave notices reach the socket

    def _interface(self) -> str:
        """The IPv4 address to send and join multicast on (our own, when we know it)."""
        for host in (self._mesh.host, self._endpoint.gossip_addr.rpartition(":")[0]):
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_unspecified:
                return str(ip)
        return "0.0.0.0"


def _is_ip_addr(peer_id: PeerId) -> bool:
    try:
        ipaddress.ip_address(PeerAddress.parse(peer_id).host)
    except ValueError:
        return False
    return True
