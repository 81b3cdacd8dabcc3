import pytest

from kvmesh.errors import HandshakeError
from kvmesh.transfer import frames as f, handshake


def hello(lo=1, hi=1):
    return f.Hello("a:1", lo, hi, b"n" * 16, "h", "", handshake.new_nonce())


def test_version_negotiation_picks_the_highest_common():
    assert handshake.choose_version(hello(1, 9)) == f.PROTOCOL_VERSION
    with pytest.raises(HandshakeError, match="no common protocol version"):
        handshake.choose_version(hello(f.PROTOCOL_VERSION + 1, f.PROTOCOL_VERSION + 3))


def test_namespace_mismatch_is_refused():
    handshake.check_namespace(b"a" * 16, b"a" * 16)
    with pytest.raises(HandshakeError, match="namespace mismatch"):
        handshake.check_namespace(b"a" * 16, b"b" * 16)


@pytest.mark.parametrize("ours,theirs,ok", [
    (None, None, True), (b"s", b"s", True), (b"s", b"t", False), (b"s", None, False),
    (None, b"s", False),
])
def test_secret_proofs(ours, theirs, ok):
    n1, n2 = handshake.new_nonce(), handshake.new_nonce()
    got = handshake.proof(theirs, b"server", n1, n2)
    if ok:
        handshake.check_proof(ours, got, b"server", n1, n2)
    else:
        with pytest.raises(HandshakeError):
            handshake.check_proof(ours, got, b"server", n1, n2)


def test_proof_never_contains_the_secret_and_is_bound_to_role_and_nonces():
    n1, n2 = handshake.new_nonce(), handshake.new_nonce()
    p = handshake.proof(b"topsecret", b"server", n1, n2)
    assert b"topsecret" not in p
    assert p != handshake.proof(b"topsecret", b"client", n1, n2)
    assert p != handshake.proof(b"topsecret", b"server", n2, n1)
