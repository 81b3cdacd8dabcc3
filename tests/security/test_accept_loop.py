"""The accept loop survives running out of file descriptors (and any other
OSError from accept): a peer whose listener stopped accepting still answered
/health and gossip, so nothing noticed it was dead to the data path."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time

import pytest

from kvmesh.bench.procs import PeerProcess
from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.peers.memory_network import MemoryNetwork
from kvmesh.peers.peer import Peer
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.types import PeerAddress
from tests.security.wire import open_client, ping, raw_connect

pytestmark = pytest.mark.timeout(120)

SLOT = 64 << 10
FD_LIMIT = 128
FLOOD = 178


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _namespace(env: dict) -> bytes:
    cfg = KvmeshConfig.from_env(env)
    return standalone_hasher(cfg, SLOT).namespace.with_salt("").digest()


def test_peer_limited_to_128_fds_still_serves_after_a_connect_flood():
    env = {**os.environ, "KVMESH_TRANSPORT": "tcp", "KVMESH_CPU_BYTES": "8MiB",
           "KVMESH_CHUNK_TOKENS": "16", "KVMESH_TIMEOUT_S": "2", "KVMESH_CONTROL": "0"}
    peer = PeerProcess(env, SLOT, preexec_fn=_limit_fds).wait_ready()
    try:
        flood = []
        for _ in range(FLOOD):
            try:
                flood.append(raw_connect(peer.peer_id, timeout=0.5))
            except OSError:
                pass  # the backlog is full: the flood has done what it can
        time.sleep(0.5)
        for sock in flood:
            sock.close()
        time.sleep(0.5)

        async def real_client() -> bool:
            client = await open_client(peer.peer_id, _namespace(env), timeout=5.0)
            try:
                await ping(client)
                return True
            finally:
                await client.aclose()

        assert asyncio.run(real_client())  # handshake and PING answered after the flood
        assert peer.proc.poll() is None  # and the peer never died
        stats = peer.send("status")["stats"]
        print(f"{len(flood)} of {FLOOD} connects went through; the peer counted "
              f"{stats.get('accept_errors')} failed accepts and refused "
              f"{stats.get('connections_refused')} connections past its caps")
    finally:
        peer.stop()


class _FailingAccepts:
    """An endpoint whose accept() first raises each of `errors`, then works."""

    def __init__(self, endpoint, errors: list[OSError]) -> None:
        self._endpoint = endpoint
        self._errors = errors  # shared with the test, which watches it drain

    def __getattr__(self, name):
        return getattr(self._endpoint, name)

    async def accept(self):
        if self._errors:
            raise self._errors.pop(0)
        return await self._endpoint.accept()


class _FailingNode:
    def __init__(self, node, errors: list[OSError]) -> None:
        self._node, self._errors = node, errors

    async def open(self, mesh, timeout_s):
        return _FailingAccepts(await self._node.open(mesh, timeout_s), self._errors)

    async def dial(self, peer, timeout_s):
        return await self._node.dial(peer, timeout_s)


def _config(i: int, seed: str | None) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=16 * SLOT),
                        mesh=MeshConfig(host=f"10.78.0.{i + 1}", port=7400,
                                        seeds=(PeerAddress.parse(seed),) if seed else (),
                                        probe_interval_s=0.1,
                                        secret=b"accept-test"),  # 10.78.0.x is off loopback
                        transfer=TransferConfig(transport="tcp", timeout_s=1.0),
                        control=ControlConfig(enabled=False))


ACCEPT_ERRORS = [OSError(errno.EMFILE, "Too many open files"),
                 OSError(errno.ENFILE, "Too many open files in system"),
                 OSError(errno.ENOBUFS, "No buffer space available"),
                 OSError(errno.ENOMEM, "Cannot allocate memory"),
                 OSError(errno.ECONNABORTED, "Software caused connection abort"),
                 OSError(errno.EPROTO, "Protocol error"),
                 OSError("something no one expected")]


async def test_accept_errors_back_off_are_counted_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="kvmesh")
    net = MemoryNetwork()
    server_cfg, errors = _config(0, None), list(ACCEPT_ERRORS)
    server = Peer(server_cfg, standalone_hasher(server_cfg, SLOT), SLOT,
                  network=_FailingNode(net.node(), errors))
    await server.start()
    client_cfg = _config(1, server.peer_id)
    client = Peer(client_cfg, standalone_hasher(client_cfg, SLOT), SLOT, network=net.node())
    try:
        await client.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while errors and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert not errors
        await client.ping(server.peer_id)  # the listener accepts again
        assert server.stats.as_dict()["accept_errors"] == len(ACCEPT_ERRORS)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                    and "accept" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    finally:
        await client.stop()
        await server.stop()
