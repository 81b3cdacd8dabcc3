"""One real `sgl.Engine` on CPU with HiCache and the kvmesh backend, in its own process.

Started by test_sglang_engine.py with the test-only shims on PYTHONPATH.
Prints {"ready": true} once the engine is up, then answers JSON lines:

    {"op": "generate", "prompt": "..."}  -> {"text", "output_ids", "storage_tokens"}
    {"op": "exit"}
"""

from __future__ import annotations

import json
import os
import sys

EXTRA_CONFIG = {"backend_name": "kvmesh", "module_path": "kvmesh.connectors.sglang",
                "class_name": "KvmeshHiCacheStorage", "interface_v1": 1}


def engine_args(model_dir: str) -> dict:
    return dict(model_path=model_dir, device="cpu", attention_backend="torch_native",
                sampling_backend="pytorch", page_size=16, dtype="float32", log_level="warning",
                max_total_tokens=4096, enable_hierarchical_cache=True, hicache_ratio=2.0,
                hicache_mem_layout="layer_first", hicache_io_backend="direct",
                hicache_storage_backend="dynamic",
                hicache_storage_backend_extra_config=json.dumps(EXTRA_CONFIG))


def main(model_dir: str) -> int:
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    import sglang as sgl

    engine = sgl.Engine(**engine_args(model_dir))
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                break
            out = engine.generate(cmd["prompt"], {"temperature": 0, "max_new_tokens": 16})
            details = out["meta_info"].get("cached_tokens_details") or {}
            print(json.dumps({"text": out["text"], "output_ids": out["output_ids"],
                              "storage_tokens": details.get("storage", 0)}), flush=True)
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
