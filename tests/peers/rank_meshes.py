"""Helpers for tests of TP ranks' peers: free ports, engine configs, and who is in which mesh."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, TransferConfig
from kvmesh.types import PeerAddress


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


def engine_config(tmp_path, port: int = 0, seeds: tuple = (), **mesh) -> KvmeshConfig:
    # A short network timeout: a rank that dials the wrong mesh gives up on its join quickly.
    return KvmeshConfig(enabled=True, chunk_tokens=16, run_dir=tmp_path,
                        mesh=MeshConfig(port=port, seeds=seeds, probe_interval_s=0.2, **mesh),
                        transfer=TransferConfig(timeout_s=1.0),
                        control=ControlConfig(enabled=False))


def members(handle) -> frozenset:
    async def read():
        return handle.peer.members()

    return handle.call(read())


def assert_meshes(meshes: list[list], timeout_s: float = 10.0) -> None:
    """Wait until every peer's members are exactly its mesh's peers; fail at the deadline."""
    want = [[frozenset(p.peer_id for p in mesh)] * len(mesh) for mesh in meshes]
    deadline = time.monotonic() + timeout_s
    while True:
        seen = [[members(p) for p in mesh] for mesh in meshes]
        if seen == want:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"members seen {seen}, wanted {want}")
        time.sleep(0.05)


@contextmanager
def two_engines_on_fixed_ports(tmp_path, open_rank: Callable) -> Iterator[tuple[list, list[int]]]:
    """Ranks 0 and 1 of engine a (no seeds), then of engine b (seeded by a's
    port), each opened by `open_rank(config, engine, rank)`; yields the
    opened peers in that order and the ports each should listen on. Closes
    them all at the end, however it ends."""
    a_port, b_port = free_port_pair(), free_port_pair()
    opened = []
    try:
        for engine, port, seeds in (("a", a_port, ()),
                                    ("b", b_port, (PeerAddress("127.0.0.1", a_port),))):
            for rank in (0, 1):
                opened.append(open_rank(engine_config(tmp_path, port, seeds), engine, rank))
        yield opened, [a_port, a_port + 1, b_port, b_port + 1]
    finally:
        for peer in opened:
            peer.close()
