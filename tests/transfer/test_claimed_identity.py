"""What a connection's directory changes do while its claimed peer id is checked."""

from kvmesh.transfer import frames as f
from kvmesh.transfer.claimed_identity import MAX_EARLY_KEYS, ClaimedIdentity

K = [bytes([i]) * 16 for i in range(4)]


class Shard:
    def __init__(self) -> None:
        self.entries: set[tuple[str, bytes]] = set()

    def add(self, peer, keys) -> None:
        self.entries |= {(peer, k) for k in keys}

    def remove(self, peer, keys) -> None:
        self.entries -= {(peer, k) for k in keys}


def claim() -> tuple[ClaimedIdentity, Shard]:
    shard = Shard()
    return ClaimedIdentity("p:1", shard.add, shard.remove), shard


def test_advertisements_count_at_once_and_withdrawals_wait_for_the_answer():
    ident, shard = claim()
    ident.change(f.Advertise("p:1", (K[0], K[1])))
    assert shard.entries == {("p:1", K[0]), ("p:1", K[1])}  # a new peer is found at once
    ident.change(f.Withdraw("p:1", (K[0],)))
    ident.change(f.Advertise("p:1", (K[0],)))  # after a held change: held too, in order
    assert shard.entries == {("p:1", K[0]), ("p:1", K[1])}
    ident.confirmed()
    assert shard.entries == {("p:1", K[0]), ("p:1", K[1])}  # withdrawn, then advertised again
    ident.change(f.Withdraw("p:1", (K[1],)))
    assert shard.entries == {("p:1", K[0])}  # verified: applied as it comes


def test_a_refuted_claim_takes_back_what_it_advertised_and_drops_what_it_held():
    ident, shard = claim()
    shard.add("p:1", (K[3],))  # the real peer's own entry, withdrawn by nobody
    ident.change(f.Advertise("p:1", (K[0],)))
    ident.change(f.Withdraw("p:1", (K[3],)))  # an impostor must not erase it
    ident.refuted()
    assert shard.entries == {("p:1", K[3])}


def test_advertisements_past_the_early_cap_wait_for_the_answer():
    ident, shard = claim()
    many = tuple(i.to_bytes(16, "little") for i in range(MAX_EARLY_KEYS))
    ident.change(f.Advertise("p:1", many))
    late = b"\xff" * 16
    ident.change(f.Advertise("p:1", (late,)))  # over the cap: held
    assert ("p:1", late) not in shard.entries and len(shard.entries) == MAX_EARLY_KEYS
    ident.confirmed()
    assert ("p:1", late) in shard.entries
