"""A TP rank's peer config: its own ports, and the seeds of its own mesh."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig
from kvmesh.errors import ConfigError
from kvmesh.peers.rank_config import rank_config
from kvmesh.types import PeerAddress

SEEDS = (PeerAddress("10.0.0.1", 7400), PeerAddress("kvmesh.ns.svc", 7400))
FIXED = KvmeshConfig(mesh=MeshConfig(port=7400, seeds=SEEDS, advertise_host="10.0.0.9"),
                     control=ControlConfig(port=9100), run_dir=Path("/run/kvmesh-test"))


def with_mesh(**changes) -> KvmeshConfig:
    return replace(FIXED, mesh=replace(FIXED.mesh, **changes))


def ports(config: KvmeshConfig) -> tuple:
    return config.mesh.port, config.control.port, tuple(s.port for s in config.mesh.seeds)


def test_rank_zero_keeps_the_config():
    assert rank_config(FIXED, 0) is FIXED


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("discovery", ["static", "dns"])
def test_fixed_ports_and_seed_ports_move_up_by_the_rank(rank, discovery):
    config = rank_config(with_mesh(discovery=discovery), rank)
    assert ports(config) == (7400 + rank, 9100 + rank, (7400 + rank, 7400 + rank))
    assert [s.host for s in config.mesh.seeds] == ["10.0.0.1", "kvmesh.ns.svc"]


def test_free_ports_stay_free_while_seeds_move():
    config = replace(with_mesh(port=0), control=ControlConfig(port=0))
    assert ports(rank_config(config, 2)) == (0, 0, (7402, 7402))


def test_nothing_else_changes():
    config = rank_config(FIXED, 1)
    assert config.run_dir == FIXED.run_dir  # its files are named by rank and peer id
    assert (config.mesh.host, config.mesh.advertise_host) == ("127.0.0.1", "10.0.0.9")
    assert replace(config, mesh=FIXED.mesh, control=FIXED.control) == FIXED


def test_multicast_seeds_name_the_group_and_stay():
    group = (PeerAddress("239.255.74.74", 7474),)
    config = rank_config(with_mesh(discovery="multicast", seeds=group,
                                   multicast_group=PeerAddress("239.1.1.1", 7000)), 2)
    assert (config.mesh.seeds, config.mesh.multicast_group) == (
        group, PeerAddress("239.1.1.1", 7000))
    assert config.mesh.port == 7402


def test_replicated_kv_moves_ports_by_the_rank_and_seeds_by_the_mesh():
    """MLA KV: every rank's namespace says rank 0, so every rank joins mesh 0,
    through the seeds and through its own engine's rank 0."""
    config = rank_config(FIXED, 2, mesh_rank=0)
    assert (config.mesh.port, config.control.port) == (7402, 9102)
    assert config.mesh.seeds == (*SEEDS, PeerAddress("10.0.0.9", 7400))
    assert rank_config(FIXED, 0, mesh_rank=0) is FIXED
    no_seeds = rank_config(with_mesh(seeds=(), advertise_host=""), 1, mesh_rank=0)
    assert no_seeds.mesh.seeds == (PeerAddress("127.0.0.1", 7400),)
    free = rank_config(with_mesh(port=0), 1, mesh_rank=0)
    assert free.mesh.seeds == SEEDS  # rank 0's port is not known


def test_an_engine_that_lists_itself_as_seed_is_not_listed_twice():
    own = (PeerAddress("10.0.0.9", 7400),)
    assert rank_config(with_mesh(seeds=own), 1, mesh_rank=0).mesh.seeds == own


@pytest.mark.parametrize("config, name", [
    (with_mesh(port=65535), "KVMESH_PORT"),
    (replace(FIXED, control=ControlConfig(port=65535)), "KVMESH_CONTROL_PORT"),
    (with_mesh(seeds=(PeerAddress("10.0.0.1", 65535),)), "KVMESH_SEEDS entry 10.0.0.1"),
])
def test_a_port_past_65535_is_a_config_error_naming_the_setting(config, name):
    assert ports(rank_config(config, 0)) == ports(config)
    with pytest.raises(ConfigError, match=f"{name}: port 65535 \\+ TP rank 1 is past 65535"):
        rank_config(config, 1)


def test_a_negative_rank_is_a_config_error():
    for args in ((-1,), (1, -1)):
        with pytest.raises(ConfigError, match="negative"):
            rank_config(FIXED, *args)
