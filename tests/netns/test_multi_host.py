"""Peers on separate hosts (network namespaces on one bridge): discovery, failure, partitions.

Each peer is a standalone process (`kvmesh peer`) inside its own namespace,
listening on 10.77.0.<i>:7400 (TCP and UDP gossip), with a 0.25 s SWIM probe
interval so that failure detection takes seconds, not tens of them.
"""

from __future__ import annotations

import time

import pytest

from kvmesh.transfer import ucx
from tests.netns.hosts import start_peers, stop_peers, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

PORT = "7400"
TRANSPORTS = ["tcp"] + (["ucx"] if ucx.available() else [])
DETECT_S = 10  # a SIGKILLed peer must be declared dead by everyone within this


def env(transport: str = "tcp", **extra: str) -> dict[str, str]:
    return {"KVMESH_TRANSPORT": transport, "KVMESH_PORT": PORT, "KVMESH_PROBE_INTERVAL_S": "0.25",
            "KVMESH_SEEDS": f"10.77.0.1:{PORT}", **extra}


def converged(peers, n: int) -> bool:
    return all(len(p.members()) == n for p in peers)


def load_ok(puller, seed: int, chunks: int) -> dict:
    got = puller.send("load", seed=seed, chunks=chunks, timeout=30)
    assert got["corrupt"] == 0 and got["failed"] == 0 and got["ok"] == chunks, got
    return got


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_multicast_discovery_and_bit_exact_pulls_across_hosts(hosts, transport):
    h = hosts(3)
    peers = start_peers(h, [1, 2, 3], env(transport, KVMESH_DISCOVERY="multicast",
                                           KVMESH_SEEDS=""))
    try:
        wait_until(lambda: converged(peers, 3), 15, "multicast discovery of 3 hosts")
        holder, _, puller = peers
        assert holder.send("fill", seed=1, chunks=32) == {"stored": 32}
        time.sleep(0.3)
        assert puller.send("lookup", seed=1, chunks=32)["matched"] == 32
        got = load_ok(puller, 1, 32)  # `load` compares every byte with what was stored
        assert got["sources"] == {holder.peer_id: 32}
        assert puller.send("status")["transports"][holder.peer_id] == transport
    finally:
        stop_peers(peers)


def test_sigkilled_peer_is_declared_dead_everywhere_and_its_chunks_withdrawn(hosts):
    h = hosts(4)
    peers = start_peers(h, [1, 2, 3, 4], env())
    try:
        wait_until(lambda: converged(peers, 4), 20, "static seeds, 4 hosts")
        keeper, victim, *others = peers
        survivors = [keeper, *others]
        assert victim.send("fill", seed=2, chunks=16)["stored"] == 16
        assert keeper.send("fill", seed=3, chunks=16)["stored"] == 16
        time.sleep(0.3)
        assert all(p.send("lookup", seed=2, chunks=16)["matched"] == 16 for p in others)
        victim.proc.kill()  # SIGKILL: no leave notice, sockets just vanish
        took = wait_until(lambda: all(victim.peer_id not in p.members() for p in survivors),
                          DETECT_S, "every survivor declaring the killed peer dead")
        print(f"SIGKILLed peer declared dead by all 3 survivors after {took:.1f}s")
        for p in survivors:
            assert p.send("status")["member_states"][victim.peer_id]["state"] == "dead"
            assert p.send("lookup", seed=2, chunks=16)["matched"] == 0
        time.sleep(0.3)  # re-advertising to the owners that replaced the dead one
        for p in others:  # replication 2: the dead owner took no entry with it
            assert p.send("lookup", seed=3, chunks=16)["matched"] == 16
        load_ok(others[-1], 3, 16)
    finally:
        stop_peers(peers)


def test_partition_splits_the_mesh_and_healing_merges_it(hosts):
    h = hosts(4)
    peers = start_peers(h, [1, 2, 3, 4], env())
    try:
        wait_until(lambda: converged(peers, 4), 20, "static seeds, 4 hosts")
        assert peers[0].send("fill", seed=4, chunks=16)["stored"] == 16
        time.sleep(0.3)
        h.partition([1, 2], [3, 4])
        took = wait_until(lambda: converged(peers, 2), DETECT_S + 5, "both sides of the split")
        print(f"partition seen by both sides after {took:.1f}s")
        assert sorted(peers[0].members()) == sorted(p.peer_id for p in peers[:2])
        assert peers[1].send("lookup", seed=4, chunks=16)["matched"] == 16  # holder's side
        assert peers[3].send("lookup", seed=4, chunks=16)["matched"] == 0  # the other side
        h.heal()
        took = wait_until(lambda: converged(peers, 4), 30, "the mesh merging after healing")
        print(f"mesh whole again {took:.1f}s after healing")
        # Holders re-advertise what the merged ring gives to owners across the old split.
        wait_until(lambda: peers[3].send("lookup", seed=4, chunks=16)["matched"] == 16, 5,
                   "the holder's entries reaching the other side")
        load_ok(peers[3], 4, 16)
    finally:
        stop_peers(peers)


def test_mesh_holds_together_and_pulls_stay_exact_under_packet_loss(hosts):
    h = hosts(3)
    peers = start_peers(h, [1, 2, 3], env())
    try:
        wait_until(lambda: converged(peers, 3), 20, "static seeds, 3 hosts")
        assert peers[0].send("fill", seed=5, chunks=16)["stored"] == 16
        for i in (1, 2, 3):
            h.loss(i, 10)  # 10% of packets arriving at every host, gossip and TCP alike
        time.sleep(3)  # a dozen probe periods
        wait_until(lambda: converged(peers, 3), 15, "all 3 members alive under 10% loss")
        got = peers[2].send("load", seed=5, chunks=16, timeout=30)
        # Retransmits may push pulls past their budget (misses); never wrong bytes.
        assert got["corrupt"] == 0 and got["ok"] + got["failed"] == 16, got
        h.heal()
        load_ok(peers[2], 5, 16)
    finally:
        stop_peers(peers)
