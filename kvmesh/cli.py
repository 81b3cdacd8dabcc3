"""`kvmesh` command line: each subcommand lives in its own module, imported on use."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("kvmesh.demo", "several vLLM engines sharing prefixes through the mesh"),
    "peer": ("kvmesh.peers.standalone", "run a cache-only peer driven over stdin"),
    "inspect": ("kvmesh.inspect", "show members, ring, tiers and hit rates of a mesh"),
    "bench": ("kvmesh.bench.main", "benchmarks with same-run baselines"),
    "pd-proxy": ("kvmesh.connectors.vllm.pd_proxy", "prefill/decode proxy for two vLLM servers"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: kvmesh COMMAND [ARGS]\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<10} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
