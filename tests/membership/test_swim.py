"""The SWIM engine: wire codec, gossip queue, and whole clusters on the simulated network."""

import random

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from kvmesh.errors import RemoteProtocolError
from kvmesh.hashring.ring import HashRing
from kvmesh.membership.sim_network import SimClock, SimNetwork
from kvmesh.membership.swim import Swim
from kvmesh.membership.broadcast import BroadcastQueue
from kvmesh.membership.members import MemberView
from kvmesh.membership.states import MemberState
from kvmesh.membership.timing import SwimConfig, detection_bound_s
from kvmesh.membership.wire import (MAX_DATAGRAM_BYTES, MAX_RECV_BYTES, VERSION, Entry, Kind, decode,
                                   encode, pack_entry)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CFG = SwimConfig()  # memberlist's LAN defaults, in simulated seconds


def addr_of(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}:7400"


class Cluster:
    """n engines on one simulated network; peer id == gossip address."""

    def __init__(self, n: int, seed: int = 1, loss: float = 0.0, preload: bool = True,
                 cfg: SwimConfig = CFG) -> None:
        self.clock = SimClock()
        self.net = SimNetwork(self.clock, seed=seed, loss=loss)
        self.cfg, self.seed = cfg, seed
        self.nodes: dict[str, Swim] = {}
        self.left_events: list[tuple[str, str]] = []  # (observer, peer that left)
        for i in range(n):
            self.add(addr_of(i))
        if preload:
            for node in self.nodes.values():
                node.preload((a, a) for a in self.nodes)
                node.start()

    def add(self, addr: str) -> Swim:
        def on_change(joined, left, observer=addr):
            self.left_events += [(observer, p) for p in left]

        endpoint = self.net._endpoints.get(addr) or self.net.endpoint(addr)
        node = Swim(addr, addr, endpoint, self.clock, on_change, vnodes=8, config=self.cfg,
                    rng=random.Random(f"{self.seed}/{addr}/{len(self.nodes)}"))
        self.nodes[addr] = node
        return node

    def kill(self, addr: str) -> None:
        self.nodes.pop(addr).stop()
        self.net.kill(addr)

    def all_see(self, pred) -> bool:
        return all(pred(node) for node in self.nodes.values())

    def run_until(self, pred, limit_s: float) -> float:
        """Simulated seconds until every node satisfies pred; fails past limit_s."""
        start = self.clock.time()
        assert self.clock.run_for(limit_s, lambda: self.all_see(pred)), \
            f"not within {limit_s} simulated seconds"
        return self.clock.time() - start


class Recorder:
    """A transport that only records what is sent."""

    def __init__(self):
        self.sent = []

    def send(self, addr, data):
        self.sent.append((addr, data))

    def set_receiver(self, receive):
        pass


# ---- codec ---------------------------------------------------------------------------

ENTRY = Entry(1, 7, "10.0.0.9:7400", "10.0.0.9:7400", "10.0.0.2:7400")


def test_encode_is_plain_msgpack_and_round_trips():
    data = encode(Kind.PING_REQ, 42, "a:1", "b:2", "10.0.0.2:2", [pack_entry(ENTRY)] * 20)
    assert data == msgpack.packb([VERSION, 3, 42, "a:1", "b:2", "10.0.0.2:2", [list(ENTRY)] * 20])
    msg = decode(data)
    assert (msg.kind, msg.seq, msg.sender, msg.target, msg.target_addr) == \
        (Kind.PING_REQ, 42, "a:1", "b:2", "10.0.0.2:2")
    assert msg.entries == (ENTRY,) * 20


def test_kind_values_are_fixed():
    assert [(k.name, k.value) for k in Kind] == [
        ("PING", 1), ("ACK", 2), ("PING_REQ", 3), ("NACK", 4), ("GOSSIP", 5), ("SYNC", 6),
        ("SYNC_REPLY", 7)]


def test_a_later_version_with_appended_fields_is_read():
    raw = msgpack.packb([VERSION + 1, 5, 0, "a:1", "", "", [list(ENTRY) + ["new"]], "extra"])
    assert decode(raw).entries == (ENTRY,)


def _datagram(**changes):
    fields = dict(version=VERSION, kind=1, seq=1, sender="a:1", target="", taddr="",
                  entries=[list(ENTRY)])
    fields.update(changes)
    return msgpack.packb(list(fields.values()))


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"a": 1}), msgpack.packb(7),
    _datagram(version=0), _datagram(version=True), _datagram(kind=99), _datagram(seq=-1),
    _datagram(seq=1 << 40), _datagram(sender=""), _datagram(sender=b"a:1"),
    _datagram(target=None), _datagram(entries={}), _datagram(entries=[[1, 2, 3]]),
    _datagram(entries=[[9, 0, "p:1", "p:1", ""]]), _datagram(entries=[[0, -1, "p:1", "p:1", ""]]),
    _datagram(entries=[[0, 1 << 63, "p:1", "p:1", ""]]), _datagram(entries=[[0, 0, "", "p:1", ""]]),
    _datagram(entries=[[0, 0, "p" * 300, "p:1", ""]]), _datagram(entries=[list(ENTRY)] * 129),
    _datagram(sender="x" * 256), b"\x97" + b"\xff" * 10, bytes(MAX_RECV_BYTES + 1),
])
def test_malformed_datagrams_are_rejected(data):
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_every_truncation_is_rejected():
    data = encode(Kind.ACK, 9, "a:1", entries=[pack_entry(ENTRY)] * 3)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            decode(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data):
    """Random bytes decode to a message or raise RemoteProtocolError, nothing else."""
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    assert message is not None


# ---- gossip queue --------------------------------------------------------------------


def test_queue_keeps_the_newest_claim_per_member_and_sends_least_sent_first():
    q = BroadcastQueue(max_items=10)
    q.put("a", b"a1")
    q.put("b", b"b1")
    assert q.take(budget=100, limit=3, max_items=1) == [b"b1"]  # newest first
    q.put("a", b"a2")  # replaces a1
    assert len(q) == 2
    assert q.take(budget=100, limit=3, max_items=9) == [b"a2", b"b1"]  # a2 was sent 0 times
    assert q.take(budget=100, limit=3, max_items=9) == [b"a2", b"b1"]
    assert q.take(budget=100, limit=3, max_items=9) == [b"a2"]  # b1 reached its limit
    assert q.take(budget=100, limit=3, max_items=9) == [] and len(q) == 0


def test_queue_is_bounded_and_drops_the_oldest():
    q = BroadcastQueue(max_items=3)
    for peer in "abcde":
        q.put(peer, peer.encode() * 4)
    assert len(q) == 3 and q.dropped == 2
    assert q.take(budget=9, limit=5, max_items=9) == [b"eeee", b"dddd"]  # fits the budget
    # never sent first; then, among items sent once, the last one sent
    assert q.take(budget=100, limit=5, max_items=9) == [b"cccc", b"dddd", b"eeee"]


def test_queue_compacts_replaced_items():
    q = BroadcastQueue(max_items=4)
    for i in range(1000):
        q.put("a", b"%d" % i)
    assert q._stacked <= 2 * 4 + 64
    assert q.take(budget=100, limit=2, max_items=9) == [b"999"]


# ---- clusters ------------------------------------------------------------------------


def test_fifty_peers_join_through_one_seed():
    c = Cluster(50, preload=False)
    seed = addr_of(0)
    c.nodes[seed].join([])
    outcomes = []
    rng = random.Random(3)
    for addr in list(c.nodes)[1:]:
        c.clock.call_later(rng.uniform(0, 5), lambda a=addr: c.nodes[a].join([seed],
                                                                               outcomes.append))
    took = c.run_until(lambda n: len(n.members) == 50, limit_s=30)
    assert outcomes == [True] * 49
    assert c.clock.time() <= 5 + 10 and took > 0
    node = c.nodes[addr_of(17)]
    assert node.ring.peers == frozenset(c.nodes) and len(node.others()) == 49
    assert c.left_events == []


def test_a_killed_peer_is_declared_dead_by_all_within_the_bound():
    c = Cluster(50)
    c.clock.run_for(5)
    victim = addr_of(7)
    c.kill(victim)
    took = c.run_until(lambda n: victim not in n.members, limit_s=120)
    assert took <= detection_bound_s(CFG, 50)
    assert c.all_see(lambda n: n.state_of(victim) is D and n.incarnation_of(victim) == 0)
    assert sorted(c.left_events) == sorted((a, victim) for a in c.nodes)  # once per observer
    assert sum(n.stats.declared_dead for n in c.nodes.values()) >= 1


def test_a_falsely_suspected_peer_refutes():
    c = Cluster(20)
    c.clock.run_for(3)
    victim = addr_of(4)
    liar = c.net.endpoint("10.9.9.9:7400")
    rumour = encode(Kind.GOSSIP, 0, "10.9.9.9:7400",
                    entries=[pack_entry(Entry(S, 0, victim, victim, "10.9.9.9:7400"))])
    for i in (1, 2, 3):
        liar.send(addr_of(i), rumour)
    c.clock.run_for(0.01)
    assert c.nodes[addr_of(1)].state_of(victim) is S
    c.run_until(lambda n: n.incarnation_of(victim) == 1 and n.state_of(victim) is A, limit_s=10)
    assert c.nodes[victim].stats.refutations == 1
    c.clock.run_for(60)  # the suspicion timers have long expired: nobody acts on them
    assert c.left_events == []
    assert c.all_see(lambda n: len(n.members) == 20)


def test_a_briefly_isolated_peer_is_suspected_and_refutes():
    c = Cluster(20)
    victim = addr_of(9)
    c.net.partition([victim], [a for a in c.nodes if a != victim])
    c.clock.run_for(4)  # a few probe periods: suspected, not yet dead (timeout >= 5.2 s)
    assert any(n.state_of(victim) is S for n in c.nodes.values())
    c.net.heal()
    c.run_until(lambda n: n.state_of(victim) is A and n.incarnation_of(victim) >= 1, limit_s=10)
    assert c.left_events == []


def test_partition_then_heal():
    c = Cluster(30)
    west, east = list(c.nodes)[:15], list(c.nodes)[15:]
    c.net.partition(west, east)
    side = {a: set(west if a in west else east) for a in c.nodes}
    c.run_until(lambda n: n.members == side[n.self_id], limit_s=detection_bound_s(CFG, 30))
    c.net.heal()
    took = c.run_until(lambda n: len(n.members) == 30, limit_s=60)
    assert took <= 3 * CFG.reconnect_interval_s  # median ~6 s over 20 seeds, worst 25 s
    # Suspicions raised while healing settle too: everyone alive, everywhere.
    c.run_until(lambda n: all(n.state_of(p) is A for p in c.nodes), limit_s=30)


def test_loss_does_not_kill_anyone():
    c = Cluster(40, loss=0.05, seed=7)
    c.clock.run_for(180)
    stats = [n.stats for n in c.nodes.values()]
    assert sum(s.probe_failures for s in stats) > 0  # loss did bite
    assert c.left_events == []
    assert c.all_see(lambda n: len(n.members) == 40)


def test_graceful_leave_skips_suspicion():
    c = Cluster(20)
    c.clock.run_for(2)
    leaver = addr_of(5)
    c.nodes.pop(leaver).leave()
    took = c.run_until(lambda n: n.state_of(leaver) is L, limit_s=5)
    assert took < 1.0
    assert sum(n.stats.suspicions for n in c.nodes.values()) == 0


def test_a_restarted_peer_comes_back_with_a_newer_incarnation():
    c = Cluster(20)
    victim = addr_of(3)
    c.kill(victim)
    c.run_until(lambda n: n.state_of(victim) is D, limit_s=60)
    c.net.revive(victim)
    reborn = c.add(victim)  # a fresh process: incarnation 0, same address
    reborn.join([addr_of(0)])
    c.run_until(lambda n: len(n.members) == 20, limit_s=10)
    assert reborn.incarnation >= 1
    assert c.all_see(lambda n: n.incarnation_of(victim) == reborn.incarnation)


def test_no_all_to_all_heartbeats():
    c = Cluster(50)
    c.clock.run_for(60)
    per_node_second = c.net.stats.sent / 50 / 60
    assert per_node_second < 2.5  # a ping and its ack, plus rare state exchanges


def test_every_datagram_fits_one_frame():
    rec, clock = Recorder(), SimClock()
    node = Swim("10.0.0.1:7400", "10.0.0.1:7400", rec, clock, lambda j, l: None)
    node.preload((addr_of(i) + "-with-a-long-name", addr_of(i)) for i in range(1, 300))
    node.start()
    node.receive(encode(Kind.SYNC, 1, addr_of(1)), addr_of(1))  # full state reply
    flood = [pack_entry(Entry(A, i, f"x{i}", "10.0.0.1:7400", "")) for i in range(100)]
    node.receive(encode(Kind.GOSSIP, 0, addr_of(1), entries=flood), addr_of(1))
    node.receive(encode(Kind.PING, 1, addr_of(1), node.self_id), addr_of(1))
    clock.run_for(5)
    sizes = [len(data) for _, data in rec.sent]
    assert len(sizes) > 20 and max(sizes) <= MAX_DATAGRAM_BYTES


def test_join_asks_a_few_addresses_per_attempt_and_gives_up_in_time():
    rec, clock, outcomes = Recorder(), SimClock(), []
    node = Swim("me", "10.0.0.1:7400", rec, clock, lambda j, l: None)
    node.join([addr_of(i) for i in range(2, 12)] + ["10.0.0.1:7400"], outcomes.append)
    assert len({addr for addr, _ in rec.sent}) == 3 and all(
        decode(data).kind is Kind.SYNC for _, data in rec.sent)
    clock.run_for(CFG.join_timeout_s + CFG.probe_interval_s)
    assert outcomes == [False]
    assert {addr for addr, data in rec.sent if decode(data).seq} == {addr_of(i)
                                                                     for i in range(2, 12)}


def test_consumer_surface_and_snapshot():
    changes = []
    clock, net = SimClock(), SimNetwork(SimClock())
    node = Swim("p0", "10.0.0.1:7400", net.endpoint("10.0.0.1:7400"), clock,
                lambda j, l: changes.append((j, l)), vnodes=16)
    node.start()
    assert node.members == {"p0"} and node.others() == [] and node.ring.peers == {"p0"}
    gossip = [pack_entry(Entry(A, 2, "p1", "10.0.0.2:7400", "")),
              pack_entry(Entry(S, 0, "p2", "10.0.0.3:7400", "p1")),
              pack_entry(Entry(D, 0, "p3", "10.0.0.4:7400", ""))]  # a stranger's death: ignored
    node.receive(encode(Kind.GOSSIP, 0, "p1", entries=gossip), "10.0.0.2:7400")
    assert changes == [({"p1", "p2"}, set())]  # one batch per datagram
    assert node.members == {"p0", "p1", "p2"} and node.others() == ["p1", "p2"]
    assert isinstance(node.ring, HashRing) and node.ring.peers == node.members
    assert node.state_of("p2") is S and node.incarnation_of("p1") == 2
    assert node.state_of("p3") is None and node.addr_of("p1") == "10.0.0.2:7400"
    node.receive(encode(Kind.GOSSIP, 0, "p1", entries=[pack_entry(Entry(L, 2, "p1", "x:1",
                                                                        "p1"))]), "x:1")
    assert changes[-1] == (set(), {"p1"}) and node.ring.peers == {"p0", "p2"}
    assert node.snapshot() == [MemberView("p0", "10.0.0.1:7400", "alive", 0),
                               MemberView("p1", "10.0.0.2:7400", "left", 2),
                               MemberView("p2", "10.0.0.3:7400", "suspect", 0)]


def test_malformed_datagrams_are_counted_and_dropped():
    c = Cluster(3)
    node = c.nodes[addr_of(0)]
    for junk in (b"", b"\xff" * 40, msgpack.packb([VERSION, 77, 0, "x:1", "", "", []])):
        node.receive(junk, "10.0.0.99:1")
    assert node.stats.malformed == 3
    c.clock.run_for(5)
    assert len(node.members) == 3


def test_a_runs_is_a_function_of_its_seed():
    def run(seed):
        c = Cluster(15, loss=0.1, seed=seed)
        c.clock.run_for(30)
        return c.net.stats, [n.stats for n in c.nodes.values()]

    assert run(4) == run(4)
    assert run(4) != run(5)
