"""`kvmesh bench NAME`: run one benchmark, or `all` of them in turn."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "hash": "kvmesh.bench.hashing",
    "lookup": "kvmesh.bench.lookup",
    "transfer": "kvmesh.bench.transfer",
    "store": "kvmesh.bench.store",
    "hit": "kvmesh.bench.hit",
    "kernels": "kvmesh.bench.kernels",
    "ttft": "kvmesh.bench.ttft",
    "gossip": "kvmesh.bench.gossip",
    "netns": "kvmesh.bench.netns",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*BENCHMARKS, "all"):
        print("usage: kvmesh bench {" + ",".join([*BENCHMARKS, "all"]) + "} [ARGS]")
        return 2
    names = list(BENCHMARKS) if argv[0] == "all" else [argv[0]]
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        rc = module.main(argv[1:] if argv[0] != "all" else [])
        if rc:
            return rc
    return 0
