"""How many ring owners keep each directory entry: the whole mesh while it is small.

A lookup's latency is set by how many owners it must ask: with r=2 a
32-chunk prefix spreads over ~5 of 8 peers, so the lookup waits on the
slowest of 5 parallel round trips (1.5 ms on a busy 2-core host, against
~0.1 ms to answer from the local directory). While the mesh has at most
`full_upto` peers, every peer owns every entry: lookups never leave the
process, and the price is an advertise or withdraw batch sent to N-1 peers
instead of r, and N copies of a directory entry (~150 bytes each). Past
`full_upto` the mesh is a DHT with `replication` owners per key.

Every peer computes this from its own view of the ring, so views that differ
for a moment (a join in flight) can place an entry on fewer owners than a
looker expects; that costs a miss until the rebalance after the change, never
a wrong answer. Pure.
"""

from __future__ import annotations


def replicas(ring_peers: int, replication: int, full_upto: int) -> int:
    """Directory owners per key on a ring of `ring_peers` peers."""
    if ring_peers <= full_upto:
        return max(ring_peers, replication)
    return replication
