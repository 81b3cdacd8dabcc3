"""One vLLM engine in a fresh process, for the real-mesh tests.

    python engine_script.py SPEC_JSON

SPEC: model_dir, prompts (token id lists), max_tokens, kvmesh (bool), role,
prefix_caching, mp (scheduler and worker in separate processes), tp (tensor
parallel size: a worker process per rank, each with its own peer), corrupt
(test build: flip every loaded chunk after its checksum was verified; "envelope":
flip the first byte of each loaded envelope, an odd-length chunk, only from
round `corrupt_from_round` on), rounds (generate the prompts this many times;
each round's results are reported), linger
(keep the engine and its peer alive until stdin closes), wait_for_go (print a
ready line once the engine is up, then wait for a line on stdin before
generating; the line comes once the peer's directory holds entries, i.e.
what the mesh's other engines advertised to it). Prints one JSON line
with each prompt's tokens, logprobs and cached tokens (the last round's, and
every round's), plus the peer's counters and store stats and each rank's peer
id, members and counters; a lingering engine then waits for stdin to close.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

MARK = "@@kvmesh-test@@ "  # vLLM logs to stdout too; our lines carry this mark


CORRUPTING = {"on": True}  # switched on at `corrupt_from_round` in "envelope" mode


def flipped_bytes(data: np.ndarray, mode: str) -> np.ndarray | None:
    """The corrupted copy of a loaded chunk, or None to leave it alone."""
    if not CORRUPTING["on"]:
        return None
    if mode == "envelope":  # the envelope's magic: every decoder must refuse it
        if data.size % 2 == 0:
            return None
        out = data.copy()
        out[0] ^= 0xFF
        return out
    return data ^ 0x55


def install_corrupting_peer(mode: str) -> None:
    """Wrap the real embedded peer so loaded chunks are flipped after verification."""
    import torch

    from kvmesh.connectors.vllm import peer_factory
    from kvmesh.peers.embedded import open_peer, open_lookup_client

    class Corrupting:
        def __init__(self, inner):
            self._inner = inner
            self.slot_bytes = inner.slot_bytes

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def start_load(self, keys, reader=None):
            def flipped(index, data):  # a same-host holder's chunk, read in place
                bad = flipped_bytes(np.frombuffer(data, np.uint8), mode)
                return reader(index, data if bad is None else memoryview(bad))

            job = self._inner.start_load(keys, flipped if reader is not None else None)
            inner_results = job.results

            def results(timeout_s):
                for result in inner_results(timeout_s):
                    if result.data is not None:  # in the store's own slot
                        bad = flipped_bytes(result.data.view(-1).numpy(), mode)
                        if bad is not None:
                            result.data.view(-1)[:] = torch.from_numpy(bad)
                    yield result

            job.results = results
            return job

    peer_factory.set_factories(
        open_peer=lambda *a: Corrupting(open_peer(*a)), open_lookup_client=open_lookup_client)


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ["KVMESH_ENABLE"] = "1" if spec.get("kvmesh") else "0"
    if spec.get("corrupt"):
        install_corrupting_peer("envelope" if spec["corrupt"] == "envelope" else "all")
        CORRUPTING["on"] = spec.get("corrupt_from_round", 0) == 0
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    transfer = KVTransferConfig(kv_connector="KVMeshConnector", kv_role=spec.get("role", "kv_both"),
                                engine_id=spec.get("engine_id")) if spec.get("kvmesh") else None
    extra = {"distributed_executor_backend": "mp"} if spec.get("mp") else {}
    if spec.get("tp", 1) > 1:  # one worker process per rank
        extra = {"distributed_executor_backend": "mp", "tensor_parallel_size": spec["tp"]}
    llm = LLM(model=spec["model_dir"], dtype="float32", enforce_eager=True, block_size=32,
              kv_cache_memory_bytes=64 << 20, enable_prefix_caching=spec.get("prefix_caching", False),
              max_model_len=1024, seed=0, kv_transfer_config=transfer, **extra)
    if spec.get("wait_for_go"):
        wait_for_directory(spec)
        print(MARK + json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 8), logprobs=1)
    rounds = []
    for number in range(spec.get("rounds", 1)):
        if spec.get("corrupt") and number == spec.get("corrupt_from_round", 0):
            CORRUPTING["on"] = True
        outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params,
                            use_tqdm=False)
        rounds.append([summarize(out) for out in outs])
    print(MARK + json.dumps({"results": rounds[-1], "rounds": rounds, "peer": peer_counters(spec),
                             "store": peer_status(spec).get("store", {}),
                             "ranks": rank_statuses(spec)}), flush=True)
    if spec.get("linger"):
        sys.stdin.read()
    llm.llm_engine.engine_core.shutdown()


def summarize(out) -> dict:
    comp = out.outputs[0]
    return {"tokens": list(comp.token_ids), "cached": out.num_cached_tokens,
            "logprobs": [lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)]}


def peer_status(spec: dict) -> dict:
    """The embedded peer's /status (from its control API: it may live in a worker process)."""
    import glob
    import urllib.request

    if not spec.get("kvmesh"):
        return {}
    run_dir = os.environ["KVMESH_RUN_DIR"]
    for path in glob.glob(os.path.join(run_dir, f"{spec['engine_id']}-rank0.json")):
        url = json.load(open(path))["control_url"]
        with urllib.request.urlopen(url + "/status", timeout=5) as reply:
            return json.load(reply)
    return {}


def rank_statuses(spec: dict) -> list[dict]:
    """Each TP rank's peer: its id, members and counters, rank 0 first."""
    import urllib.request

    statuses = []
    for rank in range(spec.get("tp", 1) if spec.get("kvmesh") else 0):
        path = os.path.join(os.environ["KVMESH_RUN_DIR"], f"{spec['engine_id']}-rank{rank}.json")
        if not os.path.exists(path):  # this rank has no peer: the test says so, not a crash here
            statuses.append({})
            continue
        with urllib.request.urlopen(json.load(open(path))["control_url"] + "/status",
                                    timeout=5) as reply:
            status = json.load(reply)
        statuses.append({key: status[key] for key in ("peer_id", "members", "counters")})
    return statuses


def peer_counters(spec: dict) -> dict:
    status = peer_status(spec)
    return {**status["counters"], "peer_id": status["peer_id"]} if status else {}


def wait_for_directory(spec: dict, timeout_s: float = 30.0) -> None:
    """Until the peer's directory holds an entry: the others' advertisements reached it."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not peer_status(spec).get("directory_keys"):
        time.sleep(0.1)


if __name__ == "__main__":
    main()
