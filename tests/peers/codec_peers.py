"""Peers of an engine whose chunks codecs can read: a small bf16 model's shape.

Shared by tests/peers/test_peer_codecs.py and tests/peers/test_control_compress.py.
Chunks are bf16 values drawn from a seeded normal distribution (what KV
looks like to a codec: the exponent bytes repeat, the mantissas do not).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from kvmesh.codecs import ChunkGeometry
from kvmesh.config import (CodecConfig, ControlConfig, KvmeshConfig, MeshConfig, StoreConfig,
                           TransferConfig)
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.peers.facade import PeerHandle
from kvmesh.types import PeerAddress

CHUNK_TOKENS = 64
EXACT = KeyNamespace(model="codec-test", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=64,
                     chunk_tokens=CHUNK_TOKENS, kv_layout="vllm-cpu/block16")
FP8 = dataclasses.replace(EXACT, lossy_codec="fp8")
GEOMETRY = ChunkGeometry.from_namespace(EXACT)
SLOT = GEOMETRY.raw_bytes(CHUNK_TOKENS // 16)  # four blocks: 64 KiB


def kv_chunk(seed: int, n: int = SLOT) -> torch.Tensor:
    """`n` bytes of bf16 values ~ N(0, 2), as uint8."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n // 2, generator=gen) * 2).to(torch.bfloat16).view(torch.uint8)


def peer_config(codecs: CodecConfig = CodecConfig(), seed: str | None = None, disk_dir=None,
                cpu_slots: int = 32, control: bool = False) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=CHUNK_TOKENS,
                        store=StoreConfig(cpu_bytes=cpu_slots * SLOT, disk_dir=disk_dir,
                                          disk_bytes=64 * SLOT),
                        mesh=MeshConfig(seeds=(PeerAddress.parse(seed),) if seed else ()),
                        transfer=TransferConfig(transport="tcp", timeout_s=2.0),
                        control=ControlConfig(enabled=control), codecs=codecs)


def start_peer(config: KvmeshConfig, namespace: KeyNamespace = EXACT) -> PeerHandle:
    return PeerHandle.start(config, ChunkHasher(namespace), SLOT)


def save(handle: PeerHandle, n: int, first_seed: int = 0) -> tuple[list[bytes], list[torch.Tensor]]:
    """Save `n` chunks of a prompt; their keys and raw bytes."""
    keys = handle.peer.hasher.keys(list(range(first_seed, first_seed + n * CHUNK_TOKENS)))
    chunks = [kv_chunk(first_seed + i) for i in range(n)]
    for key, chunk in zip(keys, chunks):
        ticket = handle.prepare_save(key)
        ticket.data[:SLOT] = chunk
        handle.commit_save(ticket)
    return keys, chunks


def wait_advertised(puller: PeerHandle, keys: list[bytes]) -> None:
    deadline = time.monotonic() + 10
    while puller.lookup_prefix(keys) < len(keys):
        assert time.monotonic() < deadline, "the holder's chunks were never advertised"
        time.sleep(0.05)


def load(handle: PeerHandle, keys: list[bytes]) -> list[tuple[bytes | None, str]]:
    """Each key's loaded bytes (None: a miss) and source, in key order."""
    out: list = [None] * len(keys)
    for result in handle.start_load(keys).results(30):
        data = None if result.data is None else bytes(result.data.numpy())
        out[result.index] = (data, result.source)
        result.release()
    return out
