"""`kvmesh bench NAME`: run one benchmark, or `all` of them in turn (fuzz and soak, long
robustness runs, only by name)."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "hash": "kvmesh.bench.hashing",
    "lookup": "kvmesh.bench.lookup",
    "transfer": "kvmesh.bench.transfer",
    "store": "kvmesh.bench.store",
    "hit": "kvmesh.bench.hit",
    "kernels": "kvmesh.bench.kernels",
    "codecs": "kvmesh.bench.codecs",
    "ttft": "kvmesh.bench.ttft",
    "gossip": "kvmesh.bench.gossip",
    "netns": "kvmesh.bench.netns",
}
# Robustness runs, by name only: `all` leaves them out (each takes many minutes at its defaults).
CHECKS = {
    "fuzz": "kvmesh.bench.fuzz",
    "soak": "kvmesh.bench.soak",
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark NAME with ARGS, or `all` at their defaults; `--help`
    and bad usage exit through argparse before any benchmark starts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only NAME is parsed here: ARGS reach the benchmark's own parser verbatim.
    name = _parser().parse_args(argv[:1]).name
    if name != "all":
        return _run(name, argv[1:])
    argparse.ArgumentParser(prog="kvmesh bench all", description="run "
                            f"{', '.join(BENCHMARKS)} in turn, each at its defaults; "
                            "stop at the first that fails").parse_args(argv[1:])
    for each in BENCHMARKS:
        rc = _run(each, [])
        if rc:
            return rc
    return 0


def _run(name: str, argv: list[str]) -> int:
    return int(importlib.import_module({**BENCHMARKS, **CHECKS}[name]).main(argv) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench", usage="%(prog)s [-h] NAME [ARGS]",
                                description=__doc__,
                                epilog="`kvmesh bench NAME --help` lists NAME's options.")
    names = [*BENCHMARKS, *CHECKS, "all"]
    p.add_argument("name", choices=names, metavar="NAME",
                   help="{" + ", ".join(names) + "}")
    return p
