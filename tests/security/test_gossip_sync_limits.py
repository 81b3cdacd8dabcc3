"""SYNC floods against a real SWIM engine on the simulated network.

Every SYNC datagram used to be answered with the whole member table (several
datagrams): a reflection and amplification lever for anyone who can send
one datagram, and CPU for the member that answers.
"""

from kvmesh.membership.wire import Kind, decode, encode
from tests.membership.test_swim import Cluster, addr_of


class Counter:
    """An endpoint's receiver that counts what arrives."""

    def __init__(self):
        self.datagrams, self.bytes, self.replies = 0, 0, set()

    def __call__(self, data, src):
        self.datagrams += 1
        self.bytes += len(data)
        msg = decode(data)
        if msg.kind is Kind.SYNC_REPLY and msg.seq:
            self.replies.add(msg.seq)


def test_a_sync_flood_from_one_source_is_not_amplified():
    c = Cluster(50)
    c.clock.run_for(3)
    target = addr_of(7)
    attacker = c.net.endpoint("10.9.9.9:7400")
    got = Counter()
    attacker.set_receiver(got)
    sent = 0
    for i in range(1, 1001):  # 100 a second for 10 s
        data = encode(Kind.SYNC, i, "10.9.9.9:7400")
        c.clock.call_later(i / 100, lambda d=data: attacker.send(target, d))
        sent += len(data)
    c.clock.run_for(12)
    assert got.bytes <= sent, (f"{sent} bytes of SYNC drew {got.bytes} bytes "
                               f"({got.datagrams} datagrams, {len(got.replies)} replies)")
    assert c.all_see(lambda n: len(n.members) == 50)


def test_a_sync_flood_from_many_sources_is_bounded_in_total():
    from kvmesh.membership.sync import SYNC_REPLY_BURST, SYNC_REPLY_RATE

    c = Cluster(50)
    c.clock.run_for(3)
    target = c.nodes[addr_of(7)]
    got = Counter()
    for i in range(2000):  # 1,000 sources a second for 2 s, one SYNC each
        src = f"10.8.{i // 250}.{i % 250 + 1}:7400"
        endpoint = c.net.endpoint(src)
        endpoint.set_receiver(got)
        c.clock.call_later(i / 1000, lambda e=endpoint, s=src, n=i + 1: e.send(
            target.addr, encode(Kind.SYNC, n, s)))
    c.clock.run_for(2.5)
    assert len(got.replies) <= SYNC_REPLY_BURST + SYNC_REPLY_RATE * 2.5
    refused = target.stats.syncs_refused_source + target.stats.syncs_refused_total
    assert refused >= 2000 - len(got.replies)
    c.clock.run_for(30)  # the mesh itself is unharmed
    assert c.all_see(lambda n: len(n.members) == 50)


def test_a_crowd_joining_at_once_through_one_seed_still_gets_in():
    """More joiners in one instant than the seed's budget answers: they all get in anyway
    (the ones refused ask again, and gossip brings the rest)."""
    c = Cluster(150, preload=False)
    seed = addr_of(0)
    c.nodes[seed].join([])
    outcomes = []
    for addr in list(c.nodes)[1:]:
        c.nodes[addr].join([seed], outcomes.append)
    took = c.run_until(lambda n: len(n.members) == 150, limit_s=60)
    c.clock.run_for(c.cfg.join_timeout_s)  # every join has reported
    assert c.nodes[seed].stats.syncs_refused_total > 0  # the budget did bite
    assert len(outcomes) == 149 and outcomes.count(True) >= 100, outcomes.count(True)
    assert took < 10, took
