"""`kvmesh bench fuzz`: mutated and random input through the three surfaces other hosts feed.

- codec: byte streams into `transfer.codec.FrameDecoder.receive_data`, in
  random splits, from valid encodings of every frame type mutated (bit
  flips, inserts, deletes, length-field edits, truncations, splices of two
  frames, oversized counts, wrong header values); the documented rejection is
  `RemoteProtocolError`, and a valid stream must decode to its frames
  (`fuzz_frames`);
- gossip: datagrams through the seal into a running `Swim` on a simulated
  clock, mutated before sealing (with the test secret, so they reach the
  decoder and the engine) and after (so the seal must refuse them), plus
  replays, stale and wrongly keyed envelopes; nothing may raise
  (`fuzz_gossip`);
- api: requests to the control API in-process (aiohttp's test server, a
  stand-in peer): methods, paths, headers, content types and bodies, some as
  raw mutated bytes; no answer may be 5xx (`fuzz_api`).

Per surface: inputs, inputs/s, crashes (any other exception, a broken
contract, a 5xx), hangs (inputs over `--hang-s`, interrupted by a watchdog
where the surface runs synchronously), peak RSS and the RSS growth from the
first 10% of the surface's inputs to its end (a leak signal). The first few
failing inputs are saved, hex-encoded with how they were fed, into
benchmarks/results/fuzz.{md,json}. Exit status 1 if anything crashed or hung.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from kvmesh.bench.fuzz_api import ApiSurface, ServerError
from kvmesh.bench.fuzz_frames import CodecSurface
from kvmesh.bench.fuzz_gossip import GossipSurface
from kvmesh.bench.fuzz_tally import InputHang, Tally, Watchdog
from kvmesh.bench.report import Table

SURFACES = ("codec", "gossip", "api")
MIB = 1 << 20


def drive(surface, tally: Tally, rng: random.Random, deadline: float,
          watchdog: Watchdog | None, hang_s: float) -> None:
    """Run `tally.planned` inputs of `surface` (fewer if `deadline` passes first)."""
    started = time.monotonic()
    for _ in range(tally.planned):
        if time.monotonic() > deadline:
            break
        inp = surface.make(rng)
        seconds, hung = 0.0, False
        try:
            t0 = time.monotonic()
            if watchdog:
                watchdog.arm()
            try:
                rejected, broken = surface.run(inp)
            finally:
                seconds = watchdog.disarm() if watchdog else time.monotonic() - t0
            tally.rejected += rejected
            if broken:
                tally.crash(f"contract: {broken}", inp.as_json())
        except InputHang:
            hung = True
            tally.hang(seconds, inp.as_json())
        except ServerError as exc:
            lines = exc.trace.strip().splitlines() or ["no traceback logged"]
            tally.crash(f"HTTP {exc.status}: {lines[-1]}", inp.as_json(), exc.trace)
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            tally.crash_from(exc, inp.as_json())
        if seconds > hang_s and not hung:
            tally.hang(seconds, inp.as_json())
        tally.count()
    tally.finish(time.monotonic() - started)


def run_surface(name: str, planned: int, seconds: float | None, seed: int,
                hang_s: float) -> tuple[Tally, dict]:
    """One surface's run; returns its tally and extra figures for the notes."""
    tally = Tally(name, planned)
    rng = random.Random(f"{seed}:{name}")
    deadline = time.monotonic() + (seconds if seconds else float("inf"))
    if name == "api":
        surface = ApiSurface(hang_s)
        try:
            drive(surface, tally, rng, deadline, None, hang_s)
        finally:
            surface.close()
        return tally, {"statuses": dict(sorted(surface.statuses.items()))}
    surface = CodecSurface() if name == "codec" else GossipSurface()
    with Watchdog(hang_s) as watchdog:
        drive(surface, tally, rng, deadline, watchdog, hang_s)
    return tally, {}


def report(tallies: list[Tally], extras: dict, args: argparse.Namespace) -> Table:
    table = Table("fuzz", ["surface", "inputs", "inputs/s", "rejected", "crashes", "hangs",
                           "peak RSS MiB", "RSS growth MiB (10%->end)"])
    for t in tallies:
        table.add(t.surface, t.inputs, round(t.rate), t.rejected, t.crashes, t.hangs,
                  round(t.peak_rss / MIB, 1), round(t.rss_growth / MIB, 1))
    table.note(f"seed {args.seed}; hang bound {args.hang_s}s per input; "
               f"{sum(t.inputs for t in tallies)} inputs in {sum(t.seconds for t in tallies):.1f}s")
    table.note("rejected: refused the documented way (codec: RemoteProtocolError; gossip: dropped "
               "by the seal or the decoder; api: 4xx); crashes: any other exception, a broken "
               "contract, or a 5xx")
    for name, extra in extras.items():
        if extra:
            table.note(f"{name}: {json.dumps(extra)}")
    for t in tallies:
        if t.crash_kinds:
            table.note(f"{t.surface} crash kinds: {json.dumps(t.crash_kinds)}")
        for i, failure in enumerate(t.failures):
            table.note(f"{t.surface} failure {i + 1} (replay from the hex):\n```\n"
                       f"{json.dumps(failure.as_json(), indent=1)}\n```")
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    share = args.inputs // len(SURFACES)
    plans = {"codec": share, "gossip": share, "api": args.inputs - 2 * share}
    per_surface_s = args.seconds / len(SURFACES) if args.seconds else None
    tallies, extras = [], {}
    for name in SURFACES:
        tally, extras[name] = run_surface(name, plans[name], per_surface_s, args.seed, args.hang_s)
        tallies.append(tally)
        print(f"  {name}: {tally.inputs} inputs, {tally.rate:,.0f}/s, {tally.crashes} crashes, "
              f"{tally.hangs} hangs", flush=True)
    report(tallies, extras, args).emit()
    return 1 if any(t.crashes or t.hangs for t in tallies) else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000,
                   help="inputs in all, a third per surface (default 10^6)")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop a surface after a third of this many seconds, inputs left or not")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-s", type=float, default=1.0, help="an input running longer is a hang")
    return p
