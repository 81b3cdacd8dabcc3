"""The inbound connection gate, from tables: which connection each cap refuses."""

import pytest

from kvmesh.transfer.admission import ConnectionGate
from kvmesh.transfer.limits import ConnectionCaps

CAPS = ConnectionCaps(total=4, per_address=2, pre_auth=3)


@pytest.mark.parametrize("remotes, authenticated, refused", [
    (["a", "b", "c", "d"], 4, None),  # up to the total
    (["a", "b", "c", "d", "e"], 5, "total"),
    (["a", "a", "a"], 3, "per_address"),
    (["a", "b", "c", "d"], 0, "pre_auth"),  # the fourth still waits for three handshakes
    (["", "", "", "x"], 3, None),  # unknown addresses: no per-address cap
    (["", "", ""], 0, None),
])
def test_the_last_connection_is_refused_by(remotes, authenticated, refused):
    gate = ConnectionGate(CAPS)
    admissions = []
    for remote in remotes[:-1]:
        admission = gate.admit(remote)
        assert admission is not None
        if len(admissions) < authenticated:
            admission.authenticated()
        admissions.append(admission)
    last = gate.admit(remotes[-1])
    assert (last is None) == (refused is not None)
    if refused:
        assert gate.refused[refused] == 1 and sum(gate.refused.values()) == 1


def test_released_connections_give_their_counts_back():
    gate = ConnectionGate(CAPS)
    admissions = [gate.admit("a"), gate.admit("a")]
    admissions[0].authenticated()
    admissions[0].authenticated()  # idempotent
    assert (gate.open, gate.pre_auth, gate.by_address) == (2, 1, {"a": 2})
    for admission in admissions:
        admission.release()
        admission.release()  # idempotent
    assert (gate.open, gate.pre_auth, gate.by_address) == (0, 0, {})
    admissions[1].authenticated()  # after release: changes nothing
    assert gate.pre_auth == 0


def test_caps_follow_the_descriptor_limit(monkeypatch):
    from kvmesh.transfer import limits

    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: (100, 100))
    caps = ConnectionCaps.for_this_process()
    assert caps.total == int(100 * limits.INBOUND_FD_SHARE)
    assert caps.per_address <= caps.total and caps.pre_auth <= caps.total
    monkeypatch.setattr(limits.resource, "getrlimit",
                        lambda _: (limits.resource.RLIM_INFINITY, limits.resource.RLIM_INFINITY))
    assert ConnectionCaps.for_this_process() == ConnectionCaps(
        limits.MAX_INBOUND_CONNECTIONS, limits.MAX_CONNECTIONS_PER_ADDRESS,
        limits.MAX_PRE_AUTH_CONNECTIONS)
