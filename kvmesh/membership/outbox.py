"""Every datagram the engine sends, each under `MAX_DATAGRAM_BYTES`.

Three shapes:

- `send`: one protocol message (ping, ack, ping-req, nack, gossip) with as
  much pending gossip piggybacked as fits; `first`, if given, goes before
  the queue's items (a suspicion the receiver must hear, a leave notice);
- `gossip`: one gossip round, the queue's items to a few random live
  members, now and then to a freshly dead one too;
- `send_state`: our whole table (SYNC or SYNC_REPLY), split over as many
  datagrams as it takes; only the first keeps the kind asked for, the rest
  go as SYNC_REPLY, so a SYNC gets one reply, not one per datagram.

Owns the transport's send side and the retransmit limit; takes items from
the broadcast queue (counting each send), reads the member table, counts
`stats.sent`. Sends never block and may be dropped by the transport. Called
by the other parts of one engine on the clock's thread.
"""

from __future__ import annotations

from typing import Callable

from kvmesh.membership.broadcast import BroadcastQueue, RetransmitLimit
from kvmesh.membership.edges import Clock, GossipTransport
from kvmesh.membership.members import MemberTable, entry_of
from kvmesh.membership.stats import SwimStats
from kvmesh.membership.timing import SwimConfig, gossip_fanout
from kvmesh.membership.wire import (HEADER_BYTES, MAX_DATAGRAM_BYTES, MAX_ENTRIES, Entry, Kind,
                                   encode, pack_entry)
from kvmesh.types import PeerId


class Outbox:
    def __init__(self, self_id: PeerId, transport: GossipTransport, queue: BroadcastQueue,
                 table: MemberTable, clock: Clock, config: SwimConfig, stats: SwimStats,
                 self_entry: Callable[[], Entry]) -> None:
        """`self_entry()`: our own alive claim at our current incarnation, for state dumps."""
        self._self_id = self_id
        self._transport = transport
        self._queue = queue
        self._table = table
        self._clock = clock
        self._config = config
        self._stats = stats
        self._self_entry = self_entry
        self._self_bytes = len(self_id.encode())
        self._limit = RetransmitLimit(config.retransmit_mult)

    def send(self, addr: str, kind: Kind, seq: int = 0, target: str = "", target_addr: str = "",
             first: bytes | None = None) -> None:
        """One datagram with as much pending gossip piggybacked as fits."""
        budget = (MAX_DATAGRAM_BYTES - HEADER_BYTES - self._self_bytes
                  - len(target.encode()) - len(target_addr.encode()))
        items = [first] if first is not None else []
        budget -= len(first) if first is not None else 0
        if len(self._queue):
            limit = self._limit(len(self._table.live) + 1)
            items += self._queue.take(budget, limit, MAX_ENTRIES - len(items))
        self._transport.send(addr, encode(kind, seq, self._self_id, target, target_addr, items))
        self._stats.sent += 1

    def gossip(self) -> None:
        """One gossip round; nothing at all while the queue is empty."""
        if not len(self._queue):
            return
        cfg, table = self._config, self._table
        fanout = gossip_fanout(cfg.gossip_nodes, len(table.live) + 1)
        targets = [table.known[p].addr for p in table.sample_live(fanout)]
        dead = table.recent_dead_pick(fanout, self._clock.time() - cfg.gossip_to_dead_s)
        if dead is not None:
            targets.append(table.known[dead].addr)
        for addr in targets:
            if not len(self._queue):
                break
            self.send(addr, Kind.GOSSIP)

    def send_state(self, addr: str, kind: Kind, seq: int) -> None:
        """Our whole table in as many datagrams as it takes; only the first asks for a reply."""
        entries = [pack_entry(self._self_entry())]
        entries += [pack_entry(entry_of(m)) for m in self._table.known.values()]
        budget = MAX_DATAGRAM_BYTES - HEADER_BYTES - self._self_bytes
        start = 0
        while start < len(entries):
            end, used = start, 0
            while (end < len(entries) and end - start < MAX_ENTRIES
                   and used + len(entries[end]) <= budget):
                used += len(entries[end])
                end += 1
            end = max(end, start + 1)
            self._transport.send(addr, encode(kind, seq, self._self_id,
                                              entries=entries[start:end]))
            self._stats.sent += 1
            kind, start = Kind.SYNC_REPLY, end
