"""`kvmesh bench soak`: pulls that verify every byte while holders are killed and come back.

H holder peers and one or two pullers (`kvmesh peer` processes on loopback,
one mesh secret, a full directory; see `soak_mesh`). Holders fill
deterministic chunks; pullers clear and `load` one seed after another, the
peer verifying every pulled byte against the content derived from its key.
Every `--kill-every` seconds a random holder that is up is SIGKILLed and
started again on its port (so it rejoins as the same peer) and refilled.

Reported: duration, pulls, chunks verified, chunks with wrong bytes (must be
0), failed chunks (expected while holders are down), hangs (a `load` with no
reply within `--hang-s`: must be 0), each puller's RSS and open descriptors,
and the pools of other processes it has mapped (count, mapping lines,
address space) at start and end: pools are memfds, and a dead holder's pool
must not stay mapped. Start and end are both taken with every holder up
and after one load of every seed. Also /dev/shm usage at start and end.
Exit status 1 on wrong bytes, a hang, or a puller that died.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from kvmesh.bench import soak_mesh as sm
from kvmesh.bench.procs import PeerProcess, wait_for_members
from kvmesh.bench.report import Table
from kvmesh.bench.soak_probe import (
    ProcReading,
    ShmReading,
    own_pool_inode,
    read_process,
    read_shm,
)

MIB = 1 << 20
RESTART_LIMIT_S = 60.0  # a holder not back within this is killed and started again


class Soak:
    """One soak run. Single-threaded: the loop polls every peer's pipe in turn."""

    def __init__(self, args: argparse.Namespace, run_dir: str) -> None:
        self.args = args
        self.shape = sm.MeshShape(args.holders, args.pullers, args.slot_bytes, args.chunks, run_dir)
        self.rng = random.Random(args.seed)
        self.pullers: list[sm.Puller] = []
        self.holders: list[sm.Holder] = []
        self.totals = {"pulls": 0, "verified": 0, "wrong": 0, "failed": 0, "hangs": 0,
                       "errors": 0, "kills": 0}
        self.problems: list[str] = []

    @property
    def seed_peer(self) -> str:
        return self.pullers[0].proc.peer_id

    def start(self) -> None:
        env = self.shape.env()
        for i in range(self.args.pullers):
            seeds = {"KVMESH_SEEDS": self.seed_peer} if i else {}
            proc = PeerProcess({**env, **seeds}, self.shape.slot_bytes)
            self.pullers.append(sm.Puller(proc.wait_ready()))
        for i in range(self.args.holders):
            proc = sm.start_holder(self.shape, self.seed_peer).wait_ready()
            self.holders.append(sm.Holder(i, proc, int(proc.peer_id.rsplit(":", 1)[1]), proc.peer_id))
        wait_for_members([p.proc for p in self.pullers] + [h.proc for h in self.holders],
                         self.args.holders + self.args.pullers, timeout=30)
        for h in self.holders:
            sm.fill_holder(self.shape, h)
        for p in self.pullers:
            p.own_inode = own_pool_inode(p.proc.send("status")["pool_path"])

    def stop(self) -> None:
        for peer in [*self.pullers, *self.holders]:
            peer.proc.stop()

    def settle(self) -> tuple[list[ProcReading], ShmReading]:
        """Every holder up, every seed loaded once by each puller; then the readings."""
        if not sm.wait_all_up(self.shape, self.holders, self.seed_peer, RESTART_LIMIT_S):
            self.problems.append("a holder did not come back within the restart limit")
        for p in self.pullers:
            for seed in self.shape.seeds():
                p.proc.send("clear", timeout=self.args.hang_s)
                p.proc.write("load", seed=seed, chunks=self.shape.chunks, timeout=self.args.load_timeout)
                p.busy_since = time.monotonic()
                try:
                    reply = p.proc.read(timeout=self.args.hang_s)
                except TimeoutError:
                    self.totals["hangs"] += 1
                    self.problems.append(f"puller {p.proc.peer_id}: no answer to a load while settling")
                    break
                self._take_reply(p, reply, time.monotonic())
        return [read_process(p.proc.proc.pid, p.own_inode) for p in self.pullers], read_shm()

    def run(self, seconds: float) -> float:
        """Pull and kill for `seconds`; returns the time it ran."""
        started = time.monotonic()
        end, next_kill = started + seconds, started + self.args.kill_every
        while time.monotonic() < end and not self.problems:
            now = time.monotonic()
            if now >= next_kill:
                self._kill_one(now)
                next_kill += self.args.kill_every
            for h in self.holders:
                if h.state != "up":
                    self._step_holder(h, now)
            for p in self.pullers:
                self._step_puller(p, now)
            time.sleep(0.005)
        self._drain(started)
        return time.monotonic() - started

    def _kill_one(self, now: float) -> None:
        up = [h for h in self.holders if h.state == "up"]
        if up:
            sm.kill_and_restart(self.shape, self.rng.choice(up), self.seed_peer, now)
            self.totals["kills"] += 1

    def _step_holder(self, h: sm.Holder, now: float) -> None:
        if now - h.since > RESTART_LIMIT_S:
            sm.kill_and_restart(self.shape, h, self.seed_peer, now)
            self.problems.append(f"holder {h.index} was not back within {RESTART_LIMIT_S}s")
            return
        sm.step_restart(self.shape, h, self.seed_peer, now)

    def _step_puller(self, p: sm.Puller, now: float) -> None:
        if p.proc.proc.poll() is not None:
            self.problems.append(f"puller {p.proc.peer_id} exited with {p.proc.proc.returncode}")
            return
        if p.busy_since is None:
            try:
                p.proc.send("clear", timeout=self.args.hang_s)
            except TimeoutError:
                self.totals["hangs"] += 1
                self.problems.append(f"puller {p.proc.peer_id}: no answer to a clear")
                return
            p.proc.write("load", seed=self.rng.choice(self.shape.seeds()), chunks=self.shape.chunks,
                         timeout=self.args.load_timeout)
            p.busy_since, p.flagged_hang = now, False
            return
        if sm.readable(p.proc):
            self._take_reply(p, p.proc.read(timeout=5), now)
        elif now - p.busy_since > self.args.hang_s and not p.flagged_hang:
            self.totals["hangs"] += 1
            p.flagged_hang = True
        elif now - p.busy_since > self.args.hang_s + RESTART_LIMIT_S:
            self.problems.append(f"puller {p.proc.peer_id} gave no answer for {now - p.busy_since:.0f}s")

    def _take_reply(self, p: sm.Puller, reply: dict, now: float) -> None:
        p.seconds_max = max(p.seconds_max, now - p.busy_since)
        p.busy_since = None
        if "error" in reply:
            self.totals["errors"] += 1
            self.problems.append(f"load answered an error: {reply['error']}")
            return
        self.totals["pulls"] += 1
        self.totals["verified"] += reply["ok"]
        self.totals["wrong"] += reply["corrupt"]
        self.totals["failed"] += reply["failed"]

    def _drain(self, started: float) -> None:
        """Take the replies of loads still out when time ran out (they count, hangs too)."""
        while any(p.busy_since is not None for p in self.pullers) and not self.problems:
            now = time.monotonic()
            for p in self.pullers:
                if p.busy_since is not None:
                    self._step_puller(p, now)
            time.sleep(0.005)


def report(soak: Soak, seconds: float, start: tuple, end: tuple) -> Table:
    t, args = soak.totals, soak.args
    table = Table("soak", ["figure", "value"])
    table.add("duration s", round(seconds, 1))
    table.add("holders / pullers", f"{args.holders} / {args.pullers}")
    table.add("kills (SIGKILL + restart)", t["kills"])
    table.add("restarts that came back on another port", sum(h.new_identity for h in soak.holders))
    restarts = sorted(s for h in soak.holders for s in h.restart_s)
    if restarts:
        table.add("restart s, kill to refilled (median / max)",
                  f"{restarts[len(restarts) // 2]:.1f} / {restarts[-1]:.1f}")
    table.add("pulls (load ops)", t["pulls"])
    table.add("chunks verified", t["verified"])
    table.add("chunks with wrong bytes", t["wrong"])
    table.add("chunks failed or missed", t["failed"])
    table.add(f"hangs (no load reply within {args.hang_s:g}s)", t["hangs"])
    table.add("slowest load reply s", round(max(p.seconds_max for p in soak.pullers), 2))
    for i, (a, b) in enumerate(zip(start[0], end[0])):
        table.add(f"puller {i} RSS MiB (start -> end)", f"{a.rss_bytes / MIB:.1f} -> {b.rss_bytes / MIB:.1f}")
        table.add(f"puller {i} open fds", f"{a.open_fds} -> {b.open_fds}")
        table.add(f"puller {i} other processes' pools mapped", f"{a.foreign_pools} -> {b.foreign_pools}")
        table.add(f"puller {i} their mappings (lines, MiB)",
                  f"{a.foreign_mappings}, {a.foreign_bytes / MIB:.1f} -> "
                  f"{b.foreign_mappings}, {b.foreign_bytes / MIB:.1f}")
    (_, shm0), (_, shm1) = start, end
    table.add("/dev/shm used MiB (whole host)", f"{shm0.used_bytes / MIB:.1f} -> {shm1.used_bytes / MIB:.1f}")
    table.add("/dev/shm kvmesh files", f"{shm0.kvmesh_files} -> {shm1.kvmesh_files}")
    table.note(f"{args.holders} holders x 2 seeds x {args.chunks} chunks of {args.slot_bytes} bytes; "
               f"a kill every {args.kill_every:g}s; load timeout {args.load_timeout:g}s; seed {args.seed}")
    table.note("start and end readings are taken with every holder up, after each puller loaded "
               "every seed once; loads while settling count in the totals")
    for problem in soak.problems:
        table.note(f"problem: {problem}")
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvmesh-soak-") as run_dir:
        soak = Soak(args, run_dir)
        try:
            soak.start()
            start = soak.settle()
            seconds = soak.run(args.minutes * 60)
            end = soak.settle()
        finally:
            soak.stop()
    report(soak, seconds, start, end).emit()
    t = soak.totals
    return 1 if t["wrong"] or t["hangs"] or soak.problems else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--holders", type=int, default=3)
    p.add_argument("--pullers", type=int, default=2, choices=(1, 2))
    p.add_argument("--kill-every", type=float, default=3.0, help="seconds between holder kills")
    p.add_argument("--chunks", type=int, default=16, help="chunks per seed")
    p.add_argument("--slot-bytes", type=int, default=256 << 10)
    p.add_argument("--load-timeout", type=float, default=10.0, help="a load op's own timeout")
    p.add_argument("--hang-s", type=float, default=30.0, help="a load with no reply by then is a hang")
    p.add_argument("--seed", type=int, default=0)
    return p
