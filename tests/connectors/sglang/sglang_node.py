"""An SGLang "engine" without a model, in its own process, for the mesh tests.

Run as `python sglang_node.py`; reads one JSON command per line, answers one
JSON line each. Its KVMESH_* settings come from its environment, as in a real
SGLang process; `open` may name seeds. Each backend is made the way SGLang's
cache controller makes it (factory, then register_mem_pool_host) over a real
host pool, and driven through a bare HiCacheController:

    {"op": "open", "name": "a", "layout": "page_first", "v1": true, "seeds": "127.0.0.1:7000"}
    {"op": "backup", "name": "a", "seed": 1, "pages": 40}   -> {"tokens": 160}
    {"op": "query", "name": "a", "seed": 1, "pages": 40}    -> {"hit": 160} (waits for all)
    {"op": "fetch", "name": "a", "seed": 1, "pages": 40}    -> {"hit": 160, "loaded": 160, "exact": [...]}
    {"op": "close", "name": "a"} | {"op": "exit"}
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import sglang_pools as sp


class Node:
    def __init__(self) -> None:
        self.ctrls = {}

    def open(self, cmd: dict) -> dict:
        if cmd.get("seeds"):
            os.environ["KVMESH_SEEDS"] = cmd["seeds"]
        pool = sp.host_pool(cmd["layout"])
        backend = sp.create_backend(pool, sp.storage_config(interface_v1=cmd["v1"]))
        self.ctrls[cmd["name"]] = sp.bare_controller(backend, pool, cmd["v1"])
        peer = backend.peer if hasattr(backend, "peer") else backend._backend.peer
        return {"peer_id": peer.peer_id}

    def backup(self, cmd: dict) -> dict:
        tokens = sp.prompt(cmd["seed"], cmd["pages"])
        return {"tokens": sp.backup(self.ctrls[cmd["name"]], tokens, cmd["seed"])}

    def query(self, cmd: dict) -> dict:
        tokens = sp.prompt(cmd["seed"], cmd["pages"])
        return {"hit": sp.wait_for_hits(self.ctrls[cmd["name"]], tokens)}

    def fetch(self, cmd: dict) -> dict:
        tokens = sp.prompt(cmd["seed"], cmd["pages"])
        hit, loaded, exact = sp.fetch(self.ctrls[cmd["name"]], tokens, cmd["seed"])
        return {"hit": hit, "loaded": loaded, "exact": exact}

    def close(self, cmd: dict) -> dict:
        self.ctrls.pop(cmd["name"]).storage_backend.close()
        return {"closed": True}


def main() -> int:
    node = Node()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        try:
            reply = getattr(node, cmd["op"])(cmd)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails
            reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
