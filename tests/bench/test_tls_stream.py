"""The TLS stream benchmark's two processes agree and report a rate for each kind."""

from kvmesh.bench import tls_stream


def test_one_round_moves_the_bytes_over_both_kinds():
    rounds, suite = tls_stream.rounds(4 << 20, 1 << 20, 1)
    assert len(rounds) == 1 and set(rounds[0]) == {"tcp", "tls"}
    assert all(rate > 0 for rate in rounds[0].values())
    assert suite.startswith("TLS_")  # a TLS 1.3 suite name, so TLS was really spoken
