"""Outgoing connections to other peers, one per remote peer, made on demand.

The transport for each pair is chosen here: with `auto`, peers on the same
host copy from each other's shared pool and everyone else speaks TCP; `tcp`
and `ucx` force a byte stream; `shm` is `auto` that insists on shared memory
where the host matches. Dialing is bounded by the timeout and deduplicated,
so concurrent callers share one attempt. A connection that its server closed
(idle, say), or that went unused long enough for that to be near, is simply
dialed again on the next request. Every failure to reach or talk to
a peer comes out as a `TransferError` (or another `KvmeshError`).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from kvmesh.config import KvmeshConfig
from kvmesh.errors import TransferError
from kvmesh.peers.network import Network
from kvmesh.transfer import frames as f
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.shm import SharedPoolReader
from kvmesh.transfer.streams import Stream
from kvmesh.types import PeerAddress, PeerId


class ConnectionPool:
    def __init__(self, config: KvmeshConfig, namespace: bytes, hello: Callable[[], f.Hello],
                 network: Network,
                 on_remote: Callable[[PeerId, int], None] = lambda peer, control_port: None) -> None:
        self._on_remote = on_remote  # told each remote's control port on connect
        self._network = network
        self._config = config
        self._namespace = namespace
        self._hello = hello
        self._clients: dict[PeerId, PeerClient] = {}
        self._dialing: dict[PeerId, asyncio.Future] = {}
        self._shm = (SharedPoolReader(verify_checksum=config.transfer.shm_verify == "checksum")
                     if config.transfer.transport in ("auto", "shm") else None)

    def transports(self) -> dict[PeerId, str]:
        return {peer: c.transport for peer, c in self._clients.items() if not c.closed}

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
        hello = self._hello()
        try:
            if self._config.transfer.transport == "ucx":
                stream = await self._dial_ucx(PeerAddress.parse(peer), timeout)
            else:
                stream = await self._network.dial(peer, timeout)
            client = await PeerClient.open(stream, hello, self._namespace, self._config.mesh.secret,
                                           timeout, self._shm, self._config.transfer.max_inflight)
        except (asyncio.TimeoutError, OSError, ValueError) as exc:
            raise TransferError(f"cannot reach {peer}: {exc or type(exc).__name__}") from None
        self._on_remote(peer, client.remote.control_port)
        old = self._clients.get(peer)
        self._clients[peer] = client
        if old is not None:
            old.close()
        return client

    async def _dial_ucx(self, address: PeerAddress, timeout: float) -> Stream:
        """UCX needs the remote's UCX port, which its TCP handshake tells us."""
        from kvmesh.transfer.ucx import UcxStream  # noqa: PLC0415 - optional extra

        probe = await self._network.dial(address.peer_id, timeout)
        info = await PeerClient.open(probe, self._hello(), self._namespace, self._config.mesh.secret,
                                     timeout, None, 1)
        await info.aclose()
        if not info.remote.ucx_port:
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
        if self._shm is not None:
            self._shm.close()

