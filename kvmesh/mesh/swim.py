"""SWIM gossip membership: failure detection without all-to-all heartbeats.

Each protocol period a member pings one other (round robin over a shuffled
list). No ack within the probe timeout: it asks `indirect_checks` others to
ping the target for it. No ack by the end of the period: the target becomes
suspect. A suspicion expires into dead unless the suspect refutes it with a
newer incarnation; independent confirmations shorten it (Lifeguard). Every
state change rides as gossip on pings and acks and on gossip rounds to a few
random members, each item sent `retransmit_limit(n)` times. Joins, periodic
anti-entropy and reconnects to dead members (which heal partitions) are full
state exchanges (SYNC), as is any datagram from a sender we never heard of.
Pings to a suspect, and acks to one, carry the suspicion so it can refute
without waiting for gossip. Timing math lives in `swim_timing`, the state
table in `swim_states`. The engine does not authenticate: the peer wraps its
transport in `gossip_seal.SealedTransport`, which drops datagrams not sealed
with the mesh secret (and the namespace).

Sans-IO: the engine owns no socket and no timer. Its edges:

- `receive(data, src)`: the transport calls it once per datagram; it does not
  block and does not keep `data` after returning.
- `Clock`: `time()` and `call_later(delay, callback)` (an asyncio loop is one,
  `sim_network.SimClock` another). Every callback runs on the clock's thread;
  nothing here is thread-safe.
- `GossipTransport.send(addr, data)`: unreliable datagrams; never blocks.

Consumer surface (the peer's): `members`, `others()`, `ring`, and
`on_change(joined, left)`, called synchronously once per batch of changes (one
datagram or one timer), never re-entrantly; it must not block. Plus
`state_of`, `incarnation_of`, `addr_of` and `snapshot()` for status pages.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence

import msgpack

from kvmesh.errors import RemoteProtocolError
from kvmesh.hashring.ring import HashRing
from kvmesh.mesh.swim_states import (LIVE, MAX_INCARNATION, Member, MemberState, must_refute,
                                     refute_incarnation, supersedes)
from kvmesh.mesh.swim_timing import (SwimConfig, confirmations_wanted, gossip_fanout,
                                     push_pull_interval, remaining_suspicion_time,
                                     retransmit_limit, scale_by_awareness, suspicion_max_timeout,
                                     suspicion_timeout)
from kvmesh.types import PeerId

ChangeFn = Callable[[set[PeerId], set[PeerId]], None]  # (joined, left)

# ---- wire format ------------------------------------------------------------
# A datagram is one msgpack array:
#   [version, kind, seq, sender, target, target_addr, [entry, ...]]
# and an entry is [state, incarnation, peer, addr, origin]. Later versions may
# append fields to either; readers ignore what they do not know.

VERSION = 1
MIN_VERSION = 1
MAX_DATAGRAM_BYTES = 1400  # we never send more: one Ethernet frame, no fragments
MAX_RECV_BYTES = 65507  # anything longer is dropped unread
MAX_ENTRIES = 128  # entries per datagram
MAX_NAME_BYTES = 255  # peer ids and addresses
MAX_SEQ = (1 << 32) - 1
_HEADER_BYTES = 32  # array headers, version, kind, seq and string headers, rounded up


class Kind(IntEnum):
    """ONLY APPEND TO THIS LIST: the values are part of the protocol."""

    PING = 1
    ACK = 2
    PING_REQ = 3  # please ping `target` at `target_addr` and forward its ack
    NACK = 4  # a relay's ping went unanswered (Lifeguard: the requester is fine)
    GOSSIP = 5  # entries only
    SYNC = 6  # here is my state; send me yours
    SYNC_REPLY = 7  # here is my state


class Entry(NamedTuple):
    """One claim about one member. A NamedTuple: immutable and cheap at 1,000 peers."""

    state: int
    incarnation: int
    peer: str
    addr: str
    origin: str  # who suspects (suspect) or who leaves (left); "" otherwise


class Message(NamedTuple):
    kind: Kind
    seq: int
    sender: str
    target: str
    target_addr: str
    entries: tuple[Entry, ...]


def pack_entry(entry: Entry) -> bytes:
    return msgpack.packb(tuple(entry))


def encode(kind: Kind, seq: int, sender: str, target: str = "", target_addr: str = "",
           entries: Sequence[bytes] = ()) -> bytes:
    """One datagram; `entries` are already packed (see `pack_entry`)."""
    head = msgpack.packb((VERSION, int(kind), seq, sender, target, target_addr))
    n = len(entries)
    count = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    # head starts with fixarray(6); the entries array makes it seven fields.
    return b"\x97" + head[1:] + count + b"".join(entries)


def decode(data: bytes) -> Message:
    """Parse one datagram; raises RemoteProtocolError for anything malformed."""
    if len(data) > MAX_RECV_BYTES:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes exceeds {MAX_RECV_BYTES}")
    try:
        obj = msgpack.unpackb(data, use_list=False, raw=False, max_str_len=MAX_NAME_BYTES,
                              max_bin_len=0, max_array_len=MAX_ENTRIES, max_map_len=0,
                              max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for bad input
        raise RemoteProtocolError(f"undecodable datagram: {exc}") from None
    if type(obj) is not tuple or len(obj) < 7:
        raise RemoteProtocolError("datagram is not a 7-field array")
    version, kind, seq, sender, target, target_addr, raw = obj[:7]
    if type(version) is not int or version < MIN_VERSION:
        raise RemoteProtocolError(f"unsupported version {version!r}")
    if type(kind) is not int or kind not in _KINDS:
        raise RemoteProtocolError(f"unknown message kind {kind!r}")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise RemoteProtocolError("bad sequence number")
    if not (_is_name(sender) and type(target) is str and type(target_addr) is str):
        raise RemoteProtocolError("bad sender or target")
    if type(raw) is not tuple:
        raise RemoteProtocolError("entries are not an array")
    return Message(Kind(kind), seq, sender, target, target_addr, tuple(map(_entry, raw)))


_KINDS = frozenset(int(k) for k in Kind)
_STATES = frozenset(int(s) for s in MemberState)
_STATE_OF = {int(s): s for s in MemberState}


def _is_name(value: object) -> bool:
    return type(value) is str and value != ""


def _entry(raw: object) -> Entry:
    if type(raw) is not tuple or len(raw) < 5:
        raise RemoteProtocolError("entry is not a 5-field array")
    state, inc, peer, addr, origin = raw[:5]
    if (type(state) is not int or state not in _STATES or type(inc) is not int
            or not 0 <= inc <= MAX_INCARNATION or type(peer) is not str or not peer
            or type(addr) is not str or not addr or type(origin) is not str):
        raise RemoteProtocolError(f"bad entry {raw!r}")
    return Entry(state, inc, peer, addr, origin)


# ---- edges --------------------------------------------------------------------


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...


class GossipTransport(Protocol):
    def send(self, addr: str, data: bytes) -> None:
        """Send one datagram to "host:port". Never blocks; may drop silently; `data` is not kept."""

    def set_receiver(self, receive: Callable[[bytes, str], None] | None) -> None:
        """Call `receive(data, src_addr)` for each datagram from now on (None: stop)."""


# ---- gossip queue ---------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    peer: str
    packed: bytes
    sends: int = 0
    live: bool = True  # False once replaced, dropped or sent out


class BroadcastQueue:
    """Pending gossip: the newest claim per member, least-sent first, newest first.

    Bounded: past `max_items` the oldest item is dropped (and counted); gossip
    is best effort, anti-entropy (SYNC) repairs what is lost. Each send count
    has a stack of items; replaced items stay there, marked dead, until popped
    or compacted away.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.dropped = 0
        self._by_peer: OrderedDict[str, _Item] = OrderedDict()  # oldest first
        self._stacks: list[list[_Item]] = [[]]  # stack i: items sent i times
        self._stacked = 0

    def __len__(self) -> int:
        return len(self._by_peer)

    def put(self, peer: str, packed: bytes) -> None:
        """Queue a claim about `peer`, replacing any older one about the same member."""
        old = self._by_peer.pop(peer, None)
        if old is not None:
            old.live = False
        self._by_peer[peer] = item = _Item(peer, packed)
        self._push(item)
        if len(self._by_peer) > self.max_items:
            self._by_peer.popitem(last=False)[1].live = False
            self.dropped += 1
        if self._stacked > 2 * self.max_items + 64:
            self._compact()

    def take(self, budget: int, limit: int, max_items: int) -> list[bytes]:
        """Up to `budget` bytes of items, each counted as sent once; dropped after `limit` sends."""
        picked: list[_Item] = []
        for stack in self._stacks:
            while stack and len(picked) < max_items:
                item = stack[-1]
                if item.live and len(item.packed) > budget:
                    break
                stack.pop()
                self._stacked -= 1
                if item.live:
                    picked.append(item)
                    budget -= len(item.packed)
            if stack and (len(picked) >= max_items or len(stack[-1].packed) > budget):
                break
        for item in picked:
            item.sends += 1
            if item.sends >= limit:
                item.live = False
                del self._by_peer[item.peer]
            else:
                self._push(item)
        return [item.packed for item in picked]

    def _push(self, item: _Item) -> None:
        while len(self._stacks) <= item.sends:
            self._stacks.append([])
        self._stacks[item.sends].append(item)
        self._stacked += 1

    def _compact(self) -> None:
        stacks, self._stacks, self._stacked = self._stacks, [[]], 0
        for stack in stacks:
            for item in stack:
                if item.live:
                    self._push(item)


# ---- the engine ---------------------------------------------------------------------


@dataclass(slots=True)
class SwimStats:
    sent: int = 0
    received: int = 0
    malformed: int = 0  # undecodable or out-of-cap datagrams, dropped
    misdirected: int = 0  # pings meant for another peer id at our address
    probes: int = 0
    probe_failures: int = 0
    suspicions: int = 0  # suspicions started here (own probes or gossip)
    refutations: int = 0  # times we bumped our incarnation to answer an accusation
    declared_dead: int = 0  # suspicions that expired here


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of `snapshot()`, ready for JSON."""

    peer: PeerId
    addr: str
    state: str  # alive, suspect, dead or left
    incarnation: int


@dataclass(slots=True)
class _Probe:
    target: PeerId
    seq: int
    timer: Timer | None = None
    indirect: int = 0  # relays asked
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str  # address to forward the ack (or nack) to
    seq: int  # the requester's sequence number
    timer: Timer | None = None


@dataclass(slots=True)
class _Suspicion:
    start: float
    k: int
    min_s: float
    max_s: float
    confirmers: set[str] = field(default_factory=set)
    timer: Timer | None = None


@dataclass(slots=True)
class _Join:
    seq: int
    addrs: list[str]
    deadline: float
    on_done: Callable[[bool], None] | None
    timer: Timer | None = None
    next: int = 0  # index into addrs of the next one to ask


_ALIVE, _SUSPECT, _DEAD, _LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                                  MemberState.LEFT)
_SYNC_KINDS = (Kind.SYNC, Kind.SYNC_REPLY)
MAX_SEEDS = 64
JOIN_FANOUT = 3  # addresses asked per join attempt
JOIN_SETTLE_PERIODS = 3  # a joiner's second state exchange, in probe intervals
STRANGER_SYNC_S = 5.0  # state exchanges with one unknown sender are at least this far apart
MAX_STRANGERS = 256


class Swim:
    """One member's SWIM engine. See the module docstring for its contracts."""

    def __init__(self, self_id: str, addr: str, transport: GossipTransport, clock: Clock,
                 on_change: ChangeFn, vnodes: int = 128, config: SwimConfig = SwimConfig(),
                 rng: random.Random | None = None) -> None:
        self.self_id = PeerId(self_id)
        self.addr = addr
        self.config = config
        self.incarnation = 0
        self.stats = SwimStats()
        self._transport = transport
        self._clock = clock
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._self_bytes = len(self_id.encode())
        self._members: dict[PeerId, Member] = {}  # everyone but us
        self._live: list[PeerId] = []  # alive or suspect, for O(1) random picks
        self._live_at: dict[PeerId, int] = {}
        self._recent_dead: dict[PeerId, float] = {}  # gossiped to for gossip_to_dead_s
        self._ring = HashRing([self.self_id], vnodes=vnodes)
        self._ring_pending: dict[PeerId, bool] = {}  # applied when `ring` is read
        self._members_view: frozenset[PeerId] | None = None
        self._joined: set[PeerId] = set()
        self._left: set[PeerId] = set()
        self._queue = BroadcastQueue(config.broadcast_queue_max)
        self._acks: dict[int, _Probe | _Relay] = {}
        self._suspicions: dict[PeerId, _Suspicion] = {}
        self._joins: dict[int, _Join] = {}
        self._seeds: list[str] = []
        self._stranger_syncs: dict[str, float] = {}  # addr -> last exchange
        self._probe_order: list[PeerId] = []
        self._probe_next = 0
        self._awareness = 0
        self._limit_for, self._limit = 0, 0  # retransmit limit cached per member count
        self._seq = 0
        self._timers: dict[str, Timer] = {}
        self._running = False
        self._leaving = False

    # ---- consumer surface -------------------------------------------------------

    @property
    def members(self) -> frozenset[PeerId]:
        """Alive and suspect members, ourselves included."""
        if self._members_view is None:
            self._members_view = frozenset((*self._live, self.self_id))
        return self._members_view

    def others(self) -> list[PeerId]:
        return sorted(self._live)

    @property
    def ring(self) -> HashRing:
        """The ring over `members`; brought up to date on each read."""
        if self._ring_pending:
            for peer, live in self._ring_pending.items():
                (self._ring.add if live else self._ring.remove)(peer)
            self._ring_pending.clear()
        return self._ring

    def state_of(self, peer: str) -> MemberState | None:
        if peer == self.self_id:
            return _LEFT if self._leaving else _ALIVE
        m = self._members.get(PeerId(peer))
        return None if m is None else m.state

    def incarnation_of(self, peer: str) -> int | None:
        if peer == self.self_id:
            return self.incarnation
        m = self._members.get(PeerId(peer))
        return None if m is None else m.incarnation

    def addr_of(self, peer: str) -> str | None:
        if peer == self.self_id:
            return self.addr
        m = self._members.get(PeerId(peer))
        return None if m is None else m.addr

    def snapshot(self) -> list[MemberView]:
        """Every member we hold (dead and left until reaped), ourselves included, by peer id."""
        rows = [MemberView(self.self_id, self.addr, self.state_of(self.self_id).name.lower(),
                           self.incarnation)]
        rows += [MemberView(m.peer, m.addr, m.state.name.lower(), m.incarnation)
                 for m in self._members.values()]
        return sorted(rows, key=lambda r: r.peer)

    @property
    def awareness(self) -> int:
        """Local health score: 0 is healthy; probes slow down by (score + 1)."""
        return self._awareness

    @property
    def broadcasts_dropped(self) -> int:
        return self._queue.dropped

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Register with the transport and start the timers (idempotent)."""
        if self._running:
            return
        self._running = True
        self._transport.set_receiver(self.receive)
        cfg, jitter = self.config, self._rng.random
        self._after("probe", jitter() * cfg.probe_interval_s, self._probe_tick)
        self._after("gossip", jitter() * cfg.gossip_interval_s, self._gossip_tick)
        pull = push_pull_interval(cfg.push_pull_interval_s, len(self._live) + 1)
        self._after("push_pull", (0.5 + jitter()) * pull, self._push_pull_tick)
        self._after("reconnect", (0.5 + jitter()) * cfg.reconnect_interval_s, self._reconnect_tick)

    def preload(self, members: Iterable[tuple[str, str]]) -> None:
        """Take (peer id, gossip address) pairs as alive at incarnation 0, without gossip.

        A warm start (a previous run's snapshot, a simulation); wrong entries
        are probed, suspected and declared dead like any failed member.
        """
        now = self._clock.time()
        for peer, addr in members:
            peer = PeerId(peer)
            if peer != self.self_id and peer not in self._members:
                self._members[peer] = m = Member(peer, addr, _ALIVE, 0, now)
                self._became_live(m, probe_soon=False)
        self._probe_order, self._probe_next = [], 0  # reshuffled at the next probe
        self._flush_changes()

    def join(self, addrs: Iterable[str], on_done: Callable[[bool], None] | None = None) -> None:
        """Exchange state with these gossip addresses ("host:port"); starts the engine.

        Asks JOIN_FANOUT of them, in a shuffled turn, every probe interval
        until one answers: then on_done(True); on_done(False) after
        join_timeout_s without an answer. With no address but our own there
        is nobody to ask: on_done(True) at once. The addresses are kept as
        seeds for rejoining after total isolation.
        """
        self.start()
        addrs = list(dict.fromkeys(a for a in addrs if a != self.addr))
        self._seeds = list(dict.fromkeys(self._seeds + addrs))[-MAX_SEEDS:]
        if not addrs:
            if on_done is not None:
                on_done(True)
            return
        self._rng.shuffle(addrs)
        join = _Join(self._next_seq(), addrs, self._clock.time() + self.config.join_timeout_s,
                     on_done)
        self._joins[join.seq] = join
        self._join_attempt(join)

    def leave(self) -> None:
        """Tell up to leave_fanout members that we leave, then stop.

        They mark us LEFT (no suspicion) and gossip it on; if every notice is
        lost the others find us dead the usual way.
        """
        if not self._running:
            return
        self._leaving = True
        notice = pack_entry(Entry(_LEFT, self.incarnation, self.self_id, self.addr, self.self_id))
        for peer in self._sample_live(self.config.leave_fanout):
            self._send(self._members[peer].addr, Kind.GOSSIP, first=notice)
        self.stop()

    def stop(self) -> None:
        """Cancel every timer and ignore datagrams from now on; pending joins report False."""
        self._running = False
        self._transport.set_receiver(None)
        for timer in self._timers.values():
            timer.cancel()
        for wait in self._acks.values():
            if wait.timer is not None:
                wait.timer.cancel()
        for suspicion in self._suspicions.values():
            suspicion.timer.cancel()
        joins, self._joins = list(self._joins.values()), {}
        self._acks.clear()
        self._suspicions.clear()
        for join in joins:
            join.timer.cancel()
            if join.on_done is not None:
                join.on_done(False)

    # ---- datagrams in -------------------------------------------------------------

    def receive(self, data: bytes, src: str) -> None:
        """One datagram from `src` ("host:port"). Never raises for bad input: drops and counts."""
        if not self._running:
            return
        self.stats.received += 1
        try:
            msg = decode(data)
        except RemoteProtocolError:
            self.stats.malformed += 1
            return
        sync = msg.kind in _SYNC_KINDS
        for entry in msg.entries:
            # Full-state exchanges would re-gossip the whole table: only changes
            # to members we knew, and news about the sender itself, go on.
            self._apply(entry, rebroadcast_new=not sync or entry.peer == msg.sender)
        self._HANDLERS[msg.kind](self, msg, src)
        if not sync and msg.sender not in self._members and msg.sender != self.self_id:
            self._sync_stranger(src)
        self._flush_changes()

    def _sync_stranger(self, src: str) -> None:
        """A member we never heard of knows us: swap state (at most once per STRANGER_SYNC_S)."""
        now = self._clock.time()
        if now - self._stranger_syncs.get(src, -STRANGER_SYNC_S) < STRANGER_SYNC_S:
            return
        if len(self._stranger_syncs) >= MAX_STRANGERS:
            self._stranger_syncs = {a: t for a, t in self._stranger_syncs.items()
                                    if now - t < STRANGER_SYNC_S}
            if len(self._stranger_syncs) >= MAX_STRANGERS:
                return  # a flood of strangers: push-pull will catch up
        self._stranger_syncs[src] = now
        self._send_state(src, Kind.SYNC, 0)

    def _on_ping(self, msg: Message, src: str) -> None:
        if msg.target != self.self_id:
            self.stats.misdirected += 1
            return
        # A sender we suspect or hold dead learns it at once, and can refute.
        m = self._members.get(PeerId(msg.sender))
        first = pack_entry(self._entry_of(m)) if m is not None and m.state is not _ALIVE else None
        self._send(src, Kind.ACK, msg.seq, first=first)

    def _on_ack(self, msg: Message, src: str) -> None:
        wait = self._acks.pop(msg.seq, None)
        if wait is None:
            return
        wait.timer.cancel()
        if isinstance(wait, _Relay):
            self._send(wait.requester, Kind.ACK, wait.seq)
        else:
            self._adjust_awareness(-1)

    def _on_ping_req(self, msg: Message, src: str) -> None:
        if not _is_name(msg.target) or not _is_name(msg.target_addr):
            self.stats.malformed += 1
            return
        relay = _Relay(src, msg.seq)
        seq = self._next_seq()
        self._acks[seq] = relay
        self._send(msg.target_addr, Kind.PING, seq, target=msg.target)
        relay.timer = self._clock.call_later(self.config.probe_timeout_s,
                                             lambda: self._relay_timeout(seq))

    def _relay_timeout(self, seq: int) -> None:
        relay = self._acks.pop(seq, None)
        if isinstance(relay, _Relay):
            self._send(relay.requester, Kind.NACK, relay.seq)

    def _on_nack(self, msg: Message, src: str) -> None:
        probe = self._acks.get(msg.seq)
        if isinstance(probe, _Probe):
            probe.nacks += 1

    def _on_gossip(self, msg: Message, src: str) -> None:
        pass  # entries were applied in receive()

    def _on_sync(self, msg: Message, src: str) -> None:
        self._send_state(src, Kind.SYNC_REPLY, msg.seq)

    def _on_sync_reply(self, msg: Message, src: str) -> None:
        join = self._joins.pop(msg.seq, None)
        if join is not None:
            join.timer.cancel()
            # Members that joined alongside us may be missing from that answer:
            # one more exchange with someone else once their gossip has settled.
            self._clock.call_later(JOIN_SETTLE_PERIODS * self.config.probe_interval_s,
                                   self._sync_random)
            if join.on_done is not None:
                join.on_done(True)

    _HANDLERS = {Kind.PING: _on_ping, Kind.ACK: _on_ack, Kind.PING_REQ: _on_ping_req,
                 Kind.NACK: _on_nack, Kind.GOSSIP: _on_gossip, Kind.SYNC: _on_sync,
                 Kind.SYNC_REPLY: _on_sync_reply}

    # ---- claims ---------------------------------------------------------------------

    def _apply(self, e: Entry, rebroadcast_new: bool = True) -> None:
        """Merge one claim by the state table; gossip it on if it changed anything."""
        state = _STATE_OF[e.state]
        if e.peer == self.self_id:
            self._about_self(state, e.incarnation)
            return
        peer = PeerId(e.peer)
        m = self._members.get(peer)
        if m is None:
            if state not in LIVE:
                return  # news of a stranger's death
            self._members[peer] = m = Member(peer, e.addr, state, e.incarnation,
                                             self._clock.time())
            self._became_live(m)
            if state is _SUSPECT:
                self._start_suspicion(m, e.origin)
            if rebroadcast_new:
                self._queue.put(peer, pack_entry(e))
            return
        if state is m.state and e.incarnation == m.incarnation and state is not _SUSPECT:
            return  # old news, the common case
        if not supersedes(m.state, m.incarnation, state, e.incarnation):
            if state is _SUSPECT and m.state is _SUSPECT and e.incarnation == m.incarnation:
                self._confirm(m, e)
            return
        was_live = m.live
        m.apply(state, e.incarnation, self._clock.time())
        if state is _ALIVE:
            m.addr = e.addr  # a refutation may come from a restarted peer's new address
        if state is _SUSPECT:
            self._start_suspicion(m, e.origin)
        else:
            self._end_suspicion(peer)
        if was_live and not m.live:
            self._became_dead(m)
        elif m.live and not was_live:
            self._became_live(m)
        self._queue.put(peer, pack_entry(e))

    def _about_self(self, state: MemberState, incarnation: int) -> None:
        if must_refute(self.incarnation, state, incarnation, self._leaving):
            self.incarnation = refute_incarnation(self.incarnation, incarnation)
            self.stats.refutations += 1
            self._adjust_awareness(1)
            self._queue.put(self.self_id, pack_entry(self._self_entry()))

    def _start_suspicion(self, m: Member, origin: str) -> None:
        cfg, n = self.config, len(self._live) + 1
        min_s = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval_s)
        s = _Suspicion(self._clock.time(), confirmations_wanted(cfg.suspicion_mult, n), min_s,
                       suspicion_max_timeout(cfg.suspicion_max_mult, min_s), {origin})
        self._end_suspicion(m.peer)
        self._suspicions[m.peer] = s
        self._arm_suspicion(m, s, s.max_s if s.k else s.min_s)
        self.stats.suspicions += 1

    def _confirm(self, m: Member, e: Entry) -> None:
        """Another member suspects the same incarnation: shorten the timeout (Lifeguard)."""
        s = self._suspicions.get(m.peer)
        if s is None or not e.origin or e.origin in s.confirmers or len(s.confirmers) > s.k:
            return
        s.confirmers.add(e.origin)
        s.timer.cancel()
        elapsed = self._clock.time() - s.start
        self._arm_suspicion(m, s, remaining_suspicion_time(len(s.confirmers) - 1, s.k, elapsed,
                                                           s.min_s, s.max_s))
        self._queue.put(m.peer, pack_entry(e))

    def _arm_suspicion(self, m: Member, s: _Suspicion, delay: float) -> None:
        peer, incarnation = m.peer, m.incarnation
        s.timer = self._clock.call_later(max(0.0, delay),
                                         lambda: self._suspicion_expired(peer, incarnation))

    def _end_suspicion(self, peer: PeerId) -> None:
        s = self._suspicions.pop(peer, None)
        if s is not None:
            s.timer.cancel()

    def _suspicion_expired(self, peer: PeerId, incarnation: int) -> None:
        self._suspicions.pop(peer, None)
        m = self._members.get(peer)
        if m is None or m.state is not _SUSPECT or m.incarnation != incarnation:
            return
        self.stats.declared_dead += 1
        self._apply(Entry(_DEAD, incarnation, peer, m.addr, self.self_id))
        self._flush_changes()

    def _became_live(self, m: Member, probe_soon: bool = True) -> None:
        self._live_at[m.peer] = len(self._live)
        self._live.append(m.peer)
        self._recent_dead.pop(m.peer, None)
        if probe_soon:  # within this round, at a random place (as memberlist does)
            at = self._rng.randint(self._probe_next, len(self._probe_order))
            self._probe_order.insert(at, m.peer)
        self._note_change(m.peer, True)

    def _became_dead(self, m: Member) -> None:
        at = self._live_at.pop(m.peer)
        last = self._live.pop()
        if last != m.peer:
            self._live[at] = last
            self._live_at[last] = at
        if m.state is _DEAD:
            self._recent_dead[m.peer] = self._clock.time()
        self._note_change(m.peer, False)

    def _note_change(self, peer: PeerId, live: bool) -> None:
        self._members_view = None
        self._ring_pending[peer] = live
        grow, shrink = (self._joined, self._left) if live else (self._left, self._joined)
        if peer in shrink:
            shrink.discard(peer)  # undone within the batch: nothing to report
        else:
            grow.add(peer)

    def _flush_changes(self) -> None:
        if self._joined or self._left:
            joined, left = self._joined, self._left
            self._joined, self._left = set(), set()
            self._on_change(joined, left)

    # ---- probing -------------------------------------------------------------------

    def _probe_tick(self) -> None:
        cfg = self.config
        self._after("probe", scale_by_awareness(cfg.probe_interval_s, self._awareness),
                    self._probe_tick)
        target = self._next_probe_target()
        if target is None:
            return
        probe = _Probe(target, self._next_seq())
        self._acks[probe.seq] = probe
        self.stats.probes += 1
        m = self._members[target]
        # A suspect hears of it from every prober, not just from gossip, and can refute.
        first = pack_entry(self._entry_of(m)) if m.state is _SUSPECT else None
        self._send(m.addr, Kind.PING, probe.seq, target=target, first=first)
        probe.timer = self._clock.call_later(
            scale_by_awareness(cfg.probe_timeout_s, self._awareness),
            lambda: self._probe_indirect(probe))

    def _next_probe_target(self) -> PeerId | None:
        for _ in range(2):
            while self._probe_next < len(self._probe_order):
                peer = self._probe_order[self._probe_next]
                self._probe_next += 1
                m = self._members.get(peer)
                if m is not None and m.live:
                    return peer
            self._probe_order = list(self._live)
            self._rng.shuffle(self._probe_order)
            self._probe_next = 0
        return None

    def _probe_indirect(self, probe: _Probe) -> None:
        if self._acks.get(probe.seq) is not probe:
            return
        m = self._members.get(probe.target)
        if m is None or not m.live:
            del self._acks[probe.seq]
            return
        for helper in self._sample_live(self.config.indirect_checks, exclude=probe.target):
            self._send(self._members[helper].addr, Kind.PING_REQ, probe.seq, target=m.peer,
                       target_addr=m.addr)
            probe.indirect += 1
        rest = self.config.probe_interval_s - self.config.probe_timeout_s
        probe.timer = self._clock.call_later(scale_by_awareness(rest, self._awareness),
                                             lambda: self._probe_failed(probe))

    def _probe_failed(self, probe: _Probe) -> None:
        if self._acks.get(probe.seq) is not probe:
            return
        del self._acks[probe.seq]
        self.stats.probe_failures += 1
        # Lifeguard: relays that did not even nack point at our own network or CPU.
        self._adjust_awareness(probe.indirect - probe.nacks if probe.indirect else 1)
        m = self._members.get(probe.target)
        if m is not None and m.live:
            self._apply(Entry(_SUSPECT, m.incarnation, m.peer, m.addr, self.self_id))
        self._flush_changes()

    def _adjust_awareness(self, delta: int) -> None:
        self._awareness = min(max(self._awareness + delta, 0), self.config.awareness_max - 1)

    # ---- gossip and state exchange -----------------------------------------------

    def _gossip_tick(self) -> None:
        cfg = self.config
        self._after("gossip", cfg.gossip_interval_s, self._gossip_tick)
        if not len(self._queue):
            return
        fanout = gossip_fanout(cfg.gossip_nodes, len(self._live) + 1)
        targets = [self._members[p].addr for p in self._sample_live(fanout)]
        dead = self._recent_dead_pick(fanout)
        if dead is not None:
            targets.append(self._members[dead].addr)
        for addr in targets:
            if not len(self._queue):
                break
            self._send(addr, Kind.GOSSIP)

    def _recent_dead_pick(self, fanout: int) -> PeerId | None:
        """Now and then a freshly dead member, so a wrongly declared one hears it and refutes.

        As likely as if the recently dead were candidates for the fanout
        alongside the live (memberlist's gossip-to-the-dead).
        """
        if not self._recent_dead:
            return None
        horizon = self._clock.time() - self.config.gossip_to_dead_s
        for peer in [p for p, t in self._recent_dead.items() if t < horizon]:
            del self._recent_dead[peer]
        dead = len(self._recent_dead)
        if not dead or self._rng.random() >= fanout * dead / (dead + len(self._live)):
            return None
        return self._rng.choice(tuple(self._recent_dead))

    def _push_pull_tick(self) -> None:
        interval = push_pull_interval(self.config.push_pull_interval_s, len(self._live) + 1)
        self._after("push_pull", interval * (0.5 + self._rng.random()), self._push_pull_tick)
        self._sync_random()

    def _sync_random(self) -> None:
        for peer in self._sample_live(1):
            if self._running:
                self._send_state(self._members[peer].addr, Kind.SYNC, 0)

    def _reconnect_tick(self) -> None:
        """Forget the long dead; maybe exchange state with a dead member (heals partitions).

        With probability dead / live (as Serf does), so that the whole mesh
        tries each dead member about once per reconnect interval.
        """
        self._after("reconnect", self.config.reconnect_interval_s, self._reconnect_tick)
        horizon = self._clock.time() - self.config.dead_reap_s
        for peer in [p for p, m in self._members.items() if not m.live and m.since < horizon]:
            del self._members[peer]
            self._recent_dead.pop(peer, None)
        dead = [m for m in self._members.values() if m.state is _DEAD]
        if dead and self._rng.random() < len(dead) / max(1, len(self._live)):
            self._send_state(self._rng.choice(dead).addr, Kind.SYNC, 0)
        if not self._live and self._seeds:  # alone: try to rejoin through the seeds
            for addr in self._rng.sample(self._seeds, min(JOIN_FANOUT, len(self._seeds))):
                self._send_state(addr, Kind.SYNC, 0)

    def _join_attempt(self, join: _Join) -> None:
        if self._joins.get(join.seq) is not join:
            return
        if self._clock.time() >= join.deadline:
            del self._joins[join.seq]
            if join.on_done is not None:
                join.on_done(False)
            return
        # A few addresses per attempt, in turn: each answer is our whole state
        # from one member, and a DNS name may list hundreds.
        for _ in range(min(JOIN_FANOUT, len(join.addrs))):
            self._send_state(join.addrs[join.next % len(join.addrs)], Kind.SYNC, join.seq)
            join.next += 1
        join.timer = self._clock.call_later(self.config.probe_interval_s,
                                            lambda: self._join_attempt(join))

    def _send_state(self, addr: str, kind: Kind, seq: int) -> None:
        """Our whole table in as many datagrams as it takes; only the first asks for a reply."""
        entries = [pack_entry(self._self_entry())]
        entries += [pack_entry(self._entry_of(m)) for m in self._members.values()]
        budget = MAX_DATAGRAM_BYTES - _HEADER_BYTES - self._self_bytes
        start = 0
        while start < len(entries):
            end, used = start, 0
            while (end < len(entries) and end - start < MAX_ENTRIES
                   and used + len(entries[end]) <= budget):
                used += len(entries[end])
                end += 1
            end = max(end, start + 1)
            self._transport.send(addr, encode(kind, seq, self.self_id, entries=entries[start:end]))
            self.stats.sent += 1
            kind, start = Kind.SYNC_REPLY, end

    # ---- helpers -----------------------------------------------------------------------

    def _send(self, addr: str, kind: Kind, seq: int = 0, target: str = "", target_addr: str = "",
              first: bytes | None = None) -> None:
        """One datagram with as much pending gossip piggybacked as fits."""
        budget = (MAX_DATAGRAM_BYTES - _HEADER_BYTES - self._self_bytes
                  - len(target.encode()) - len(target_addr.encode()))
        items = [first] if first is not None else []
        budget -= len(first) if first is not None else 0
        if len(self._queue):
            items += self._queue.take(budget, self._retransmit_limit(), MAX_ENTRIES - len(items))
        self._transport.send(addr, encode(kind, seq, self.self_id, target, target_addr, items))
        self.stats.sent += 1

    def _retransmit_limit(self) -> int:
        n = len(self._live) + 1
        if n != self._limit_for:
            self._limit_for, self._limit = n, retransmit_limit(self.config.retransmit_mult, n)
        return self._limit

    def _sample_live(self, k: int, exclude: PeerId | None = None) -> list[PeerId]:
        """Up to k distinct random live members other than `exclude`, in a seeded order."""
        live, n = self._live, len(self._live)
        if k <= 0 or n == 0:
            return []
        if 3 * k >= n:
            pool = [p for p in live if p != exclude]
            self._rng.shuffle(pool)
            return pool[:k]
        out: list[PeerId] = []
        while len(out) < k:
            peer = live[self._rng.randrange(n)]
            if peer != exclude and peer not in out:
                out.append(peer)
        return out

    def _self_entry(self) -> Entry:
        return Entry(_ALIVE, self.incarnation, self.self_id, self.addr, "")

    def _entry_of(self, m: Member) -> Entry:
        return Entry(int(m.state), m.incarnation, m.peer, m.addr, "")

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        return self._seq

    def _after(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        if self._running:
            self._timers[name] = self._clock.call_later(delay, callback)
