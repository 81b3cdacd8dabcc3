"""`kvmesh` command line: each subcommand lives in its own module, imported on use."""

from __future__ import annotations

import argparse
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
    """Run `kvmesh COMMAND [ARGS]`; `--help` and a bad command exit through
    argparse (SystemExit 0 and 2) before any command module is imported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the command name is parsed here: ARGS reach the command verbatim.
    command = _parser().parse_args(argv[:1]).command
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(argv[1:]) or 0)


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<10} {what}" for name, (_, what) in COMMANDS.items())
    p = argparse.ArgumentParser(prog="kvmesh", usage="%(prog)s [-h] COMMAND [ARGS]",
                                description="a peer-to-peer KV-cache mesh for LLM inference engines",
                                epilog=f"commands:\n{listing}\n\n`kvmesh COMMAND --help` "
                                       "lists a command's options.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    return p


if __name__ == "__main__":
    sys.exit(main())
