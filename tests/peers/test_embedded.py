"""Peers embedded in an engine: one per TP rank, each on its own ports and in its rank's mesh."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.membership.discovery import MulticastBeacon
from kvmesh.peers.embedded import open_peer, rendezvous_path
from kvmesh.types import PeerAddress
from tests.peers.rank_meshes import (assert_meshes, engine_config, free_port_pair,
                                     two_engines_on_fixed_ports)

NS = KeyNamespace("m", "float32", 1, 1, 8, 16, "opaque", tp_size=2)


def open_engine(config: KvmeshConfig, engine_id: str, opened: list) -> list:
    """The peers of one TP=2 engine, rank 0 then rank 1 (each also kept in `opened`)."""
    for rank in (0, 1):
        opened.append(open_peer(config, replace(NS, tp_rank=rank), 4096, engine_id))
    return opened[-2:]


def test_two_ranks_of_one_engine_with_fixed_ports_take_their_own(tmp_path):
    port, control = free_port_pair(), free_port_pair()
    config = replace(engine_config(tmp_path, port), control=ControlConfig(port=control))
    opened = []
    try:
        peers = open_engine(config, "engine", opened)
        assert [p.peer_id.rsplit(":", 1)[1] for p in peers] == [str(port), str(port + 1)]
        assert [p.peer.control_url.rsplit(":", 1)[1] for p in peers] == [
            str(control), str(control + 1)]
        for rank, peer in enumerate(peers):
            found = json.loads(rendezvous_path(config, "engine", rank).read_text())
            assert found["peer_id"] == peer.peer_id
    finally:
        for p in opened:
            p.close()


def test_rank_r_of_an_engine_joins_rank_r_of_its_seed_engine(tmp_path):
    """Seeds name the seed engine's rank 0; rank 1 must dial its rank 1.

    Failed before: rank 1 kept the seed's port, so it dialed the seed engine's
    rank 0, whose mesh drops its gossip, and stayed alone.
    """
    a_port, b_port = free_port_pair(), free_port_pair()
    opened = []
    try:
        a = open_engine(engine_config(tmp_path, a_port), "a", opened)
        b = open_engine(engine_config(tmp_path, b_port, (PeerAddress("127.0.0.1", a_port),)),
                        "b", opened)
        assert_meshes([[a[0], b[0]], [a[1], b[1]]])
    finally:
        for p in opened:
            p.close()


def multicast_port_or_skip() -> int:
    """A free UDP port for a multicast group that this host loops back, else skip."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def probe() -> bool:
        beacons = [MulticastBeacon(f"127.0.0.1:{n}", port=port, interface="127.0.0.1",
                                   interval_s=0.05) for n in (1, 2)]
        try:
            for b in beacons:
                await b.start(timeout_s=1.0)
            for _ in range(40):
                if all(b.heard() for b in beacons):
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            for b in beacons:
                await b.stop()

    try:
        if asyncio.run(probe()):
            return port
    except OSError as exc:
        pytest.skip(f"no multicast on this host: {exc}")
    pytest.skip("the kernel does not loop multicast back on this host")


def test_free_ports_and_multicast_ranks_find_only_their_own_mesh(tmp_path):
    """No seeds, no fixed ports: all ranks share the beacon group, each hears only its mesh."""
    group = PeerAddress("239.255.74.74", multicast_port_or_skip())
    config = engine_config(tmp_path, discovery="multicast", multicast_group=group)
    opened = []
    try:
        a = open_engine(config, "a", opened)
        b = open_engine(config, "b", opened)
        assert_meshes([[a[0], b[0]], [a[1], b[1]]])
    finally:
        for p in opened:
            p.close()


def test_replicated_kv_puts_every_rank_on_its_own_port_in_one_mesh(tmp_path):
    """MLA-like KV: every rank's namespace says rank 0, so all ranks of all
    engines form one mesh, through the seed engine's rank 0; the ports still
    move by the process's own rank."""
    shared = replace(NS, tp_size=1)

    def open_rank(config, engine, rank):
        return open_peer(config, shared, 4096, engine, tp_rank=rank)

    with two_engines_on_fixed_ports(tmp_path, open_rank) as (opened, ports):
        assert [int(p.peer_id.rsplit(":", 1)[1]) for p in opened] == ports
        assert_meshes([opened])
