"""The config of one tensor-parallel rank's embedded peer.

An engine with tensor parallelism keeps a KV shard per rank, and each shard
has a key namespace of its own (`KeyNamespace.tp_rank`), so every rank embeds
a peer of its own and rank r of every engine forms a mesh of its own, "mesh
r". Peers of different meshes cannot talk to each other at all (gossip and
beacons are sealed with the namespace, and the TCP handshake compares it), so
this module only has to make sure that rank r *finds* mesh r, and that the
ranks of one engine on one host do not collide:

- fixed ports (`KVMESH_PORT`, `KVMESH_CONTROL_PORT`) move up by r; 0 (pick a
  free port) stays 0;
- static and dns seeds name rank-0 peers: rank r dials each seed's port + r,
  where that engine's rank r listens. Without this, rank r would dial rank 0's
  port, whose peer drops its (differently sealed) gossip, and start alone;
- multicast seeds are not peers but the beacon group: every rank keeps the
  one group, and hears only its own mesh's beacons (sealed with its namespace);
- KV that is the same on every rank (SGLang keys MLA pools as rank 0 of 1)
  has one namespace and so one mesh for all ranks: its `mesh_rank` is 0, so
  the seeds stay as they are while the ports still move by the rank. Such a
  rank also seeds from its own engine's rank 0 when the port is fixed (in
  SGLang that rank is the only one that writes MLA pages): without it the
  seed engine's other ranks, which have no seeds, would stay alone. With
  free ports and static seeds they do (they cannot know rank 0's port); dns
  seeds bring them in if their own pod is a record, multicast always does;
- what else a rank has on the host is already its own: its rendezvous file
  is named by its rank and its pool door by its peer id, both in the shared
  run dir.

A deployment therefore opens `port .. port + tp_size - 1` (TCP and UDP) for
the mesh and names rank-0 addresses as seeds.
"""

from __future__ import annotations

from dataclasses import replace

from kvmesh.config import KvmeshConfig
from kvmesh.errors import ConfigError
from kvmesh.types import PeerAddress

MAX_PORT = 65535


def rank_config(config: KvmeshConfig, tp_rank: int, mesh_rank: int | None = None) -> KvmeshConfig:
    """`config` as the peer of TP rank `tp_rank` uses it (rank 0: `config` itself).

    `tp_rank` is the engine process's own rank: its ports move by it.
    `mesh_rank` is the rank whose mesh the peer joins, its namespace's
    `tp_rank` (by default `tp_rank`): seed ports move by it. Raises
    ConfigError for a negative rank, or when a moved port is past 65535.
    """
    mesh_rank = tp_rank if mesh_rank is None else mesh_rank
    if tp_rank < 0 or mesh_rank < 0:
        raise ConfigError(f"TP rank {tp_rank} (mesh of rank {mesh_rank}) is negative")
    if tp_rank == 0 and mesh_rank == 0:
        return config
    mesh = config.mesh
    seeds = mesh.seeds
    if mesh.discovery != "multicast":
        seeds = tuple(PeerAddress(s.host, _moved(s.port, mesh_rank, f"KVMESH_SEEDS entry {s.host}"))
                      for s in seeds)
        if mesh_rank != tp_rank and mesh.port:
            own = PeerAddress(mesh.advertise_host or mesh.host,
                              _moved(mesh.port, mesh_rank, "KVMESH_PORT"))
            seeds = (*seeds, own) if own not in seeds else seeds
    return replace(
        config,
        mesh=replace(mesh, port=_moved(mesh.port, tp_rank, "KVMESH_PORT"), seeds=seeds),
        control=replace(config.control,
                        port=_moved(config.control.port, tp_rank, "KVMESH_CONTROL_PORT")))


def _moved(port: int, tp_rank: int, name: str) -> int:
    """`port` + `tp_rank`; 0 (a free port) stays 0."""
    if not port:
        return 0
    if port + tp_rank > MAX_PORT:
        raise ConfigError(f"{name}: port {port} + TP rank {tp_rank} is past {MAX_PORT}")
    return port + tp_rank
