"""The control API against a fake peer holding a real ChunkStore.

The API is started with `start_control_api` on an ephemeral loopback port and
driven over real HTTP, so routing, middlewares and body limits are the ones a
user gets.
"""

from __future__ import annotations

import json
import socket

import aiohttp
import prometheus_client
import pytest

from kvmesh.errors import HandshakeError, StreamClosed, TransferError
from kvmesh.peers.control_schema import MAX_BODY_BYTES, MAX_KEYS, MAX_TOKENS
from kvmesh.types import key_hex
from tests.peers.control_fakes import (CHUNK_TOKENS, OTHER, SECRET, SLOT_BYTES, FakePeer, make_config,
                                       open_api, tokens_for)


@pytest.fixture
async def api(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path))
    runner, client = await open_api(peer)
    yield client
    await client.session.close()
    await runner.cleanup()
    peer.store.close()


# ---- routes -----------------------------------------------------------------------

async def test_start_binds_loopback_and_ephemeral_port(api):
    assert api.url.startswith("http://127.0.0.1:")
    assert int(api.url.rsplit(":", 1)[1]) > 0


async def test_health(api):
    assert await api.call("GET", "/health") == (200, {"ok": True, "peer_id": "127.0.0.1:7001"})


async def test_status_reports_members_tiers_counters(api):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys)
    api.peer.directory.add(api.peer.peer_id, keys[:2])
    status, body = await api.call("GET", "/status")
    assert status == 200
    assert body["peer_id"] == "127.0.0.1:7001"
    assert body["members"] == sorted(["127.0.0.1:7001", OTHER])
    assert set(body["ring_shares"]) == set(body["members"])
    assert body["member_states"] == {
        "127.0.0.1:7001": {"state": "alive", "incarnation": 0, "addr": "127.0.0.1:7001"},
        OTHER: {"state": "alive", "incarnation": 0, "addr": OTHER}}
    assert body["gossip"]["malformed"] == 0
    assert sum(body["ring_shares"].values()) == pytest.approx(1.0)
    assert body["tiers"]["cpu"] == {"chunks": 3, "bytes_used": 3 * SLOT_BYTES,
                                    "bytes_cap": 32 * SLOT_BYTES}
    disk = api.peer.store.stats()
    assert body["tiers"]["disk"] == {"chunks": disk.chunks_disk, "bytes_used": disk.disk_bytes_used,
                                     "bytes_cap": disk.disk_bytes_cap}
    assert body["store"]["chunks_cpu"] == 3
    assert body["transports"] == {OTHER: "tcp"}
    assert body["directory_keys"] == 2
    assert body["hit_rate"] is None
    assert body["counters"]["lookups"] == 0 and body["counters"]["recent_failures"] == []


async def test_status_hit_rate_and_failures(api):
    api.peer.stats.lookup_chunks, api.peer.stats.lookup_hit_chunks = 8, 6
    api.peer.stats.note_failure("lookup at x: boom")
    _, body = await api.call("GET", "/status")
    assert body["hit_rate"] == pytest.approx(0.75)
    assert body["counters"]["recent_failures"][0]["what"] == "lookup at x: boom"


async def test_status_mesh_fans_out(api, tmp_path):
    other = FakePeer(OTHER, make_config(tmp_path / "b", disk=False))
    runner, other_api = await open_api(other)
    try:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
        api.peer.membership.preload([("127.0.0.1:7003",) * 2, ("127.0.0.1:7004",) * 2])
        api.peer.known_control_urls.update({OTHER: other_api.url, "127.0.0.1:7003": dead_url})
        status, body = await api.call("GET", "/status?scope=mesh")
        dead.close()
    finally:
        await other_api.session.close()
        await runner.cleanup()
        other.store.close()
    assert status == 200
    peers = body["peers"]
    assert list(peers) == sorted(["127.0.0.1:7001", OTHER, "127.0.0.1:7003", "127.0.0.1:7004"])
    assert peers["127.0.0.1:7001"]["peer_id"] == "127.0.0.1:7001"
    assert peers[OTHER]["peer_id"] == OTHER
    assert "error" in peers["127.0.0.1:7003"]
    assert peers["127.0.0.1:7004"] == {"error": "control URL unknown"}


async def test_lookup_by_tokens(api):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys[:2])
    status, body = await api.call("POST", "/lookup", {"tokens": tokens_for(3, extra=2)})
    assert status == 200
    assert body == {"chunks": 3, "matched_chunks": 2, "matched_tokens": 2 * CHUNK_TOKENS,
                    "local_chunks": 2, "holders": [[api.peer.peer_id], [api.peer.peer_id], []]}
    assert api.peer.stats.lookups == 1


async def test_lookup_with_cache_salt_uses_other_keys(api):
    api.peer.put(api.peer.hasher.keys(tokens_for(2)))
    _, body = await api.call("POST", "/lookup", {"tokens": tokens_for(2), "cache_salt": "tenant-a"})
    assert body["chunks"] == 2 and body["matched_chunks"] == 0 and body["matched_tokens"] == 0
    _, body = await api.call("POST", "/lookup", {"tokens": tokens_for(2), "cache_salt": ""})
    assert body["matched_chunks"] == 2


async def test_lookup_by_keys(api):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys[:1])
    status, body = await api.call("POST", "/lookup", {"keys": [key_hex(k) for k in keys]})
    assert status == 200
    assert body["chunks"] == 2 and body["matched_chunks"] == 1 and body["local_chunks"] == 1
    assert "matched_tokens" not in body


async def test_pin_and_unpin(api):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys[:1])
    hexes = [key_hex(k) for k in keys]
    assert await api.call("POST", "/pin", {"keys": hexes}) == (
        200, {"results": {hexes[0]: True, hexes[1]: False}})
    assert api.peer.store.stats().pinned == 1
    assert not api.peer.store.remove(keys[0])  # pinned
    assert await api.call("POST", "/unpin", {"keys": hexes}) == (
        200, {"results": {hexes[0]: True, hexes[1]: False}})
    assert api.peer.store.stats().pinned == 0


async def test_clear_keys_withdraws_removed(api):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys)
    api.peer.store.pin(keys[2])
    status, body = await api.call("POST", "/clear", {"keys": [key_hex(k) for k in keys]})
    assert (status, body) == (200, {"removed": 2})
    assert api.peer.withdrawn == keys[:2]
    assert api.peer.store.keys() == [keys[2]]


async def test_clear_tier_withdraws_only_keys_held_nowhere(api):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys)
    assert api.peer.store.move(keys[0], "disk")  # disk only now
    status, body = await api.call("POST", "/clear", {"tier": "disk"})
    assert (status, body) == (200, {"removed": 1})
    assert api.peer.withdrawn == [keys[0]]
    assert api.peer.store.keys() == [keys[1]]


async def test_clear_all(api):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys)
    assert await api.call("POST", "/clear", {"all": True}) == (200, {"removed": 3})
    assert sorted(api.peer.withdrawn) == sorted(keys)
    assert api.peer.store.keys() == []


async def test_move_between_tiers(api):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys[:1])
    hexes = [key_hex(k) for k in keys]
    status, body = await api.call("POST", "/move", {"keys": hexes, "tier": "disk"})
    assert (status, body) == (200, {"results": {hexes[0]: True, hexes[1]: False}})
    assert api.peer.store.tier_of(keys[0]) == "disk"
    _, body = await api.call("POST", "/move", {"keys": hexes[:1], "tier": "cpu"})
    assert body == {"results": {hexes[0]: True}}
    assert api.peer.store.tier_of(keys[0]) == "cpu"
    assert api.peer.withdrawn == []


async def test_move_to_peer_removes_delivered(api):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys[:2])
    status, body = await api.call("POST", "/move", {"keys": [key_hex(k) for k in keys],
                                                    "peer": OTHER})
    assert (status, body) == (200, {"delivered": 2, "not_held": 1, "removed": 2})
    assert api.peer.pushed == [(keys[:2], OTHER)]
    assert api.peer.store.keys() == [] and api.peer.withdrawn == keys[:2]


@pytest.mark.parametrize("keep, push_result", [(True, None), (False, 1)])
async def test_move_to_peer_keeps_local_copies(api, keep, push_result):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys)
    api.peer.push_result = push_result
    status, body = await api.call("POST", "/move", {"keys": [key_hex(k) for k in keys],
                                                    "peer": OTHER, "keep": keep})
    assert status == 200 and body["removed"] == 0
    assert sorted(api.peer.store.keys()) == sorted(keys) and api.peer.withdrawn == []


# Peer.push raises only kvmesh errors (the transports turn the OS's into them).
@pytest.mark.parametrize("failure", [TransferError("peer went away"), StreamClosed("peer went away"),
                                     HandshakeError("peer went away")])
async def test_move_transfer_failure_is_502(api, failure):
    keys = api.peer.hasher.keys(tokens_for(1))
    api.peer.put(keys)
    api.peer.push_result = failure
    status, body = await api.call("POST", "/move", {"keys": [key_hex(keys[0])], "peer": OTHER})
    assert status == 502 and "peer went away" in body["error"]
    assert api.peer.store.keys() == keys and api.peer.withdrawn == []


async def test_metrics(api):
    keys = api.peer.hasher.keys(tokens_for(2))
    api.peer.put(keys)
    api.peer.stats.lookups, api.peer.stats.bytes_pulled, api.peer.stats.pulls_inflight = 5, 1234, 2
    api.peer.directory.add(api.peer.peer_id, keys)
    async with api.session.get(api.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    lines = set(text.splitlines())
    for line in ("kvmesh_lookups_total 5.0", "kvmesh_bytes_pulled_total 1234.0",
                 "kvmesh_pulls_inflight 2.0", "kvmesh_members 2.0", "kvmesh_directory_keys 2.0",
                 'kvmesh_member_states{state="alive"} 2.0',
                 'kvmesh_member_states{state="dead"} 0.0',
                 'kvmesh_store_chunks{tier="cpu"} 2.0', 'kvmesh_store_chunks{tier="disk"} 0.0',
                 f'kvmesh_store_bytes_used{{tier="cpu"}} {2 * SLOT_BYTES}.0',
                 f'kvmesh_store_bytes_cap{{tier="cpu"}} {32 * SLOT_BYTES}.0'):
        assert line in lines, line
    for name in ("lookup_chunks", "lookup_hit_chunks", "local_hits", "remote_hits", "read_in_place",
                 "load_failures", "bytes_served", "chunks_saved"):
        assert f"kvmesh_{name}_total 0.0" in lines
    assert prometheus_client.REGISTRY.get_sample_value("kvmesh_lookups_total") is None


async def test_internal_error_is_json_500_and_peer_lives(api):
    async def broken(keys):
        raise RuntimeError("bug")

    api.peer.lookup_prefix = broken
    status, body = await api.call("POST", "/lookup", {"keys": []})
    assert status == 500 and "RuntimeError" in body["error"]
    assert (await api.call("GET", "/health"))[0] == 200


# ---- the mesh secret ------------------------------------------------------------------

@pytest.fixture
async def secure(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path, secret=SECRET))
    runner, client = await open_api(peer)
    yield client
    await client.session.close()
    await runner.cleanup()
    peer.store.close()


ROUTES = [("GET", "/health", None), ("GET", "/status", None), ("GET", "/status?scope=mesh", None),
          ("GET", "/metrics", None), ("POST", "/lookup", {"keys": []}),
          ("POST", "/pin", {"keys": []}), ("POST", "/unpin", {"keys": []}),
          ("POST", "/clear", {"all": True}), ("POST", "/move", {"keys": [], "tier": "cpu"}),
          ("GET", "/nowhere", None)]


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "s3cret", "Bearer s3cretX", "bearer s3cret",
                                  "Bearer é"])
async def test_secret_required_everywhere(secure, method, path, body, auth):
    secure.peer.put(secure.peer.hasher.keys(tokens_for(1)))
    before = secure.peer.snapshot()
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession(headers=headers) as bare:
        data = None if body is None else json.dumps(body)
        async with bare.request(method, secure.url + path, data=data) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert "secret" in (await resp.json())["error"]
    assert secure.peer.snapshot() == before


@pytest.mark.parametrize("method, path, body", ROUTES[:-1])
async def test_secret_accepted(secure, method, path, body):
    status, _ = await secure.call(method, path, body)
    assert status == 200


async def test_mesh_fan_out_is_accepted_by_a_secure_member(secure, tmp_path):
    other = FakePeer(OTHER, make_config(tmp_path / "b", secret=SECRET, disk=False))
    runner, other_api = await open_api(other)
    secure.peer.known_control_urls[OTHER] = other_api.url
    try:
        _, body = await secure.call("GET", "/status?scope=mesh")
    finally:
        await other_api.session.close()
        await runner.cleanup()
        other.store.close()
    assert body["peers"][OTHER]["peer_id"] == OTHER


# ---- bad input: 4xx, a message, nothing changed -----------------------------------------

K = "ab" * 16
BAD = [
    ("POST", "/lookup", b"not json", 400, "JSON"),
    ("POST", "/lookup", b"", 400, "JSON"),
    ("POST", "/lookup", b"[1, 2]", 400, "object"),
    ("POST", "/lookup", b"\xff\xfe", 400, "JSON"),
    ("POST", "/lookup", b"[" * 100_000, 400, "JSON"),
    ("POST", "/lookup", b'{"tokens": [' + b"9" * 5000 + b"]}", 400, "JSON"),
    ("POST", "/lookup", b'{"tokens": [NaN]}', 400, "JSON"),
    ("POST", "/lookup", {}, 400, "exactly one of keys, tokens"),
    ("POST", "/lookup", {"keys": [K], "tokens": [1]}, 400, "exactly one"),
    ("POST", "/lookup", {"keys": K}, 400, "keys must be a list"),
    ("POST", "/lookup", {"keys": ["zz" * 16]}, 400, "keys[0]"),
    ("POST", "/lookup", {"keys": [K, "ab" * 15]}, 400, "keys[1]"),
    ("POST", "/lookup", {"keys": [K, "ab" * 17]}, 400, "keys[1]"),
    ("POST", "/lookup", {"keys": [123]}, 400, "keys[0]"),
    ("POST", "/lookup", {"keys": [None]}, 400, "keys[0]"),
    ("POST", "/lookup", {"keys": [K] * (MAX_KEYS + 1)}, 400, "at most"),
    ("POST", "/lookup", {"keys": [K], "cache_salt": "x"}, 400, "cache_salt"),
    ("POST", "/lookup", {"tokens": "1 2 3"}, 400, "tokens must be a list"),
    ("POST", "/lookup", {"tokens": [1, 2.5]}, 400, "tokens[1]"),
    ("POST", "/lookup", {"tokens": [True]}, 400, "tokens[0]"),
    ("POST", "/lookup", {"tokens": [-1]}, 400, "tokens[0]"),
    ("POST", "/lookup", {"tokens": [1 << 31]}, 400, "tokens[0]"),
    ("POST", "/lookup", {"tokens": [0] * (MAX_TOKENS + 1)}, 400, "at most"),
    ("POST", "/lookup", {"tokens": [1], "cache_salt": 5}, 400, "cache_salt"),
    ("POST", "/lookup", {"tokens": [1], "cache_salt": "x" * 2000}, 400, "cache_salt"),
    ("POST", "/lookup", {"tokens": [1], "prefix": 1}, 400, "unknown body field(s) prefix"),
    ("POST", "/pin", {}, 400, "missing body field(s) keys"),
    ("POST", "/pin", {"keys": [K], "all": True}, 400, "unknown"),
    ("POST", "/pin", {"keys": None}, 400, "keys must be a list"),
    ("POST", "/unpin", {"keys": [K[:-1] + "g"]}, 400, "keys[0]"),
    ("POST", "/unpin", b"{}", 400, "missing"),
    ("POST", "/clear", {}, 400, "exactly one of keys, tier, all"),
    ("POST", "/clear", {"all": False}, 400, "all must be true"),
    ("POST", "/clear", {"all": 1}, 400, "all must be true"),
    ("POST", "/clear", {"tier": "gpu"}, 400, "tier must be one of cpu, disk"),
    ("POST", "/clear", {"tier": ["cpu"]}, 400, "tier must be"),
    ("POST", "/clear", {"tier": "cpu", "all": True}, 400, "exactly one"),
    ("POST", "/clear", {"keys": [K, "nope"]}, 400, "keys[1]"),
    ("POST", "/clear", {"prefix": K}, 400, "unknown"),
    ("POST", "/move", {"tier": "cpu"}, 400, "missing body field(s) keys"),
    ("POST", "/move", {"keys": [K]}, 400, "exactly one of tier, peer"),
    ("POST", "/move", {"keys": [K], "tier": "cpu", "peer": OTHER}, 400, "exactly one"),
    ("POST", "/move", {"keys": [K], "tier": "ssd"}, 400, "tier must be"),
    ("POST", "/move", {"keys": [K], "tier": "cpu", "keep": True}, 400, "keep applies only"),
    ("POST", "/move", {"keys": [K], "peer": "nohost"}, 400, "host:port"),
    ("POST", "/move", {"keys": [K], "peer": 7002}, 400, "peer must be"),
    ("POST", "/move", {"keys": [K], "peer": OTHER, "keep": "no"}, 400, "keep must be"),
    ("POST", "/move", {"keys": [K], "peer": "127.0.0.1:7001"}, 400, "is this peer"),
    ("POST", "/move", {"keys": [K], "peer": "127.0.0.1:9999"}, 400, "not a member"),
    ("GET", "/status?scope=world", None, 400, "scope must be one of local, mesh"),
    ("GET", "/status?verbose=1", None, 400, "unknown query field(s) verbose"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("GET", "/lookup", None, 405, "Method Not Allowed"),
    ("POST", "/health", None, 405, "Method Not Allowed"),
    ("POST", "/clear", b"{" + b" " * MAX_BODY_BYTES + b'"all": true}', 413, "Maximum request body size"),
]


@pytest.mark.parametrize("method, path, body, status, message", BAD,
                         ids=[f"{m} {p} {i}" for i, (m, p, *_rest) in enumerate(BAD)])
async def test_bad_request_changes_nothing(api, method, path, body, status, message):
    keys = api.peer.hasher.keys(tokens_for(3))
    api.peer.put(keys)
    api.peer.store.pin(keys[0])
    before = api.peer.snapshot()
    raw = body if isinstance(body, bytes) else None
    got, reply = await api.call(method, path, None if raw is not None else body, raw=raw)
    assert got == status
    assert isinstance(reply, dict) and message in reply["error"], reply
    assert api.peer.snapshot() == before
    assert (await api.call("GET", "/health"))[0] == 200


async def test_move_to_disk_without_disk_tier(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path, disk=False))
    runner, client = await open_api(peer)
    try:
        peer.put(peer.hasher.keys(tokens_for(1)))
        before = peer.snapshot()
        status, body = await client.call("POST", "/move", {"keys": [key_hex(peer.store.keys()[0])],
                                                           "tier": "disk"})
        assert status == 400 and "no disk tier" in body["error"]
        assert peer.snapshot() == before
    finally:
        await client.session.close()
        await runner.cleanup()
        peer.store.close()


async def test_lookup_by_tokens_without_hasher(api):
    api.peer.hasher = None
    status, body = await api.call("POST", "/lookup", {"tokens": [1, 2, 3, 4]})
    assert status == 400 and "look up by keys" in body["error"]


async def test_store_refusal_is_409(api):
    api.peer.store.close()  # every later store call raises StoreError
    status, body = await api.call("POST", "/clear", {"all": True})
    assert status == 409 and "error" in body
    assert (await api.call("GET", "/health"))[0] == 200
