"""Browsers must not be able to drive the control API: CSRF and DNS rebinding.

A page on any site can make the browser POST a `text/plain` body to
http://127.0.0.1:PORT/clear without a CORS preflight (a "simple request"),
and a page on a name the attacker re-points at 127.0.0.1 (DNS rebinding) can
even read the replies. With no mesh secret set, that was enough to clear a
peer. The API now takes POST bodies only as `application/json` (which a
cross-site page can only send after a preflight the API never answers), and
refuses any request whose Host does not name this API or whose Origin is
another site. Every refusal is a JSON 4xx and changes nothing.
"""

from __future__ import annotations

import pytest

from kvmesh.config import ControlConfig
from kvmesh.types import key_hex
from tests.peers.control_fakes import FakePeer, make_config, open_api, running_api, tokens_for

EVIL = "http://evil.example"


@pytest.fixture
async def api(tmp_path):
    async with running_api(tmp_path, chunks=3) as client:
        yield client


def port_of(api) -> int:
    return int(api.url.rsplit(":", 1)[1])


async def refused(api, method, path, body, headers, status) -> dict:
    """Send one request; assert it was refused with `status` and a JSON error, and changed nothing."""
    before = api.peer.snapshot()
    got, reply = await api.call(method, path, raw=body, headers=headers)
    assert got == status, reply
    assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply
    assert api.peer.snapshot() == before
    return reply


CLEAR_ALL = b'{"all": true}'
POSTS = [("/clear", CLEAR_ALL), ("/pin", b'{"keys": []}'), ("/unpin", b'{"keys": []}'),
         ("/lookup", b'{"keys": []}'), ("/move", b'{"keys": [], "tier": "cpu"}')]


# ---- content type ------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=utf-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/jsonx", "text/json", ""])
async def test_csrf_text_plain_clear_from_a_foreign_page_is_refused(api, content_type):
    """The reproduced attack: a form-style POST from another site, no secret set."""
    reply = await refused(api, "POST", "/clear", CLEAR_ALL,
                          {"Content-Type": content_type, "Origin": EVIL}, 403)
    assert "Origin" in reply["error"]
    reply = await refused(api, "POST", "/clear", CLEAR_ALL, {"Content-Type": content_type}, 415)
    assert "application/json" in reply["error"]


@pytest.mark.parametrize("path, body", POSTS)
async def test_every_post_needs_a_json_content_type(api, path, body):
    reply = await refused(api, "POST", path, body, {"Content-Type": "text/plain"}, 415)
    assert "application/json" in reply["error"]


async def test_json_content_type_with_parameters_is_accepted(api):
    got, reply = await api.call("POST", "/clear", raw=CLEAR_ALL,
                                headers={"Content-Type": "application/json; charset=utf-8"})
    assert (got, reply) == (200, {"removed": 3})


# ---- Origin ------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}",
                                    "http://localhost.evil.example:{port}", "http://127.0.0.1:{port}/x",
                                    "file://", "http://[::1", "garbage"])
@pytest.mark.parametrize("method, path, body", [("POST", "/clear", CLEAR_ALL), ("GET", "/status", None),
                                                ("GET", "/metrics", None)])
async def test_foreign_origin_is_refused_on_every_route(api, origin, method, path, body):
    reply = await refused(api, method, path, body, {"Origin": origin.format(port=port_of(api))}, 403)
    assert "Origin" in reply["error"]


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}"])
async def test_same_origin_is_accepted(api, origin):
    port = port_of(api)
    host = origin.format(port=port).split("//")[1]
    got, _ = await api.call("POST", "/clear", raw=CLEAR_ALL,
                            headers={"Origin": origin.format(port=port), "Host": host})
    assert got == 200 and api.peer.store.keys() == []


# ---- Host (DNS rebinding) ------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "10.9.9.9:{port}", "", "a@127.0.0.1:{port}",
                                  "[::1", "127.0.0.1:{port}:1", "127.0.0.1:99999", "local host"])
@pytest.mark.parametrize("method, path, body", [("POST", "/clear", CLEAR_ALL), ("GET", "/status", None),
                                                ("GET", "/health", None)])
async def test_rebound_host_is_refused_on_every_route(api, host, method, path, body):
    reply = await refused(api, method, path, body, {"Host": host.format(port=port_of(api))}, 403)
    assert "Host" in reply["error"] and "KVMESH_CONTROL_ALLOWED_HOSTS" in reply["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "localhost.",
                                  "127.0.0.2:{port}", "[::1]:{port}"])
async def test_loopback_hosts_are_accepted(api, host):
    got, _ = await api.call("GET", "/status", headers={"Host": host.format(port=port_of(api))})
    assert got == 200


async def test_operator_allow_list(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path))
    runner, api = await open_api(peer, ControlConfig(port=0, allowed_hosts=("kv.internal",)))
    try:
        port = port_of(api)
        assert (await api.call("GET", "/status", headers={"Host": f"kv.internal:{port}"}))[0] == 200
        got, _ = await api.call("POST", "/clear", raw=CLEAR_ALL,
                                headers={"Host": "kv.internal", "Origin": "http://kv.internal"})
        assert got == 200
        await refused(api, "GET", "/status", None, {"Host": "other.internal"}, 403)
    finally:
        await api.session.close()
        await runner.cleanup()
        peer.store.close()


async def test_refusals_hold_with_the_secret_too(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path, secret=b"s3cret"))
    runner, api = await open_api(peer)  # its session sends the right bearer
    try:
        peer.put(peer.hasher.keys(tokens_for(2)))
        await refused(api, "POST", "/clear", CLEAR_ALL, {"Origin": EVIL}, 403)
        await refused(api, "POST", "/clear", CLEAR_ALL, {"Host": "evil.example"}, 403)
        await refused(api, "POST", "/clear", CLEAR_ALL, {"Content-Type": "text/plain"}, 415)
        keys = [key_hex(k) for k in peer.store.keys()]
        assert (await api.call("POST", "/pin", {"keys": keys}))[0] == 200
    finally:
        await api.session.close()
        await runner.cleanup()
        peer.store.close()
