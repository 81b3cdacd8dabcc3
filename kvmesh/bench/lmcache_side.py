"""LMCache's side of the side-by-side benchmarks; runs in LMCache's own venv.

Started by `kvmesh.bench.lmcache_run` as `.venv-lmcache/bin/python <this file> CMD
--json-args '{...}'`; prints one JSON object. Imports only the standard
library, numpy, torch and lmcache (kvmesh is not installed in that venv), and
only inside the commands, so kvmesh can import this module's name safely.

    hash    ChunkedTokenDatabase.process_tokens, from a list and a tensor
    lookup  LMCacheEngine.lookup of a stored prefix (LocalCPUBackend, mock GPU)
    store   LocalCPUBackend put/get bookkeeping per chunk (no bytes copied)

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


COMMANDS = {"hash": cmd_hash, "lookup": cmd_lookup, "store": cmd_store}


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
