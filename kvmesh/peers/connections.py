"""Outgoing connections to other peers, one per remote peer, made on demand.

The transport for each pair is chosen here: with `auto`, a peer on the same
host that hands us its pool through its pool door (`transfer.pool_door`) is
pulled from through shared memory, everyone else over TCP; `tcp` and `ucx`
force a byte stream; `shm` is `auto` that warns when a same-host holder's
door does not open. Dialing is bounded by the timeout and deduplicated, so
concurrent callers share one attempt. A connection that its server closed
(idle, say), or that went unused long enough for that to be near, is simply
dialed again on the next request. Every failure to reach or talk to a peer
comes out as a `TransferError` (or another `KvmeshError`).

The pool remembers the HELLO nonce of each connection it opened, so the
peer can vouch for them when their servers ask (`opened`): that is how a
server knows a connection claiming our peer id is really ours.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from kvmesh.config import KvmeshConfig
from kvmesh.errors import TransferError
from kvmesh.peers.network import Network
from kvmesh.transfer import frames as f
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.pool_door import door_path, knock
from kvmesh.transfer.shm import PoolMapping, SharedCopier
from kvmesh.transfer.streams import Stream
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)


class ConnectionPool:
    def __init__(self, config: KvmeshConfig, namespace: bytes, hello: Callable[[], f.Hello],
                 info: Callable[[], f.Info], network: Network, host_id: str,
                 on_remote: Callable[[PeerId, int], None] = lambda peer, control_port: None) -> None:
        self._on_remote = on_remote  # told each remote's control port on connect
        self._network = network
        self._config = config
        self._namespace = namespace
        self._hello = hello
        self._info = info
        self._host_id = host_id
        self._clients: dict[PeerId, PeerClient] = {}
        self._dialing: dict[PeerId, asyncio.Future] = {}
        self._nonces: dict[bytes, PeerId] = {}  # HELLO nonce -> peer, of connections we opened
        self._copier = (SharedCopier(verify_checksum=config.transfer.shm_verify == "checksum")
                        if config.transfer.transport in ("auto", "shm") else None)

    def transports(self) -> dict[PeerId, str]:
        return {peer: c.transport for peer, c in self._clients.items() if not c.closed}

    def opened(self, peer: PeerId, nonce: bytes) -> bool:
        """Whether we opened a connection to `peer` whose HELLO had `nonce`."""
        return self._nonces.get(nonce) == peer

    async def get(self, peer: PeerId) -> PeerClient:
        """The connection to `peer`, dialed now if there is none, or if the one
        there was closed or left idle so long that its server is about to
        close it (PeerClient.fresh): either way a normal reconnect, not a
        failure of the peer."""
        client = self._clients.get(peer)
        if client is not None:
            if client.fresh():
                return client
            client.close()  # idle or closed: nothing is in flight on it
        pending = self._dialing.get(peer)
        if pending is None:
            pending = asyncio.ensure_future(self._dial(peer))
            self._dialing[peer] = pending
            pending.add_done_callback(lambda _: self._dialing.pop(peer, None))
        return await asyncio.shield(pending)

    async def _dial(self, peer: PeerId) -> PeerClient:
        timeout = self._config.transfer.timeout_s
        try:
            if self._config.transfer.transport == "ucx":
                stream = await self._dial_ucx(PeerAddress.parse(peer), timeout)
            else:
                stream = await self._network.dial(peer, timeout)
            client = await self._open(stream, peer, timeout)
        except (asyncio.TimeoutError, OSError, ValueError) as exc:
            raise TransferError(f"cannot reach {peer}: {exc or type(exc).__name__}") from None
        await self._share_pool(client, peer, timeout)
        self._on_remote(peer, client.remote.control_port)
        self.drop(peer)
        self._clients[peer] = client
        return client

    async def _open(self, stream: Stream, peer: PeerId, timeout: float,
                    max_inflight: int | None = None) -> PeerClient:
        """Handshake as ourselves, the HELLO's nonce remembered while the connection lives."""
        hello = self._hello()
        self._nonces[hello.nonce] = peer
        try:
            client = await PeerClient.open(stream, hello, self._info(), self._namespace,
                                           self._config.mesh.secret, timeout,
                                           max_inflight or self._config.transfer.max_inflight,
                                           dialed=peer)
        except BaseException:
            self._nonces.pop(hello.nonce, None)
            raise
        client.on_close(lambda: self._nonces.pop(hello.nonce, None))
        return client

    async def _share_pool(self, client: PeerClient, peer: PeerId, timeout: float) -> None:
        """Map a same-host holder's pool, which its door hands us, if it shares one."""
        remote = client.remote
        if self._copier is None or not remote.pool_token or remote.host_id != self._host_id:
            return
        try:
            mapping = await knock(door_path(self._config.run_dir, peer), remote.pool_token, timeout)
        except TransferError as exc:
            level = logging.WARNING if self._config.transfer.transport == "shm" else logging.INFO
            log.log(level, "pulling from %s over %s: its pool door did not open (%s)",
                    peer, client.transport, exc)
            return
        client.use_pool(PoolMapping(mapping), self._copier)

    async def _dial_ucx(self, address: PeerAddress, timeout: float) -> Stream:
        """UCX needs the remote's UCX port, which its TCP handshake tells us."""
        from kvmesh.transfer.ucx import UcxStream  # noqa: PLC0415 - optional extra

        probe = await self._network.dial(address.peer_id, timeout)
        info = await self._open(probe, address.peer_id, timeout, max_inflight=1)
        await info.aclose()
        if not 0 < info.remote.ucx_port < 65536:  # 0: none; anything else: not a port
            raise TransferError(f"{address.peer_id} has no UCX listener")
        try:
            return await asyncio.wait_for(UcxStream.connect(address.host, info.remote.ucx_port),
                                          timeout)
        except (asyncio.TimeoutError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - ucxx's own errors: a peer dying mid-connect
            raise TransferError(f"UCX connect to {address.peer_id}: {exc!r}") from None

    def drop(self, peer: PeerId) -> None:
        client = self._clients.pop(peer, None)
        if client is not None:
            client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._copier is not None:
            self._copier.close()

