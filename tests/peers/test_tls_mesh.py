"""Peers with KVMESH_TLS_*: chunks cross over mutual TLS, the control API
speaks HTTPS (its mesh fan-out too), and a peer outside the CA gets nothing.
"""

from __future__ import annotations

import dataclasses
import json

import aiohttp
import pytest

from kvmesh.config import ControlConfig, TlsConfig
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.transfer.tls import control_contexts
from tests.peers.test_peer import SLOT, config, save, wait_until
from tests.tls_pki import pki  # noqa: F401 - a fixture

def _tls(files) -> TlsConfig:
    return TlsConfig(cert=files.cert, key=files.key, ca=files.ca)


@pytest.fixture
def tls_mesh(pki):
    handles: list[PeerHandle] = []

    def start(tls: TlsConfig | None, control: bool = False) -> PeerHandle:
        cfg = config([handles[0].peer_id] if handles else [], full_directory_upto=16)
        cfg = dataclasses.replace(cfg, tls=tls, control=ControlConfig(enabled=control))
        handles.append(PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT))
        return handles[-1]

    yield start
    for h in handles:
        h.close()


def _pull(reader: PeerHandle, keys: list[bytes]) -> list[bytes | None]:
    results = sorted(reader.start_load(keys).results(5), key=lambda r: r.index)
    out = [bytes(r.data.numpy()) if r.data is not None else None for r in results]
    for r in results:
        r.release()
    return out


def test_chunks_cross_between_members_over_tls(tls_mesh, pki):
    a = tls_mesh(_tls(pki.server))
    b = tls_mesh(_tls(pki.client))
    wait_until(lambda: len(b.peer.membership.members) == 2, 10, "b joins")
    keys = save(a, 3)
    wait_until(lambda: b.lookup_prefix(keys) == 3, 5, "a's advertisement reaches b")
    assert _pull(b, keys) == [bytes([i % 251]) * SLOT for i in range(3)]
    assert b.peer.pool.transports() == {a.peer_id: "tls"}


def test_a_peer_outside_the_ca_pulls_nothing(tls_mesh, pki):
    a = tls_mesh(_tls(pki.server))
    keys = save(a, 2)
    # Another CA's certificate (the outsider trusts ours: a is the one that
    # must say no), then plain TCP.
    for outsider in (TlsConfig(pki.stranger.cert, pki.stranger.key, pki.server.ca), None):
        c = tls_mesh(outsider)
        c.call(_learn(c, a, keys))
        assert _pull(c, keys) == [None, None]
        assert c.peer.pool.transports() == {}


async def _learn(reader: PeerHandle, holder: PeerHandle, keys: list[bytes]) -> None:
    """Put `holder` in `reader`'s directory as if advertised, so a pull is tried."""
    reader.peer.directory.add(holder.peer_id, tuple(keys))


async def _get_status(url: str, ctx) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(url + "/status?scope=mesh") as resp:
            return json.loads(await resp.read())


def test_the_control_api_is_https_and_its_mesh_fan_out_too(tls_mesh, pki):
    a = tls_mesh(_tls(pki.server), control=True)
    b = tls_mesh(_tls(pki.client), control=True)
    wait_until(lambda: len(a.peer.membership.members) == 2, 10, "b joins")
    assert a.peer.control_url.startswith("https://")
    _, client = control_contexts(_tls(pki.client))
    status = a.call(_get_status(a.peer.control_url, client), 10)
    assert set(status["peers"]) == {a.peer_id, b.peer_id}
    assert "error" not in status["peers"][b.peer_id]  # a reached b's API over HTTPS
    with pytest.raises(aiohttp.ClientError):  # plain HTTP is not answered
        a.call(_get_status(a.peer.control_url.replace("https", "http"), True), 10)
