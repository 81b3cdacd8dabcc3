"""Forged claims about a member's incarnation, fed to real SWIM engines on the simulated network.

A claim at or near the wire's cap used to kill its subject for good: the
subject refuted one past the cap, which every decoder rejects, so the others
kept it dead while it believed itself alive.
"""

from kvmesh.membership.states import MAX_INCARNATION, MemberState
from kvmesh.membership.wire import Entry, Kind, encode, pack_entry
from tests.membership.test_swim import Cluster, addr_of

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
ATTACKER = "10.9.9.9:7400"


def forge(cluster: Cluster, targets, *entries: Entry) -> None:
    """One GOSSIP datagram carrying `entries`, from a stranger, to each target address."""
    attacker = cluster.net._endpoints.get(ATTACKER) or cluster.net.endpoint(ATTACKER)
    data = encode(Kind.GOSSIP, 0, ATTACKER, entries=[pack_entry(e) for e in entries])
    for addr in targets:
        attacker.send(addr, data)


def views(cluster: Cluster, peer: str) -> dict:
    return {a: (n.state_of(peer).name, n.incarnation_of(peer)) for a, n in cluster.nodes.items()}


def test_a_dead_claim_at_the_cap_kills_nobody():
    c = Cluster(10)
    c.clock.run_for(3)
    victim = addr_of(4)
    forge(c, c.nodes, Entry(D, MAX_INCARNATION, victim, victim, ATTACKER))
    c.clock.run_for(30)
    seen = views(c, victim)
    others = {a: v for a, v in seen.items() if a != victim}
    assert all(state == "ALIVE" for state, _ in others.values()), \
        f"others see {others}; the victim holds itself at {seen[victim]}"
    assert c.nodes[victim].incarnation <= MAX_INCARNATION
    assert c.left_events == []


def test_repeated_large_jumps_never_reach_the_cap():
    """Each round claims the victim dead far above what everyone holds; it must stay alive."""
    c = Cluster(10)
    c.clock.run_for(3)
    victim = addr_of(4)
    for _ in range(6):
        held = max(n.incarnation_of(victim) for n in c.nodes.values())
        forge(c, c.nodes, Entry(D, min(MAX_INCARNATION, held + (1 << 61)), victim, victim,
                                ATTACKER))
        c.clock.run_for(10)
    seen = views(c, victim)
    others = {a: v for a, v in seen.items() if a != victim}
    assert all(state == "ALIVE" for state, _ in others.values()), \
        f"others see {others}; the victim holds itself at {seen[victim]}"
    assert all(inc < 1 << 40 for _, inc in seen.values()), seen
    assert c.left_events == []


# ---- the bounds at work (these guard the fix itself) ----------------------------------

from kvmesh.membership.states import (INCARNATION_CEILING, MAX_INCARNATION_JUMP,  # noqa: E402
                                     MAX_SELF_JUMP)

J = MAX_INCARNATION_JUMP


def test_a_chain_of_claims_in_one_datagram_rises_one_jump_at_most():
    c = Cluster(10)
    c.clock.run_for(3)
    victim = addr_of(4)
    chain = [Entry(A if i % 2 else D, i * J, victim, victim, ATTACKER) for i in range(1, 9)]
    forge(c, [a for a in c.nodes if a != victim], *chain)
    c.clock.run_for(0.01)
    assert all(n.incarnation_of(victim) <= J for n in c.nodes.values())
    assert sum(n.stats.claims_refused for n in c.nodes.values()) >= 7 * 9
    c.clock.run_for(30)  # the victim heard of the claim it could refute, and did
    seen = views(c, victim)
    assert all(state == "ALIVE" for state, _ in seen.values()), seen
    assert c.left_events == []


def test_claims_past_a_bound_are_refused_whole():
    c = Cluster(5)
    c.clock.run_for(3)
    victim, other = addr_of(1), addr_of(2)
    forge(c, [victim], Entry(D, MAX_SELF_JUMP + 1, victim, victim, ATTACKER))
    forge(c, [other], Entry(A, INCARNATION_CEILING + 1, "10.7.7.7:7400", "10.7.7.7:7400", ""))
    c.clock.run_for(0.01)
    assert c.nodes[victim].incarnation == 0 and c.nodes[victim].stats.refutations == 0
    assert c.nodes[victim].stats.claims_refused == 1
    assert c.nodes[other].state_of("10.7.7.7:7400") is None  # a stranger past the ceiling
    assert c.nodes[other].stats.claims_refused == 1


def test_a_member_pushed_ahead_of_the_others_answers_their_accusations():
    """An admissible claim sent to the victim alone lifts it further than the others admit;
    when they later suspect it at the life they hold, it catches them up."""
    c = Cluster(20)
    c.clock.run_for(3)
    victim = addr_of(4)
    forge(c, [victim], Entry(D, MAX_SELF_JUMP, victim, victim, ATTACKER))
    c.clock.run_for(2)
    assert c.nodes[victim].incarnation == MAX_SELF_JUMP + 1
    assert all(n.incarnation_of(victim) == 0 for a, n in c.nodes.items() if a != victim)
    c.net.partition([victim], [a for a in c.nodes if a != victim])
    c.clock.run_for(4)  # suspected at 0 by some
    assert any(n.state_of(victim) is S for n in c.nodes.values())
    c.net.heal()
    c.run_until(lambda n: n.state_of(victim) is A and n.incarnation_of(victim) >= 1, limit_s=10)
    assert c.nodes[victim].stats.catch_ups >= 1
    c.clock.run_for(60)
    assert c.left_events == [] and c.all_see(lambda n: n.state_of(victim) is A)


def raise_incarnation(c: Cluster, victim: str, to: int) -> None:
    """Make the victim refute (false suspicions) until its incarnation is `to`."""
    while c.nodes[victim].incarnation < to:
        inc = c.nodes[victim].incarnation
        forge(c, [victim], Entry(S, inc, victim, victim, ATTACKER))
        c.run_until(lambda n: n.incarnation_of(victim) == inc + 1, limit_s=10)


def rejoin(c: Cluster, victim: str):
    """Start the victim again (incarnation 0, same address); returns it once
    everyone holds it alive at incarnation 6 (run_until fails the test if not)."""
    c.net.revive(victim)
    reborn = c.add(victim)
    reborn.join([addr_of(0)])
    c.run_until(lambda n: len(n.members) == len(c.nodes) and n.state_of(victim) is A
                and n.incarnation_of(victim) == 6, limit_s=15)
    return reborn


def test_a_restarted_member_refutes_its_dead_previous_life():
    c = Cluster(10)
    victim = addr_of(3)
    raise_incarnation(c, victim, 5)
    c.kill(victim)
    c.run_until(lambda n: n.state_of(victim) is D, limit_s=60)
    reborn = rejoin(c, victim)
    assert reborn.incarnation == 6 and reborn.stats.claims_refused == 0
    assert c.all_see(lambda n: n.state_of(victim) is A)


def test_a_member_restarted_before_anyone_noticed_refutes_its_previous_life():
    c = Cluster(10)
    victim = addr_of(3)
    raise_incarnation(c, victim, 5)
    c.kill(victim)
    reborn = rejoin(c, victim)  # the others still hold it alive at 5
    assert reborn.incarnation == 6 and reborn.stats.claims_refused == 0
    assert c.all_see(lambda n: n.state_of(victim) is A)


def test_a_member_that_left_and_restarted_refutes_its_leave():
    c = Cluster(10)
    victim = addr_of(3)
    raise_incarnation(c, victim, 5)
    c.nodes.pop(victim).leave()
    c.run_until(lambda n: n.state_of(victim) is L, limit_s=5)
    reborn = rejoin(c, victim)
    assert reborn.incarnation == 6 and reborn.stats.claims_refused == 0
    assert c.all_see(lambda n: n.state_of(victim) is A)
