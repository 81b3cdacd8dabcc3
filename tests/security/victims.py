"""Real peers for the red-team tests to attack: in-process, on loopback."""

from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import pytest
import xxhash

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import chunk_bytes_for, standalone_hasher
from kvmesh.types import PeerAddress

SLOT = 64 << 10


def victim_config(seeds=(), cpu_bytes: int = 4 << 20, transport: str = "auto",
                  secret: bytes | None = None) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=cpu_bytes),
                        mesh=MeshConfig(seeds=tuple(PeerAddress.parse(s) for s in seeds),
                                        secret=secret, probe_interval_s=0.2,
                                        full_directory_upto=16),
                        transfer=TransferConfig(transport=transport, timeout_s=1.0),
                        control=ControlConfig(enabled=False))


def peer_starter(make_config: Callable[..., KvmeshConfig]) -> Iterator[Callable[..., PeerHandle]]:
    """For a fixture: `start(slot=SLOT, **kw)` starts a peer in this process
    from `make_config(**kw)`; every peer started is closed at the end."""
    started: list[PeerHandle] = []

    def start(slot: int = SLOT, **kw) -> PeerHandle:
        cfg = make_config(**kw)
        started.append(PeerHandle.start(cfg, standalone_hasher(cfg, slot), slot))
        return started[-1]

    try:
        yield start
    finally:
        for handle in started:
            handle.close()


@pytest.fixture
def peers():
    yield from peer_starter(victim_config)


def namespace(handle: PeerHandle) -> bytes:
    return handle.peer.namespace


def keys_for(handle: PeerHandle, n: int, seed: int = 7) -> list[bytes]:
    tokens = np.random.default_rng(seed).integers(0, 1 << 20, n * 16, dtype=np.int32)
    return handle.peer.hasher.keys(tokens)


def fill(handle: PeerHandle, keys: list[bytes]) -> None:
    for key in keys:
        ticket = handle.prepare_save(key)
        ticket.data.numpy()[:] = chunk_bytes_for(key, SLOT)
        handle.commit_save(ticket)


def held_bytes(handle: PeerHandle, key: bytes) -> bytes | None:
    """The bytes `handle`'s own store holds under `key`, or None."""
    try:
        ticket = handle.peer.open_loaded(key)
    except Exception:  # noqa: BLE001 - not held
        return None
    try:
        return bytes(ticket.view)
    finally:
        handle.peer.close_loaded(ticket)


def checksum(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def wait_until(cond, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
