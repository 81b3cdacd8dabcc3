"""The peer an SGLang rank embeds: its rank's port and mesh, moved once. Runs without SGLang."""

from __future__ import annotations

from dataclasses import replace

from kvmesh.connectors.sglang.peer import open_mesh_peer
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.types import PeerAddress
from tests.peers.rank_meshes import assert_meshes, engine_config, free_port_pair

NS = KeyNamespace("m", "bfloat16", 2, 2, 8, 16, "sglang/test", tp_size=2)


def port_of(peer) -> int:
    return PeerAddress.parse(peer.peer_id).port


def test_each_rank_listens_at_port_plus_rank_and_joins_its_rank_of_the_seed(tmp_path):
    """Failed before: rank 1 listened at port + 2 (ports moved here, then again in open_peer)."""
    a_port, b_port = free_port_pair(), free_port_pair()
    opened = []
    try:
        for engine, port, seeds in (("a", a_port, ()),
                                    ("b", b_port, (PeerAddress("127.0.0.1", a_port),))):
            for rank in (0, 1):
                opened.append(open_mesh_peer(engine_config(tmp_path, port, seeds),
                                             replace(NS, tp_rank=rank), 4096, engine, rank))
        assert [port_of(p) for p in opened] == [a_port, a_port + 1, b_port, b_port + 1]
        a0, a1, b0, b1 = (p.handle for p in opened)
        assert_meshes([[a0, b0], [a1, b1]])
    finally:
        for p in opened:
            p.close()


def test_mla_ranks_share_rank_zeros_mesh_on_ports_of_their_own(tmp_path):
    """MLA namespaces say rank 0 on every rank. Failed before: every rank took port + 0."""
    a_port, b_port = free_port_pair(), free_port_pair()
    shared = replace(NS, tp_size=1)
    opened = []
    try:
        for engine, port, seeds in (("a", a_port, ()),
                                    ("b", b_port, (PeerAddress("127.0.0.1", a_port),))):
            for rank in (0, 1):
                opened.append(open_mesh_peer(engine_config(tmp_path, port, seeds), shared, 4096,
                                             f"{engine}{rank}", rank))
        assert [port_of(p) for p in opened] == [a_port, a_port + 1, b_port, b_port + 1]
        assert_meshes([[p.handle for p in opened]])
    finally:
        for p in opened:
            p.close()
