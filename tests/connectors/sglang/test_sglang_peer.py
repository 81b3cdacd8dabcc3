"""The peer an SGLang rank embeds: its rank's port and mesh, moved once. Runs without SGLang."""

from __future__ import annotations

from dataclasses import replace

from kvmesh.connectors.sglang.peer import open_mesh_peer
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.types import PeerAddress
from tests.peers.rank_meshes import assert_meshes, two_engines_on_fixed_ports

NS = KeyNamespace("m", "bfloat16", 2, 2, 8, 16, "sglang/test", tp_size=2)


def port_of(peer) -> int:
    return PeerAddress.parse(peer.peer_id).port


def test_each_rank_listens_at_port_plus_rank_and_joins_its_rank_of_the_seed(tmp_path):
    """Failed before: rank 1 listened at port + 2 (ports moved here, then again in open_peer)."""
    def open_rank(config, engine, rank):
        return open_mesh_peer(config, replace(NS, tp_rank=rank), 4096, engine, rank)

    with two_engines_on_fixed_ports(tmp_path, open_rank) as (opened, ports):
        assert [port_of(p) for p in opened] == ports
        a0, a1, b0, b1 = (p.handle for p in opened)
        assert_meshes([[a0, b0], [a1, b1]])


def test_mla_ranks_share_rank_zeros_mesh_on_ports_of_their_own(tmp_path):
    """MLA namespaces say rank 0 on every rank. Failed before: every rank took port + 0."""
    shared = replace(NS, tp_size=1)

    def open_rank(config, engine, rank):
        return open_mesh_peer(config, shared, 4096, f"{engine}{rank}", rank)

    with two_engines_on_fixed_ports(tmp_path, open_rank) as (opened, ports):
        assert [port_of(p) for p in opened] == ports
        assert_meshes([[p.handle for p in opened]])
