"""control_guard from tables: the Host, Origin and Content-Type rules without a server."""

from __future__ import annotations

import pytest

from kvmesh.peers.control_guard import (Authority, content_type_refusal, host_refusal, is_loopback_host,
                                        origin_refusal, parse_authority, same_host)


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:7470", Authority("127.0.0.1", 7470)), ("LocalHost", Authority("localhost", None)),
    ("localhost.:80", Authority("localhost", 80)), ("[::1]:7470", Authority("::1", 7470)),
    ("[0:0::1]", Authority("::1", None)), ("kv-0.mesh.svc", Authority("kv-0.mesh.svc", None)),
    ("", None), ("a@127.0.0.1", None), ("127.0.0.1:1:2", None), ("::1", None), ("[::1", None),
    ("[zz::1]", None), ("h:0", None), ("h:65536", None), ("h:123456", None), ("a b", None),
    ("-bad.example", None), ("x" * 300, None), ("h:", None), ("a..b", None), ("é.example", None),
])
def test_parse_authority(text, parsed):
    assert parse_authority(text) == parsed


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("10.0.0.1", False), ("localhost.evil.example", False), ("kv.internal", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("a, b, same", [("::1", "0:0::1", True), ("[::1]", "::1", True),
                                        ("Kv.Internal.", "kv.internal", True),
                                        ("10.0.0.1", "::ffff:10.0.0.1", True),
                                        ("10.0.0.1", "10.0.0.2", False), ("a", "a.b", False)])
def test_same_host(a, b, same):
    assert same_host(a, b) is same


OWN = ["10.0.0.7", "kv.internal"]


@pytest.mark.parametrize("headers, ok", [
    (["127.0.0.1:7470"], True), (["localhost"], True), (["[::1]:1"], True), (["10.0.0.7:7470"], True),
    (["KV.internal"], True), (["10.0.0.8:7470"], False), (["evil.example:7470"], False),
    (["kv.internal.evil.example"], False), ([], False), (["127.0.0.1", "127.0.0.1"], False),
    ([""], False), (["0.0.0.0:7470"], False),
])
def test_host_refusal(headers, ok):
    why = host_refusal(headers, OWN)
    assert (why is None) is ok
    if not ok:
        assert "Host" in why


@pytest.mark.parametrize("origins, host, scheme, ok", [
    ([], "127.0.0.1:7470", "http", True),
    (["http://127.0.0.1:7470"], "127.0.0.1:7470", "http", True),
    (["http://LOCALHOST:7470"], "localhost:7470", "http", True),
    (["http://127.0.0.1"], "127.0.0.1:80", "http", True),
    (["https://kv.internal"], "kv.internal:443", "https", True),
    (["http://[::1]:7470"], "[0::1]:7470", "http", True),
    (["http://127.0.0.1:7471"], "127.0.0.1:7470", "http", False),
    (["https://127.0.0.1:7470"], "127.0.0.1:7470", "http", False),
    (["http://localhost:7470"], "127.0.0.1:7470", "http", False),
    (["http://evil.example"], "127.0.0.1:7470", "http", False),
    (["null"], "127.0.0.1:7470", "http", False),
    (["http://127.0.0.1:7470/"], "127.0.0.1:7470", "http", False),
    (["http://127.0.0.1:7470", "http://127.0.0.1:7470"], "127.0.0.1:7470", "http", False),
    (["http://u@127.0.0.1:7470"], "127.0.0.1:7470", "http", False),
])
def test_origin_refusal(origins, host, scheme, ok):
    assert (origin_refusal(origins, host, scheme) is None) is ok


@pytest.mark.parametrize("content_type, ok", [
    ("application/json", True), ("Application/JSON; charset=utf-8", True), (" application/json ", True),
    (None, False), ("", False), ("text/plain", False), ("application/json-patch+json", False),
    ("multipart/form-data; boundary=x", False), ("application/x-www-form-urlencoded", False),
])
def test_content_type_refusal(content_type, ok):
    assert (content_type_refusal(content_type) is None) is ok
