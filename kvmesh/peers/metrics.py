"""What a peer reports about itself: the status snapshot and Prometheus metrics.

Both are read from a `PeerStatus` snapshot taken at request time
(`Peer.status()`: its counters, its store's stats, membership, directory and
connections); nothing is cached, so there is no state to keep in step. Call
on the peer's loop.

Metrics live in a per-peer `CollectorRegistry` made by `peer_registry`; the
global prometheus_client registry is never touched, so several peers in one
process (tests, `kvmesh demo`) each expose only their own numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvmesh.peers.status import PeerStatus

TIERS = ("cpu", "disk")
MEMBER_STATES = ("alive", "suspect", "dead", "left")

# (PeerStats counter, metric name without _total, help)
COUNTERS = (
    ("lookups", "kvmesh_lookups", "Prefix lookups answered by this peer."),
    ("lookup_chunks", "kvmesh_lookup_chunks", "Chunks asked about in lookups."),
    ("lookup_hit_chunks", "kvmesh_lookup_hit_chunks", "Chunks found, here or in the mesh."),
    ("local_hits", "kvmesh_local_hits", "Chunks loaded from this peer's own tiers."),
    ("remote_hits", "kvmesh_remote_hits", "Chunks pulled from another peer."),
    ("read_in_place", "kvmesh_read_in_place",
     "Remote hits read straight out of a same-host peer's pool (not stored here)."),
    ("load_failures", "kvmesh_load_failures", "Chunks that failed to load."),
    ("bytes_pulled", "kvmesh_bytes_pulled", "Payload bytes pulled from other peers."),
    ("bytes_served", "kvmesh_bytes_served", "Payload bytes served to other peers."),
    ("chunks_saved", "kvmesh_chunks_saved", "Chunks committed to this peer's store."),
    ("accept_errors", "kvmesh_accept_errors",
     "Failed accepts of inbound connections (out of descriptors or memory, ...)."),
    ("connections_refused", "kvmesh_connections_refused",
     "Inbound connections closed at once, past a connection cap."),
    ("idle_closed", "kvmesh_idle_closed", "Inbound connections closed after the idle timeout."),
    ("send_timeouts", "kvmesh_send_timeouts",
     "Inbound connections closed because a frame could not be written in time."),
)


def tier_usage(store_stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Chunks and bytes used/cap per tier, from `asdict(ChunkStore.stats())`.

    The one place that knows the names of the store's per-tier fields. The
    disk tier is inclusive, so a chunk may count in both tiers.
    """
    return {tier: {"chunks": store_stats[f"chunks_{tier}"],
                   "bytes_used": store_stats[f"{tier}_bytes_used"],
                   "bytes_cap": store_stats[f"{tier}_bytes_cap"]}
            for tier in TIERS}


def codec_savings(store_stats: dict[str, Any], counters: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{codec: {"disk", "wire", "compress"}}: bytes each codec saved: spills
    not written, stream bytes not sent, held chunks shrunk by /compress."""
    places = {"disk": store_stats.get("disk_bytes_saved", {}),
              "wire": counters.get("wire_bytes_saved", {}),
              "compress": store_stats.get("recode_bytes_saved", {})}
    codecs = sorted({name for saved in places.values() for name in saved})
    return {name: {place: saved.get(name, 0) for place, saved in places.items()} for name in codecs}


def hit_rate(counters: dict[str, Any]) -> float | None:
    """Fraction of looked-up chunks that were found; None before any lookup."""
    asked = counters.get("lookup_chunks", 0)
    return counters.get("lookup_hit_chunks", 0) / asked if asked else None


def member_states(status: PeerStatus) -> dict[str, dict[str, Any]]:
    """{peer: {"state", "incarnation", "addr"}} for every member SWIM still holds.

    Dead and left members stay listed until SWIM forgets them, so an operator
    sees who went away; "members" holds only the alive and suspect.
    """
    return {row.peer: {"state": row.state, "incarnation": row.incarnation, "addr": row.addr}
            for row in status.member_rows}


def status_json(status: PeerStatus) -> dict[str, Any]:
    """A peer's status as JSON-ready data (GET /status)."""
    store = dataclasses.asdict(status.store)
    return {
        "peer_id": status.peer_id,
        "members": list(status.members),
        "member_states": member_states(status),
        "gossip": status.gossip,
        "ring_shares": status.ring_shares,
        "store": store,
        "tiers": tier_usage(store),
        "counters": status.counters,
        "codec_bytes_saved": codec_savings(store, status.counters),
        "hit_rate": hit_rate(status.counters),
        "transports": status.transports,
        "directory_keys": status.directory_keys,
    }


def peer_registry(peer) -> CollectorRegistry:
    """A fresh registry holding one collector for `peer`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(peer))
    return registry


class PeerCollector:
    """Reads the peer's counters and store stats at scrape time."""

    def __init__(self, peer) -> None:
        self._peer = peer

    def collect(self) -> Iterator[Metric]:
        status = self._peer.status()
        counters = status.counters
        for field, name, doc in COUNTERS:
            yield CounterMetricFamily(name, doc, value=counters.get(field, 0))
        yield GaugeMetricFamily("kvmesh_pulls_inflight", "Pulls in flight from this peer.",
                                value=counters.get("pulls_inflight", 0))
        yield GaugeMetricFamily("kvmesh_members", "Members of the mesh, this peer included.",
                                value=len(status.members))
        by_state = GaugeMetricFamily("kvmesh_member_states",
                                     "Members SWIM holds, by state (dead/left until forgotten).",
                                     labels=["state"])
        counts: dict[str, int] = {}
        for row in status.member_rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        for state in MEMBER_STATES:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily("kvmesh_directory_keys", "Keys in this peer's directory shard.",
                                value=status.directory_keys)
        store = dataclasses.asdict(status.store)
        yield from _tier_gauges(tier_usage(store))
        saved = CounterMetricFamily("kvmesh_codec_bytes_saved",
                                    "Bytes a codec saved: disk (spills not written), wire (not sent), "
                                    "compress (held chunks shrunk).", labels=["codec", "where"])
        for codec, places in codec_savings(store, counters).items():
            for where, n in places.items():
                saved.add_metric([codec, where], n)
        yield saved


def _tier_gauges(usage: dict[str, dict[str, int]]) -> Iterator[Metric]:
    families = {
        "bytes_used": GaugeMetricFamily("kvmesh_store_bytes_used", "Bytes held per tier.",
                                        labels=["tier"]),
        "bytes_cap": GaugeMetricFamily("kvmesh_store_bytes_cap", "Byte capacity per tier.",
                                       labels=["tier"]),
        "chunks": GaugeMetricFamily("kvmesh_store_chunks", "Chunks held per tier.", labels=["tier"]),
    }
    for tier, fields in usage.items():
        for field, family in families.items():
            family.add_metric([tier], fields[field])
    yield from families.values()
