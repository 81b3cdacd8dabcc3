"""Standalone peer processes on loopback for the multi-process tests.

The driver is kvmesh.bench.procs (PeerProcess, start_mesh, wait_for_members);
this adds the tests' environment and the transports to run them over.
"""

from __future__ import annotations

import os

from kvmesh.bench.procs import PeerProcess, start_mesh
from kvmesh.transfer import ucx


def transports() -> list[str]:
    """Every transport that can run here (UCX only with the extra installed)."""
    return ["tcp", "shm"] + (["ucx"] if ucx.available() else [])


def start_loopback_mesh(n: int, transport: str, slot_bytes: int = 1 << 20, cpu_bytes: str = "128MiB",
                        extra_env: dict | None = None, per_peer_env: dict | None = None) -> list[PeerProcess]:
    """`n` ready peers over `transport`, small chunks and a 2 s network
    timeout, not yet joined; `per_peer_env[i]` goes to peer i last."""
    env = {**os.environ, "KVMESH_TRANSPORT": transport, "KVMESH_CPU_BYTES": cpu_bytes,
           "KVMESH_CHUNK_TOKENS": "16", "KVMESH_TIMEOUT_S": "2", **(extra_env or {})}
    return start_mesh(n, env, slot_bytes, per_peer_env)
