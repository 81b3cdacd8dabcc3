"""Tables keyed by remote input stay within their caps under floods (simulated network).

The member table took every claim about a member it had never heard of, and
a relay was kept for every PING_REQ until its timeout: both grew with what
a hostile sender chose to send.
"""

from kvmesh.membership.states import MemberState
from kvmesh.membership.wire import MAX_ENTRIES, Entry, Kind, encode, pack_entry
from tests.membership.test_swim import Cluster, addr_of

ATTACKER = "10.9.9.9:7400"


def test_claims_about_made_up_members_do_not_grow_the_table_without_bound():
    from kvmesh.membership.members import MAX_MEMBERS

    c = Cluster(5)
    c.clock.run_for(3)
    node = c.nodes[addr_of(1)]
    attacker = c.net.endpoint(ATTACKER)
    fake = 0
    for _ in range(2 * MAX_MEMBERS // MAX_ENTRIES + 1):
        claims = [pack_entry(Entry(MemberState.ALIVE, 0, f"fake-{fake + i}", "10.66.0.1:1", ""))
                  for i in range(MAX_ENTRIES)]
        fake += MAX_ENTRIES
        attacker.send(node.addr, encode(Kind.GOSSIP, 0, ATTACKER, entries=claims))
    c.clock.run_for(0.1)
    assert len(node.snapshot()) <= MAX_MEMBERS + 1, f"{fake} claims: {len(node.snapshot())} rows"
    assert node.stats.members_refused > 0
    assert all(p in node.members for p in c.nodes)  # the real members are untouched


def test_a_ping_req_flood_keeps_a_bounded_number_of_relays():
    from kvmesh.membership.probe import MAX_OUTSTANDING

    c = Cluster(5)
    c.clock.run_for(3)
    node = c.nodes[addr_of(1)]
    attacker = c.net.endpoint(ATTACKER)
    reflected = c.net.endpoint("10.77.0.1:7400")  # whoever the attacker points the pings at
    pings = []
    reflected.set_receiver(lambda data, src: pings.append(data))
    for seq in range(1, 5001):
        attacker.send(node.addr, encode(Kind.PING_REQ, seq, ATTACKER, "victim", reflected.addr))
    c.clock.run_for(0.01)
    assert len(node._prober._acks) <= MAX_OUTSTANDING, len(node._prober._acks)
    assert len(pings) <= MAX_OUTSTANDING, f"5000 PING_REQs made it send {len(pings)} pings"
    assert node.stats.relays_refused >= 5000 - MAX_OUTSTANDING
