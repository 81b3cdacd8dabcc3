"""LMCache's side of the side-by-side benchmarks; runs in LMCache's own venv.

Started by `kvmesh.bench.lmcache_run` as `.venv-lmcache/bin/python <this file> CMD
--json-args '{...}'`; prints one JSON object. Imports only the standard
library, numpy, torch and lmcache (kvmesh is not installed in that venv), and
only inside the commands, so kvmesh can import this module's name safely.

    hash    ChunkedTokenDatabase.process_tokens, from a list and a tensor
    lookup  LMCacheEngine.lookup of a stored prefix (LocalCPUBackend, mock GPU)
    store   LocalCPUBackend put/get bookkeeping per chunk (no bytes copied)
    transfer  two-process store/retrieve through a running `lmcache server`
            (its shared-memory pool), with LMCache's own MP client

The tokens are the same seeded ids the kvmesh side hashes. Hashing is
LMCache's default ("builtin" Python hash over tuples, PYTHONHASHSEED fixed by
the caller), which is what it uses without vLLM's hash functions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _tokens(n: int):
    import numpy as np  # noqa: PLC0415

    return np.random.default_rng(0).integers(0, 128_000, n, dtype=np.int32)


def _timings(fn, reps: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _engine(chunk_tokens: int, cpu_gb: float, kv_shape: tuple):
    import torch  # noqa: PLC0415
    from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: PLC0415
    from lmcache.v1.config import LMCacheEngineConfig  # noqa: PLC0415
    from lmcache.v1.gpu_connector.mock_gpu_connector import MockGPUConnector  # noqa: PLC0415
    from lmcache.v1.metadata import LMCacheMetadata  # noqa: PLC0415

    config = LMCacheEngineConfig.from_defaults(chunk_size=chunk_tokens, local_cpu=True,
                                               max_local_cpu_size=cpu_gb)
    meta = LMCacheMetadata(model_name="bench", world_size=1, local_world_size=1, worker_id=0,
                           local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=kv_shape)
    engine = LMCacheEngineBuilder.get_or_create("kvmesh-bench", config, meta,
                                                MockGPUConnector(kv_shape),
                                                lambda t, r: None, lambda o, r: o)
    engine.post_init()
    return engine, config, meta


def cmd_hash(tokens: int, chunk_tokens: int, reps: int) -> dict:
    import torch  # noqa: PLC0415
    from lmcache.v1.token_database import ChunkedTokenDatabase  # noqa: PLC0415

    ids = _tokens(tokens)
    as_list, as_tensor = ids.tolist(), torch.from_numpy(ids.astype("int64"))
    db = ChunkedTokenDatabase()  # chunk_size 256, builtin hash
    db.chunk_size = chunk_tokens
    out = {}
    for name, toks in (("list", as_list), ("tensor", as_tensor)):
        secs = _timings(lambda t=toks: list(db.process_tokens(tokens=t, make_key=False)), reps)
        out[f"{name}_s"] = statistics.median(secs)
    out["chunks"] = len(list(db.process_tokens(tokens=as_list, make_key=False)))
    return out


def cmd_lookup(tokens: int, chunk_tokens: int, reps: int) -> dict:
    from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: PLC0415

    engine, _, _ = _engine(chunk_tokens, 1.0, (2, 2, chunk_tokens, 1, 8))
    try:
        ids = _tokens(tokens).tolist()
        engine.store(ids)
        matched = engine.lookup(ids)
        secs = _timings(lambda: engine.lookup(ids), reps)
        return {"matched": matched, "us": sorted(s * 1e6 for s in secs)}
    finally:
        LMCacheEngineBuilder.destroy("kvmesh-bench")


def cmd_store(chunks: int, chunk_tokens: int, reps: int) -> dict:
    """Per chunk: allocate + submit_put_task + ref_count_down (put), then
    contains + get_blocking + ref_count_down (get), as its StorageManager
    does, on keys made beforehand."""
    from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: PLC0415

    kv_shape = (2, 2, chunk_tokens, 1, 8)
    engine, _, meta = _engine(chunk_tokens, 1.0, kv_shape)
    try:
        backend = engine.storage_manager.local_cpu_backend
        db = engine.token_database
        keys = [key for _, _, key in db.process_tokens(tokens=_tokens(chunks * chunk_tokens).tolist())]
        shape, dtype = engine.gpu_connector.get_shape(chunk_tokens), meta.kv_dtype
        puts, gets = [], []
        for _ in range(reps):
            start = time.perf_counter()
            for key in keys:
                obj = backend.allocate(shape, dtype)
                backend.submit_put_task(key, obj)
                obj.ref_count_down()
            puts.append((time.perf_counter() - start) / len(keys))
            start = time.perf_counter()
            for key in keys:
                if backend.contains(key):
                    backend.get_blocking(key).ref_count_down()
            gets.append((time.perf_counter() - start) / len(keys))
            backend.clear()
        return {"put_us": statistics.median(puts) * 1e6, "get_us": statistics.median(gets) * 1e6,
                "chunk_bytes": int(shape.numel()) * 2}
    finally:
        LMCacheEngineBuilder.destroy("kvmesh-bench")


# The transfer command's paged KV: float32, NHD, 8 layers x 2 KV heads, so a
# token is 128 * head_size bytes and one 256-token chunk is 32 KiB * head_size.
KV_LAYERS, KV_HEADS, KV_BLOCK = 8, 2, 128


def kv_geometry(total_bytes: int, chunk_bytes: int, chunk_tokens: int) -> dict:
    """Head size and token count that make LMCache chunks `chunk_bytes` long
    and the whole transfer `total_bytes`; ValueError if they cannot."""
    per_token, rest = divmod(chunk_bytes, chunk_tokens)
    head_size, rest2 = divmod(per_token, 2 * KV_LAYERS * KV_HEADS * 4)
    chunks, rest3 = divmod(total_bytes, chunk_bytes)
    if rest or rest2 or rest3 or head_size == 0 or chunk_tokens % KV_BLOCK:
        raise ValueError(f"no KV geometry gives {chunk_bytes}-byte chunks of {chunk_tokens} "
                         f"tokens adding up to {total_bytes} bytes")
    return {"head_size": head_size, "tokens": chunks * chunk_tokens, "chunks": chunks}


def cmd_transfer(rpc_url: str, total_bytes: int, chunk_bytes: int, reps: int) -> dict:
    """Store `total_bytes` of paged KV into the server once, then `reps` times
    lookup + retrieve it into other (zeroed) blocks, checking every byte after
    each retrieve, outside the timing. LMCache's CPU path (engine-driven, shm
    pool): store gathers blocks into the pool, retrieve scatters them back."""
    import zmq  # noqa: PLC0415
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory  # noqa: PLC0415

    zmq_ctx = zmq.Context()
    client = RequestClientFactory.create(rpc_url, context=zmq_ctx)
    try:
        chunk_tokens = int(client.get_chunk_size().result(timeout=30))
        geo = kv_geometry(total_bytes, chunk_bytes, chunk_tokens)
        kv = _paged_kv(geo["tokens"], geo["head_size"])
        transfer = _register(client, kv, chunk_tokens // KV_BLOCK)
        try:
            return {**_store_and_pull(client, transfer, kv, geo["tokens"], chunk_tokens, reps),
                    "chunks": geo["chunks"],
                    "bytes": sum(t[:, :t.shape[1] // 2].nbytes for t in kv.values())}
        finally:
            transfer.unregister().result(timeout=30)
            transfer.close()
    finally:
        client.close()
        zmq_ctx.term()


def _paged_kv(tokens: int, head_size: int) -> dict:
    """Per layer [2, blocks, block, heads, head_size]: twice the blocks `tokens`
    need, the first half the source, the second half where retrieves land."""
    import torch  # noqa: PLC0415

    torch.manual_seed(0)
    blocks = 2 * tokens // KV_BLOCK
    return {f"layer.{i}": torch.randn(2, blocks, KV_BLOCK, KV_HEADS, head_size)
            for i in range(KV_LAYERS)}


def _register(client, kv: dict, blocks_per_chunk: int):
    from lmcache.utils import EngineType  # noqa: PLC0415
    from lmcache.v1.multiprocess.group_view import EngineGroupInfo  # noqa: PLC0415
    from lmcache.v1.multiprocess.transfer_context import (  # noqa: PLC0415
        EngineDrivenTransferContext,
    )

    transfer = EngineDrivenTransferContext(4242, client)
    group = EngineGroupInfo(engine_group_id=0, layer_indices=tuple(range(KV_LAYERS)),
                            tokens_per_block=KV_BLOCK)
    transfer.register(kv, "kvmesh-bench", 1, blocks_per_chunk, 60.0,
                      layout_hints={"kv_layout": "NHD"}, engine_group_infos=[group],
                      engine_type=EngineType.VLLM)
    return transfer


def _store_and_pull(client, transfer, kv: dict, tokens: int, chunk_tokens: int,
                    reps: int) -> dict:
    import torch  # noqa: PLC0415
    from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey  # noqa: PLC0415

    ids = tuple(int(t) for t in _tokens(tokens))
    blocks, per_chunk = tokens // KV_BLOCK, chunk_tokens // KV_BLOCK

    def key(request_id: str, worker_id: int | None) -> IPCCacheServerKey:
        return IPCCacheServerKey(model_name="kvmesh-bench", world_size=1, worker_id=worker_id,
                                 token_ids=ids, start=0, end=tokens, request_id=request_id,
                                 num_kv_readers=1)

    start = time.perf_counter()
    stored = transfer.submit_store("store", key("store", 0), kv, [list(range(blocks))], None,
                                   per_chunk).result(timeout=300)
    out = {"stored": bool(stored), "store_s": time.perf_counter() - start, "pull_s": [],
           "retrieve_s": [], "hit_chunks": [], "intact": True}
    client.end_session("store").result(timeout=30)
    for rep in range(reps + 1):  # the first is a warm-up
        for layer in kv.values():
            layer[:, blocks:].zero_()
        rid = f"pull-{rep}"
        start = time.perf_counter()
        client.lookup(key(rid, None), 1).result(timeout=30)
        hit = client.wait_prefetch_status(rid, 30.0).result(timeout=40)
        found = time.perf_counter()
        ok = transfer.submit_retrieve(rid, key(rid, 0), kv, [list(range(blocks, 2 * blocks))],
                                      None, per_chunk).result(timeout=300)
        done = time.perf_counter()
        client.end_session(rid).result(timeout=30)
        out["intact"] = out["intact"] and bool(ok) and all(
            torch.equal(t[:, :blocks], t[:, blocks:]) for t in kv.values())
        if rep:
            out["pull_s"].append(done - start)
            out["retrieve_s"].append(done - found)
            out["hit_chunks"].append(hit)
    return out


COMMANDS = {"hash": cmd_hash, "lookup": cmd_lookup, "store": cmd_store, "transfer": cmd_transfer}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--json-args", default="{}")
    args = parser.parse_args()
    import logging  # noqa: PLC0415

    logging.disable(logging.WARNING)  # LMCache logs to stdout; keep stdout for the JSON
    result = COMMANDS[args.command](**json.loads(args.json_args))
    print("KVMESH-RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
