"""Peers embedded in an engine: one per TP rank, each on its own port."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig
from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.peers.embedded import open_peer, rank_config


def free_port_pair() -> int:
    """A port p with p and p + 1 free, TCP and UDP (a peer binds both)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


def test_fixed_ports_move_up_by_the_rank_and_free_ones_stay_free():
    fixed = KvmeshConfig(mesh=MeshConfig(port=7400), control=ControlConfig(port=9100))
    assert rank_config(fixed, 0) is fixed
    assert (rank_config(fixed, 3).mesh.port, rank_config(fixed, 3).control.port) == (7403, 9103)
    free = KvmeshConfig()
    assert (rank_config(free, 2).mesh.port, rank_config(free, 2).control.port) == (0, 0)
    with pytest.raises(ConfigError, match="65535"):
        rank_config(KvmeshConfig(mesh=MeshConfig(port=65535)), 1)


def test_two_ranks_of_one_engine_with_a_fixed_port_both_start(tmp_path):
    port = free_port_pair()
    config = KvmeshConfig(enabled=True, chunk_tokens=16, mesh=MeshConfig(port=port),
                          control=ControlConfig(enabled=False), run_dir=tmp_path)
    ns = KeyNamespace("m", "float32", 1, 1, 8, 16, "opaque", tp_size=2)
    peers = []
    try:
        for rank in (0, 1):
            peers.append(open_peer(config, replace(ns, tp_rank=rank), 4096, "engine"))
        assert [p.peer_id.rsplit(":", 1)[1] for p in peers] == [str(port), str(port + 1)]
    finally:
        for p in peers:
            p.close()
