"""One vLLM engine with kvmesh in a process of its own, for the codec benchmarks.

    python -m kvmesh.bench.codec_engine SPEC_JSON      (settings: KVMESH_* in its environment)

A separate process (not a multiprocessing child) so that a benchmark can start
it inside a network namespace (`ip netns exec ... python -m ...`). vLLM runs
in single-process mode, eager, with its own prefix cache OFF: every cached
token an answer reports came from kvmesh. SPEC: model_dir, dtype, engine_id,
block_size, kv_cache_bytes, max_model_len, log_path (vLLM's own output goes
there), broken (register the negative control's codec, `codec_broken`, in
this process before the engine reads its settings).

Commands, one JSON object per line on stdin; one JSON reply per line on the
original stdout (an error reply is {"error": ...}):

    {"op": "generate", "prompts": [[ids]], "max_tokens": n}
        -> {"results": [{"tokens", "logprobs", "cached", "ttft_s"}], "seconds",
            "loads": [{"seconds", "chunks", "bytes"}]}   (loads: this call's)
    {"op": "control", "method", "path", "body"?}
        -> the reply of the engine's own peer's control API (/status, /lookup,
           /compress, ...; the mesh secret, when set, sent as a bearer token)
    {"op": "wait_saved", "chunks": n}     -> {"chunks_saved"} once at least n are saved
    {"op": "stop"}

The first line out is {"ready": true} once the engine is up.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

from kvmesh.bench.load_timer import LoadTimer

CONTROL_TIMEOUT_S = 120  # a /compress of many chunks encodes each


def main() -> None:
    spec = json.loads(sys.argv[1])
    replies = _take_stdout(spec["log_path"])
    if spec.get("broken"):
        from kvmesh.bench.codec_broken import install  # noqa: PLC0415

        install()
    timer = LoadTimer.install()
    llm = _engine(spec)
    engine = _Engine(llm, spec["engine_id"], timer)
    _reply(replies, {"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "stop":
            break
        try:
            _reply(replies, engine.run(cmd))
        except Exception as exc:  # noqa: BLE001 - the driver gets the reason, the engine lives on
            _reply(replies, {"error": f"{type(exc).__name__}: {exc}"})
    llm.llm_engine.engine_core.shutdown()


def _take_stdout(log_path: str):
    """The original stdout, for replies; fds 1 and 2 then go to `log_path`
    (vLLM and its libraries print to both)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return replies


def _reply(replies, obj: dict) -> None:
    replies.write(json.dumps(obj) + "\n")


def _engine(spec: dict):
    from vllm import LLM  # noqa: PLC0415 - heavy: only in the engine process
    from vllm.config import KVTransferConfig  # noqa: PLC0415

    transfer = KVTransferConfig(kv_connector="KVMeshConnector", kv_role="kv_both",
                                engine_id=spec["engine_id"])
    return LLM(model=spec["model_dir"], dtype=spec["dtype"], enforce_eager=True,
               block_size=spec["block_size"], kv_cache_memory_bytes=spec["kv_cache_bytes"],
               max_model_len=spec["max_model_len"], enable_prefix_caching=False, seed=0,
               kv_transfer_config=transfer)


class _Engine:
    def __init__(self, llm, engine_id: str, timer: LoadTimer) -> None:
        self._llm = llm
        self._engine_id = engine_id
        self._timer = timer

    def run(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "generate":
            return self.generate(cmd["prompts"], cmd["max_tokens"])
        if op == "control":
            return self.control(cmd["method"], cmd["path"], cmd.get("body"))
        if op == "wait_saved":
            return self.wait_saved(cmd["chunks"], cmd.get("timeout_s", 120))
        raise ValueError(f"unknown op {op!r}")

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict:
        from vllm import SamplingParams  # noqa: PLC0415

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                logprobs=1)
        self._timer.take()
        start = time.perf_counter()
        outs = self._llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                  use_tqdm=False)
        seconds = time.perf_counter() - start
        return {"results": [_summary(out) for out in outs], "seconds": seconds,
                "loads": self._timer.take()}

    def wait_saved(self, chunks: int, timeout_s: float) -> dict:
        """Saves land after the answer; a reuse round must not race them."""
        deadline = time.monotonic() + timeout_s
        while True:
            saved = self.control("GET", "/status")["counters"]["chunks_saved"]
            if saved >= chunks or time.monotonic() > deadline:
                return {"chunks_saved": saved}
            time.sleep(0.05)

    def control(self, method: str, path: str, body: dict | None = None,
                timeout_s: float = CONTROL_TIMEOUT_S) -> dict:
        from kvmesh.peers.embedded import embedded_peer  # noqa: PLC0415

        handle = embedded_peer(self._engine_id)
        if handle is None:
            raise RuntimeError("no kvmesh peer in this engine")
        headers = {"Content-Type": "application/json"}
        secret = os.environ.get("KVMESH_SECRET")
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(handle.peer.control_url + path, data=data,
                                         headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.load(reply)


def _summary(out) -> dict:
    comp = out.outputs[0]
    metrics = getattr(out, "metrics", None)
    return {"tokens": list(comp.token_ids), "cached": out.num_cached_tokens,
            "logprobs": [lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)],
            "ttft_s": getattr(metrics, "first_token_latency", None)}


if __name__ == "__main__":
    main()
