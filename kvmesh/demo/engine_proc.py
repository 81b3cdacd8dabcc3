"""One vLLM engine in its own process, driven over a pipe by the demo.

The engine runs vLLM's v1 engine in single-process mode (scheduler and worker
in this process) with the kvmesh connector, so its peer is embedded here and
joins the mesh through the seeds in its environment. vLLM's own prefix cache
is on, as users run it; which reuse a request got, vLLM's own or the
connector's, is vLLM's own account of it (see `engine_cache`).
Benchmarks may give it another connector instead (`connector`, e.g. LMCache's,
see kvmesh/bench/lmcache_vllm.py). Commands:

    ("generate", token_ids, max_tokens[, cache_salt])
                                         -> (output token ids, ttft seconds)
    ("reuse",)                           -> the last request's cached tokens, split:
                                            {"prompt_tokens", "vllm_cached_tokens",
                                             "connector_tokens"} (see `engine_cache`)
    ("reset_prefix_cache",)              -> None, once vLLM's own prefix cache is empty
                                            (the connector's store is left as it is)
    ("status",)                          -> the peer's status counters, or {}
    ("profile",)                         -> CPU and scheduler counters by thread role,
                                            kvmesh hook times (see `engine_profile`)
    ("stop",)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from kvmesh.demo import engine_cache, engine_profile

MAX_MODEL_LEN = 8192  # the local models' max_position_embeddings


def serve(conn: Connection, model_dir: str, env: dict[str, str], kvmesh: bool,
          kv_cache_bytes: int, block_size: int, log_path: str,
          connector: Callable[[], dict] | None = None) -> None:
    """Run until ("stop",). `connector`, when given (with kvmesh False), is
    called once here before vLLM is imported and returns the KVTransferConfig
    arguments of another connector; it must pickle (a module-level function or
    a functools.partial of one)."""
    os.environ.update(env)
    _redirect_output(log_path)
    other = connector() if connector is not None else None
    from vllm import LLM, SamplingParams  # noqa: PLC0415 - heavy; only in the child
    from vllm.config import KVTransferConfig  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    kv_transfer = KVTransferConfig(**other) if other is not None else None
    if kvmesh:
        kv_transfer = KVTransferConfig(kv_connector="KVMeshConnector", kv_role="kv_both",
                                       engine_id=env.get("KVMESH_DEMO_ENGINE", "demo"))
    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, block_size=block_size,
              kv_cache_memory_bytes=kv_cache_bytes, max_model_len=MAX_MODEL_LEN, seed=0,
              enable_prefix_caching=True, kv_transfer_config=kv_transfer,
              disable_log_stats=False)
    reuse = engine_cache.ReuseWatch(llm)
    conn.send(("ready", None))
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        if cmd[0] == "status":
            conn.send(("ok", _peer_status(env.get("KVMESH_DEMO_ENGINE", "demo"))))
            continue
        if cmd[0] == "profile":
            conn.send(("ok", engine_profile.profile(llm)))
            continue
        if cmd[0] == "reuse":
            conn.send(("ok", reuse.take()))
            continue
        if cmd[0] == "reset_prefix_cache":
            try:
                engine_cache.reset_prefix_cache(llm)
            except TimeoutError as exc:
                conn.send(("error", str(exc)))
                continue
            conn.send(("ok", None))
            continue
        _, token_ids, max_tokens, *salt = cmd
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        prompt = TokensPrompt(prompt_token_ids=token_ids)
        if salt and salt[0]:
            prompt["cache_salt"] = salt[0]  # keys both vLLM's prefix cache and kvmesh's chunks
        reuse.take()
        start = time.perf_counter()
        (out,) = llm.generate([prompt], params, use_tqdm=False)
        total = time.perf_counter() - start
        metrics = getattr(out, "metrics", None)
        ttft = getattr(metrics, "first_token_latency", 0.0) or total
        conn.send(("ok", (list(out.outputs[0].token_ids), ttft)))
    conn.close()


def _redirect_output(log_path: str) -> None:
    """Send the engine's own logs to a file so the demo's table stays readable."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _peer_status(engine_id: str) -> dict:
    from kvmesh.peers.embedded import embedded_peer  # noqa: PLC0415

    handle = embedded_peer(engine_id)
    if handle is None:
        return {}
    return {**handle.counters(), "peer_id": handle.peer_id}
