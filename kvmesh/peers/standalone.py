"""A peer without an engine, driven by JSON lines on stdin (`kvmesh peer`).

Used by the multi-process tests, the mesh benchmarks and operators who want a
cache-only node. Each input line is one command; each reply is one JSON line
on stdout. Chunk contents are derived from their keys, so any process can
check that bytes it pulled are exactly the bytes that were stored:

    {"op": "fill", "seed": 1, "chunks": 64}    store chunks of a seeded prompt
    {"op": "lookup", "seed": 1, "chunks": 64}  leading chunks held in the mesh
    {"op": "load", "seed": 1, "chunks": 64}    pull them, verify every byte
    {"op": "lookup_latency", ...}             repeat a lookup, report latencies
    {"op": "hit", "shape": "demo", "block": 32, ...}  lookup + pull + scatter, timed
    {"op": "clear"} | {"op": "status"} | {"op": "exit"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import torch
import xxhash

from kvmesh.config import KvmeshConfig
from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace
from kvmesh.kernels.layouts import get_layout
from kvmesh.kernels.paged import PagedKV, readonly_bytes
from kvmesh.models.shapes import get_shape
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.metrics import member_states
from kvmesh.types import ChunkKey, PeerId


def standalone_hasher(config: KvmeshConfig, slot_bytes: int, model: str = "standalone") -> ChunkHasher:
    return ChunkHasher(KeyNamespace(model=model, dtype="uint8", num_layers=1, num_kv_heads=1,
                                    head_dim=slot_bytes, chunk_tokens=config.chunk_tokens,
                                    kv_layout="opaque"), secret=None)


def prompt_tokens(seed: int, chunks: int, chunk_tokens: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 20, chunks * chunk_tokens, dtype=np.int32)


def chunk_bytes_for(key: ChunkKey, size: int) -> np.ndarray:
    """Deterministic content of a chunk, derived from its key alone."""
    return np.random.default_rng(xxhash.xxh3_64_intdigest(key)).integers(
        0, 256, size, dtype=np.uint8)


def paged_kv(shape: str, block: int, num_blocks: int, layout: str = "vllm-cpu") -> PagedKV:
    """A zeroed vLLM-CPU-style KV cache of a model shape: all layers in one buffer."""
    spec = get_shape(shape)
    layer = get_layout(layout).layer_shape(num_blocks, block, spec.num_kv_heads, spec.head_dim)
    buffer = torch.zeros((spec.num_layers, *layer), dtype=getattr(torch, spec.dtype))
    return PagedKV(list(buffer.unbind(0)), layout)


class StandaloneNode:
    def __init__(self, handle: PeerHandle, hasher: ChunkHasher) -> None:
        self.handle = handle
        self.hasher = hasher

    def keys(self, cmd: dict) -> list:
        tokens = prompt_tokens(int(cmd["seed"]), int(cmd["chunks"]), self.hasher.chunk_tokens)
        return self.hasher.keys(tokens)

    def fill(self, cmd: dict) -> dict:
        stored = 0
        for key in self.keys(cmd):
            ticket = self.handle.prepare_save(key)
            if ticket is None:
                continue
            ticket.data.numpy()[:] = chunk_bytes_for(key, self.handle.slot_bytes)
            self.handle.commit_save(ticket)
            stored += 1
        return {"stored": stored}

    def lookup(self, cmd: dict) -> dict:
        start = time.perf_counter()
        matched = self.handle.lookup_prefix(self.keys(cmd))
        return {"matched": matched, "seconds": time.perf_counter() - start}

    def load(self, cmd: dict) -> dict:
        keys = self.keys(cmd)
        start = time.perf_counter()
        job = self.handle.start_load(keys)
        ok = corrupt = failed = 0
        sources: dict[str, int] = {}
        verify = bool(cmd.get("verify", True))
        for result in job.results(float(cmd.get("timeout", 30))):
            if result.data is None:
                failed += 1
                continue
            same = not verify or np.array_equal(result.data.numpy(),
                                                chunk_bytes_for(result.key, len(result.data)))
            result.release()
            ok += same
            corrupt += not same
            sources[result.source] = sources.get(result.source, 0) + 1
        return {"ok": ok, "corrupt": corrupt, "failed": failed, "sources": sources,
                "seconds": time.perf_counter() - start}

    def lookup_latency(self, cmd: dict) -> dict:
        """Repeat one lookup; returns latencies in microseconds (sorted)."""
        keys = self.keys(cmd)
        out = []
        for _ in range(int(cmd.get("repeat", 200))):
            start = time.perf_counter()
            matched = self.handle.lookup_prefix(keys)
            out.append((time.perf_counter() - start) * 1e6)
            if matched != len(keys):
                return {"error": f"lookup matched {matched} of {len(keys)}"}
        return {"us": sorted(out)}

    def ping_latency(self, cmd: dict) -> dict:
        """Repeat a PING to one peer, or to all of `peers` in parallel (the
        floor of a lookup that asks those owners); microseconds, sorted."""
        targets = cmd.get("peers") or [cmd["peer"]]
        out = []
        for _ in range(int(cmd.get("repeat", 200))):
            start = time.perf_counter()
            self.handle.call(_ping_all(self.handle.peer, targets))
            out.append((time.perf_counter() - start) * 1e6)
        return {"us": sorted(out)}

    def hit(self, cmd: dict) -> dict:
        """A remote hit as an engine sees it, timed whole: hash the prompt,
        look it up, pull every chunk and scatter each into a paged KV cache
        (model shape `shape`, `block` tokens a block) as it lands."""
        chunks = int(cmd["chunks"])
        kv, per_chunk = self._paged_kv(cmd["shape"], int(cmd["block"]), chunks)
        tokens = prompt_tokens(int(cmd["seed"]), chunks, self.hasher.chunk_tokens).tolist()
        start = time.perf_counter()
        keys = self.hasher.keys(tokens)
        matched = self.handle.lookup_prefix(keys)
        looked_up = time.perf_counter()

        def read(index: int, data: memoryview) -> bool:  # same-host holders: one copy
            kv.scatter(readonly_bytes(data), range(index * per_chunk, (index + 1) * per_chunk))
            return True

        job = self.handle.start_load(keys[:matched], read)
        ok = 0
        for result in job.results(float(cmd.get("timeout", 60))):
            if result.data is not None:
                first = result.index * per_chunk
                kv.scatter(result.data, range(first, first + per_chunk))
            ok += result.data is not None or result.consumed
            result.release()
        end = time.perf_counter()
        return {"matched": matched, "ok": ok, "seconds": end - start,
                "lookup_seconds": looked_up - start, "bytes": ok * self.handle.slot_bytes}

    def _paged_kv(self, shape: str, block: int, chunks: int) -> tuple[PagedKV, int]:
        """A paged KV cache with room for `chunks` chunks, kept between calls."""
        per_chunk = self.hasher.chunk_tokens // block
        kv = getattr(self, "_kv", None)
        if kv is None or kv.num_blocks < chunks * per_chunk:
            kv = self._kv = paged_kv(shape, block, chunks * per_chunk)
        if kv.chunk_bytes(per_chunk) != self.handle.slot_bytes:
            raise ValueError(f"a {shape} chunk is {kv.chunk_bytes(per_chunk)} bytes, "
                             f"slots are {self.handle.slot_bytes}")
        return kv, per_chunk

    def clear(self, _cmd: dict) -> dict:
        return {"removed": self.handle.clear()}

    def status(self, _cmd: dict) -> dict:
        peer = self.handle.peer
        status = self.handle.call(_status(peer))
        return {"peer_id": peer.peer_id, "members": list(status.members),
                "member_states": member_states(status),
                "control_url": peer.control_url, "stats": status.counters,
                "pool_path": peer.store.pool.proc_path, "slot_bytes": peer.slot_bytes,
                "transports": status.transports}


async def _status(peer):
    return peer.status()


async def _ping_all(peer, targets: list[PeerId]) -> None:
    if len(targets) == 1:
        await _ping(peer, targets[0])
    else:
        await asyncio.gather(*(_ping(peer, t) for t in targets))


async def _ping(peer, target: PeerId) -> None:
    await peer.ping(target)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="kvmesh peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slot-bytes", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    try:
        config = KvmeshConfig.from_env()
        hasher = standalone_hasher(config, args.slot_bytes)
        handle = PeerHandle.start(config, hasher, args.slot_bytes)
    except ConfigError as exc:  # a setting this peer refuses (a codec, for its opaque chunks)
        print(f"kvmesh peer: {exc}", file=sys.stderr)
        return 2
    node = StandaloneNode(handle, hasher)
    ops = {"fill": node.fill, "lookup": node.lookup, "load": node.load, "status": node.status,
           "lookup_latency": node.lookup_latency, "ping_latency": node.ping_latency,
           "hit": node.hit,
           "clear": node.clear}
    print(json.dumps({"ready": True, "peer_id": handle.peer_id,
                      "control_url": handle.peer.control_url}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if cmd.get("op") == "exit":
                    break
                reply = ops[cmd["op"]](cmd)
            except (KeyError, ValueError, TypeError) as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
