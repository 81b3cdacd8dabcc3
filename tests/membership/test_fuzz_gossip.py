"""Fuzzing the gossip input path: arbitrary and mutated datagrams into the codec, the seal and
a running engine on the simulated network.

Small budgets (FUZZ below) so CI stays quick; raise max_examples locally to
search harder. What must hold for any input: nothing raises; garbage (what
does not decode or unseal) changes nothing; what does decode changes only
what its entries may change, and every table stays within its cap.
"""

import random
from dataclasses import asdict

import msgpack
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmesh.errors import RemoteProtocolError
from kvmesh.membership.members import MAX_MEMBERS
from kvmesh.membership.probe import MAX_OUTSTANDING
from kvmesh.membership.seal import MAX_REPLAY_NONCES, SealedTransport, gossip_sealer
from kvmesh.membership.sim_network import SimClock, SimNetwork
from kvmesh.membership.states import INCARNATION_CEILING, MAX_INCARNATION, MemberState
from kvmesh.membership.swim import Swim
from kvmesh.membership.sync import MAX_STRANGERS, MAX_SYNC_SOURCES
from kvmesh.membership.timing import SwimConfig
from kvmesh.membership.wire import (MAX_ENTRIES, MAX_NAME_BYTES, MAX_SEQ, Entry, Kind, Message,
                                   decode, encode, pack_entry)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NS = b"n" * 16
ADDRS = [f"10.0.0.{i}:7400" for i in range(1, 6)]

# ---- strategies --------------------------------------------------------------------------

names = st.sampled_from(ADDRS + ["10.0.0.9:7400", "x", "p:1", "ä" * 3, "a" * MAX_NAME_BYTES])
incarnations = st.one_of(st.integers(0, 8), st.integers(0, MAX_INCARNATION),
                         st.sampled_from([INCARNATION_CEILING, INCARNATION_CEILING + 1,
                                          MAX_INCARNATION - 1, MAX_INCARNATION]))
entries = st.builds(Entry, st.sampled_from([int(s) for s in MemberState]), incarnations, names,
                    names, st.one_of(st.just(""), names))


@st.composite
def datagrams(draw) -> bytes:
    """Well-formed datagrams of any kind, with claims about anyone, us included."""
    return encode(draw(st.sampled_from(list(Kind))), draw(st.integers(0, MAX_SEQ)), draw(names),
                  draw(st.one_of(st.just(""), names)), draw(st.one_of(st.just(""), names)),
                  [pack_entry(e) for e in draw(st.lists(entries, max_size=12))])


@st.composite
def mutated(draw, base: st.SearchStrategy) -> bytes:
    """`base` with a few byte-level edits: flips, inserts, deletes, cuts and splices."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "splice"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = data[draw(st.integers(0, len(data))):][:draw(st.integers(1, 64))]
    return bytes(data)


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
              st.floats(), st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=9),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=40)
anything = st.one_of(st.binary(max_size=2000), mutated(datagrams()),
                     msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)))


# ---- the codec ---------------------------------------------------------------------------


def check_message(msg: Message) -> None:
    assert isinstance(msg.kind, Kind) and 0 <= msg.seq <= MAX_SEQ
    assert isinstance(msg.sender, str) and msg.sender
    assert len(msg.sender.encode()) <= MAX_NAME_BYTES * 4  # msgpack caps str bytes at 255
    assert len(msg.entries) <= MAX_ENTRIES
    for e in msg.entries:
        assert e.state in {int(s) for s in MemberState}
        assert 0 <= e.incarnation <= MAX_INCARNATION and e.peer and e.addr


@FUZZ
@given(anything)
def test_decode_raises_only_protocol_errors_and_yields_checked_messages(data):
    try:
        msg = decode(data)
    except RemoteProtocolError:
        return
    check_message(msg)


@FUZZ
@given(datagrams())
def test_well_formed_datagrams_decode(data):
    check_message(decode(data))


# ---- the seal ----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=2000), mutated(st.binary(max_size=64))),
       st.sampled_from([b"s3cret", None]))
def test_unseal_refuses_anything_not_sealed(data, secret):
    rx = gossip_sealer(secret, NS, clock=SimClock(1000.0))
    assert rx.unseal(data) is None
    assert rx.stats.rejected == 1 and len(rx._guard) == 0


@FUZZ
@given(st.data(), st.sampled_from([b"s3cret", None]))
def test_a_mutated_sealed_datagram_is_refused_and_spends_nothing(data, secret):
    clock = SimClock(1000.0)
    tx, rx = gossip_sealer(secret, NS, clock=clock), gossip_sealer(secret, NS, clock=clock)
    payload = data.draw(st.binary(max_size=200))
    sealed = tx.seal(payload)
    forged = data.draw(mutated(st.just(sealed)))
    if forged != sealed:
        assert rx.unseal(forged) is None
    assert rx.unseal(sealed) == payload  # the forgery did not spend the real one's nonce
    assert rx.unseal(sealed) is None


# ---- a running engine --------------------------------------------------------------------

CFG = SwimConfig()


def small_mesh():
    clock = SimClock()
    net = SimNetwork(clock, seed=1)
    nodes = [Swim(a, a, net.endpoint(a), clock, lambda j, l: None, vnodes=8, config=CFG,
                  rng=random.Random(i)) for i, a in enumerate(ADDRS)]
    for node in nodes:
        node.preload((a, a) for a in ADDRS)
        node.start()
    clock.run_for(3)
    return clock, net, nodes[0]


def state_of(node: Swim) -> tuple:
    """Everything a datagram could change, counters of what arrived aside."""
    stats = {k: v for k, v in asdict(node.stats).items() if k not in ("received", "malformed")}
    return (node.snapshot(), node.incarnation, len(node._queue), node.awareness,
            sorted(node._prober._acks), stats)


def check_bounds(node: Swim, known_before: int, claims: int) -> None:
    assert len(node._table.known) <= min(known_before + claims, MAX_MEMBERS)
    assert len(node._prober._acks) <= MAX_OUTSTANDING + 1  # + our own probe
    assert len(node._queue) <= CFG.broadcast_queue_max
    assert len(node._sync._stranger_syncs) <= MAX_STRANGERS
    assert len(node._sync._budget) <= MAX_SYNC_SOURCES
    assert node.incarnation <= INCARNATION_CEILING + 1
    assert all(m.incarnation <= INCARNATION_CEILING for m in node._table.known.values())


@FUZZ
@given(st.lists(anything, min_size=1, max_size=5))
def test_garbage_changes_nothing(junk):
    clock, net, node = small_mesh()
    before, sent = state_of(node), net.stats.sent
    fed = 0
    for data in junk:
        try:
            decode(data)
            continue  # it parses: not garbage (see the next test)
        except RemoteProtocolError:
            pass
        node.receive(data, "10.0.0.66:1")
        fed += 1
    assert state_of(node) == before and net.stats.sent == sent
    assert node.stats.malformed >= fed


@FUZZ
@given(st.lists(st.one_of(datagrams(), mutated(datagrams())), min_size=1, max_size=20),
       st.sampled_from(ADDRS[1:] + ["10.0.0.66:1"]))
def test_hostile_datagrams_never_raise_and_stay_within_bounds(batch, src):
    clock, net, node = small_mesh()
    known = len(node._table.known)
    claims = 0
    for data in batch:
        node.receive(data, src)
        try:
            claims += len(decode(data).entries)
        except RemoteProtocolError:
            pass
        check_bounds(node, known, claims)
    clock.run_for(30)  # every timer those datagrams armed runs out
    check_bounds(node, known, claims)


@FUZZ
@given(st.lists(st.one_of(datagrams(), mutated(datagrams()), st.binary(max_size=200)),
                min_size=1, max_size=20))
def test_a_sealed_engine_drops_everything_unsealed(batch):
    clock = SimClock()
    net = SimNetwork(clock)
    sealed = SealedTransport(net.endpoint(ADDRS[0]), gossip_sealer(b"s3cret", NS, clock=clock))
    node = Swim(ADDRS[0], ADDRS[0], sealed, clock, lambda j, l: None, vnodes=8, config=CFG)
    node.start()
    attacker = net.endpoint("10.0.0.66:1")
    for data in batch:
        attacker.send(ADDRS[0], data)
    clock.run_for(1)
    assert node.stats.received == 0 and sealed.stats.rejected == len(batch)
    assert len(sealed.sealer._guard) <= MAX_REPLAY_NONCES
