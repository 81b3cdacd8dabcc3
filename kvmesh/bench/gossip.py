"""`kvmesh bench gossip`: SWIM membership at 200 and 1,000 peers, on the simulator.

Everything runs in one process on `sim_network` (seeded, event-driven
simulated clock; datagrams take 0.5-2 ms). For each cluster size the same
warm cluster (every peer preloaded with every other, as after a converged
join) goes through, in order:

- join:   a new peer joins through one seed; time (and gossip rounds of
          `gossip_interval_s`) until every peer lists it, next to the
          push-gossip estimate log_{1+f}(n) + ln(n)/f rounds;
- kill:   one peer crashes silently; time until every other marks it dead,
          next to `detection_bound_s` (the bound the tests assert);
- loss:   random loss of 1% and 5% of datagrams for a stretch of simulated
          time, then scaled to an hour: false suspicions (refutations) and
          false deaths (a live peer marked dead by anyone; each
          (peer, incarnation) counted once). A zero is reported with its
          95% upper bound (3 events per simulated span, the rule of three).
          The span is `--loss-minutes`, shortened to `--peer-minutes / n`
          so the 1,000-peer runs stay within a couple of CPU minutes.

Then the ring at 1,000 peers (`HashRing`, 128 vnodes as `MeshConfig`):
share of the circle owned (max / mean, min / mean) and the keys that
change primary owner on one join and one leave, as a multiple of 1/N,
exactly from the arcs (the newcomer's share after, the leaver's before), and
the keys whose owner set at r=2 changes, sampled. Baseline: an ideal ring
moves exactly 1/N of primaries (2/N of r=2 owner sets) per join or leave.

Caveats: the simulator has no CPU contention, so Lifeguard's local-health
scaling never triggers for the reasons it exists; loss is independent per
datagram (real loss is bursty); the timings are the memberlist LAN defaults
(`SwimConfig()`), in simulated seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field

from kvmesh.hashring.ring import HashRing
from kvmesh.membership.sim_network import SimClock, SimNetwork
from kvmesh.membership.swim import Swim
from kvmesh.membership.timing import SwimConfig, detection_bound_s, dissemination_rounds


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = SwimConfig()
    rows = []
    for n in args.peers:
        started = time.process_time()
        row = bench_cluster(n, cfg, args.loss, min(args.loss_minutes, args.peer_minutes / n),
                            args.seed)
        row["cpu_s"] = round(time.process_time() - started, 1)
        rows.append(row)
        if not args.json:
            _print_cluster(row, cfg)
    ring = bench_ring(args.ring_peers, args.vnodes, args.keys, args.seed)
    if args.json:
        print(json.dumps({"clusters": rows, "ring": ring}, indent=1))
    else:
        _print_ring(ring)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmesh bench gossip", description=__doc__.split("\n")[0])
    p.add_argument("--peers", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--loss", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--loss-minutes", type=float, default=10.0,
                   help="simulated minutes per loss rate (default 10)")
    p.add_argument("--peer-minutes", type=float, default=2000.0,
                   help="cap on peers x simulated minutes per loss rate (default 2000)")
    p.add_argument("--ring-peers", type=int, default=1000)
    p.add_argument("--vnodes", type=int, default=128)
    p.add_argument("--keys", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    return p


@dataclass
class SimCluster:
    """n preloaded engines; peer id == gossip address; counts left events by (peer, inc)."""

    n: int
    cfg: SwimConfig
    seed: int
    clock: SimClock = field(default_factory=SimClock)
    nodes: dict[str, Swim] = field(default_factory=dict)
    deaths: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.net = SimNetwork(self.clock, seed=self.seed)
        for i in range(self.n):
            self.add(_addr(i))
        everyone = [(a, a) for a in self.nodes]
        for node in self.nodes.values():
            node.preload(everyone)
            node.start()

    def add(self, addr: str) -> Swim:
        def on_change(joined, left, observer=addr):
            node = self.nodes[observer]
            self.deaths.update((p, node.incarnation_of(p)) for p in left)

        node = Swim(addr, addr, self.net.endpoint(addr), self.clock, on_change, vnodes=1,
                    config=self.cfg, rng=random.Random(f"{self.seed}/{addr}"))
        self.nodes[addr] = node
        return node

    def until(self, pred, limit_s: float) -> float | None:
        """Simulated seconds until every running node satisfies pred (None: not within limit)."""
        start = self.clock.time()
        ok = self.clock.run_for(limit_s, lambda: all(pred(n) for n in self.nodes.values()))
        return self.clock.time() - start if ok else None


def bench_cluster(n: int, cfg: SwimConfig, losses: list[float], loss_minutes: float,
                  seed: int) -> dict:
    c = SimCluster(n, cfg, seed)
    c.clock.run_for(5.0)
    row: dict = {"peers": n}

    newcomer = c.add(_addr(n))
    sent = c.net.stats.sent
    newcomer.join([_addr(0)])
    took = c.until(lambda node: newcomer.self_id in node.members, limit_s=120)
    row["join_s"] = _round(took)
    row["join_rounds"] = _round(took / cfg.gossip_interval_s if took is not None else None)
    row["join_rounds_model"] = round(dissemination_rounds(cfg.gossip_nodes, n + 1), 1)
    row["join_msgs_per_peer"] = round((c.net.stats.sent - sent) / (n + 1), 1)

    c.clock.run_for(10.0)
    victim = _addr(n // 2)
    c.nodes.pop(victim).stop()
    c.net.kill(victim)
    took = c.until(lambda node: victim not in node.members, limit_s=300)
    row["dead_s"] = _round(took)
    row["dead_bound_s"] = round(detection_bound_s(cfg, n), 1)

    row["loss"] = [_loss_run(c, loss, loss_minutes * 60.0) for loss in losses]
    return row


def _loss_run(c: SimCluster, loss: float, seconds: float) -> dict:
    c.clock.run_for(30.0)  # let the kill settle
    c.deaths.clear()
    refuted = sum(node.stats.refutations for node in c.nodes.values())
    sent = c.net.stats.sent
    c.net.loss = loss
    c.clock.run_for(seconds)
    c.net.loss = 0.0
    false_deaths = len({d for d in c.deaths if d[0] in c.nodes})
    suspicions = sum(node.stats.refutations for node in c.nodes.values()) - refuted
    hours = seconds / 3600.0
    return {"loss": loss, "sim_minutes": round(seconds / 60.0, 1),
            "false_suspicions_per_h": round(suspicions / hours, 1),
            "false_deaths": false_deaths, "false_deaths_per_h": round(false_deaths / hours, 2),
            "false_deaths_per_h_95": round(max(false_deaths, 3) / hours, 2) if not false_deaths
            else None,
            "msgs_per_peer_s": round((c.net.stats.sent - sent) / len(c.nodes) / seconds, 2)}


def bench_ring(n: int, vnodes: int, num_keys: int, seed: int) -> dict:
    """Ownership spread and keys moved; primary owners exactly (from arcs), r=2 sampled."""
    rng = random.Random(seed)
    peers = [_addr(i) for i in range(n)]
    started = time.process_time()
    ring = HashRing(peers, vnodes=vnodes)
    build_s = time.process_time() - started
    shares = ring.shares()
    mean = 1.0 / n
    keys = [rng.randbytes(16) for _ in range(num_keys)]
    before = [set(ring.owners(k, 2)) for k in keys]
    newcomer, leaver = _addr(n), peers[n // 3]
    ring.add(newcomer)
    # A join moves to the newcomer exactly the arcs it now owns; a leave, the leaver's arcs.
    join_moved = ring.shares()[newcomer]
    after_join = [set(ring.owners(k, 2)) for k in keys]
    ring.remove(newcomer)
    ring.remove(leaver)
    after_leave = [set(ring.owners(k, 2)) for k in keys]
    join_r2 = sum(a != b for a, b in zip(before, after_join))
    leave_r2 = sum(a != b for a, b in zip(before, after_leave))
    return {"peers": n, "vnodes": vnodes, "keys": num_keys, "build_cpu_s": round(build_s, 1),
            "max_over_mean": round(max(shares.values()) / mean, 3),
            "min_over_mean": round(min(shares.values()) / mean, 3),
            "join_moved_x_1_over_n": round(join_moved * (n + 1), 3),
            "leave_moved_x_1_over_n": round(shares[leaver] * n, 3),
            "join_moved_r2_x_1_over_n": round(join_r2 / num_keys * (n + 1), 2),
            "leave_moved_r2_x_1_over_n": round(leave_r2 / num_keys * n, 2),
            "r2_rel_error": round(1 / math.sqrt(max(1, min(join_r2, leave_r2))), 2)}


def _addr(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:7400"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _print_cluster(row: dict, cfg: SwimConfig) -> None:
    n = row["peers"]
    print(f"== {n} peers (SwimConfig defaults: probe {cfg.probe_interval_s}s, "
          f"gossip {cfg.gossip_interval_s}s x {cfg.gossip_nodes}; cpu {row['cpu_s']}s)")
    print(f"  join seen by all:  {row['join_s']} s = {row['join_rounds']} gossip rounds "
          f"(push-gossip model {row['join_rounds_model']}); "
          f"{row['join_msgs_per_peer']} datagrams per peer meanwhile")
    print(f"  kill marked dead:  {row['dead_s']} s by all (bound {row['dead_bound_s']} s)")
    for lr in row["loss"]:
        deaths = (f"{lr['false_deaths_per_h']}/h" if lr["false_deaths"]
                  else f"0 in {lr['sim_minutes']} sim min (< {lr['false_deaths_per_h_95']}/h, 95%)")
        print(f"  loss {lr['loss']:.0%}: false deaths {deaths}; false suspicions "
              f"{lr['false_suspicions_per_h']}/h; {lr['msgs_per_peer_s']} datagrams/peer/s "
              f"(over {lr['sim_minutes']} simulated min, scaled to 1 h)")


def _print_ring(r: dict) -> None:
    print(f"== ring: {r['peers']} peers x {r['vnodes']} vnodes, {r['keys']} random keys "
          f"(HashRing build {r['build_cpu_s']} s cpu)")
    print(f"  ownership max/mean {r['max_over_mean']}, min/mean {r['min_over_mean']}")
    print(f"  keys moved, primary (exact, from arcs): join {r['join_moved_x_1_over_n']} x 1/N, "
          f"leave {r['leave_moved_x_1_over_n']} x 1/N (ideal 1.0)")
    print(f"  keys moved, owner set at r=2 (sampled, +-{r['r2_rel_error']:.0%}): "
          f"join {r['join_moved_r2_x_1_over_n']} x 1/N, "
          f"leave {r['leave_moved_r2_x_1_over_n']} x 1/N (ideal 2.0)")
