"""Directory owners per key: everyone in a small mesh, r in a large one."""

import pytest

from kvmesh.directory.placement import replicas


@pytest.mark.parametrize("peers, replication, full_upto, want", [
    (1, 2, 16, 2),  # the ring caps owners at its size anyway
    (8, 2, 16, 8),
    (16, 2, 16, 16),
    (17, 2, 16, 2),
    (8, 2, 0, 2),  # full directory off
    (8, 3, 4, 3),
    (3, 5, 4, 5),  # never fewer than the configured replication
])
def test_replicas_table(peers, replication, full_upto, want):
    assert replicas(peers, replication, full_upto) == want
