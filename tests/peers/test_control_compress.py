"""POST /compress, and the bytes codecs saved in /status and /metrics, against a
fake peer holding a real ChunkStore of real KV-shaped chunks, over real HTTP."""

from __future__ import annotations

import aiohttp
import pytest
import torch

from kvmesh.codecs import decode_chunk
from kvmesh.config import KvmeshConfig, MeshConfig, StoreConfig
from kvmesh.types import key_hex
from tests.peers.codec_peers import CHUNK_TOKENS, EXACT, GEOMETRY, SLOT, kv_chunk
from tests.peers.control_fakes import OTHER, SECRET, FakePeer, open_api

ME = "127.0.0.1:7001"


def config(tmp_path, secret: bytes | None = None) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=CHUNK_TOKENS,
                        store=StoreConfig(cpu_bytes=8 * SLOT, disk_dir=tmp_path / "disk",
                                          disk_bytes=32 * SLOT),
                        mesh=MeshConfig(secret=secret))


def tokens(chunks: int) -> list[int]:
    return list(range(7, 7 + chunks * CHUNK_TOKENS))


def fill(peer: FakePeer, chunks: int) -> tuple[list[bytes], list[torch.Tensor]]:
    keys = peer.hasher.keys(tokens(chunks))
    data = [kv_chunk(i) for i in range(chunks)]
    for key, chunk in zip(keys, data):
        ticket = peer.store.prepare_store(key)
        ticket.tensor[:SLOT] = chunk
        assert peer.store.commit_store(ticket)
    return keys, data


def held(peer: FakePeer, key: bytes) -> bytes:
    ticket = peer.store.prepare_load(key)
    try:
        return bytes(ticket.view)
    finally:
        peer.store.complete_load(ticket)


@pytest.fixture
async def api(tmp_path):
    peer = FakePeer(ME, config(tmp_path), EXACT, SLOT)
    runner, client = await open_api(peer)
    yield client
    await client.session.close()
    await runner.cleanup()
    peer.store.close()


async def test_compress_idle_pinned_busy_and_absent_chunks(api):
    peer = api.peer
    keys, chunks = fill(peer, 3)
    absent = peer.hasher.keys(tokens(4))[3]
    assert (await api.call("POST", "/pin", {"keys": [key_hex(keys[1])]}))[0] == 200
    serving = peer.store.prepare_load(keys[2])  # in flight
    asked = [key_hex(k) for k in (*keys, absent)]
    status, body = await api.call("POST", "/compress", {"keys": asked, "codec": "zstd"})
    raw_bytes = bytes(serving.view)
    peer.store.complete_load(serving)
    assert status == 200
    results = body["results"]
    assert list(results) == asked
    assert [r["result"] for r in results.values()] == ["compressed", "compressed", "skipped", "skipped"]
    assert results[asked[2]] == {"result": "skipped", "reason": "busy", "bytes_before": SLOT,
                                 "bytes_after": SLOT}
    assert results[asked[3]] == {"result": "skipped", "reason": "not_held", "bytes_before": 0,
                                 "bytes_after": 0}
    assert raw_bytes == chunks[2].numpy().tobytes()
    after = [results[a]["bytes_after"] for a in asked[:2]]
    assert all(n < SLOT and n % 2 for n in after)
    assert (body["codec"], body["compressed"], body["skipped"]) == ("zstd", 2, 2)
    assert body["bytes_before"] == 3 * SLOT and body["bytes_after"] == sum(after) + SLOT
    for key, chunk, n in zip(keys[:2], chunks[:2], after):
        stored = held(peer, key)
        assert len(stored) == n and torch.equal(decode_chunk(bytearray(stored), GEOMETRY, ""), chunk)
    assert held(peer, keys[2]) == chunks[2].numpy().tobytes()
    assert peer.store.stats().pinned == 1  # the operator's pin stays

    saved = 2 * SLOT - sum(after)
    _, status_body = await api.call("GET", "/status")
    assert status_body["codec_bytes_saved"] == {"zstd": {"disk": 0, "wire": 0, "compress": saved}}
    async with api.session.get(api.url + "/metrics") as resp:
        lines = set((await resp.text()).splitlines())
    assert f'kvmesh_codec_bytes_saved_total{{codec="zstd",where="compress"}} {saved}.0' in lines
    assert 'kvmesh_codec_bytes_saved_total{codec="zstd",where="wire"} 0.0' in lines

    _, again = await api.call("POST", "/compress", {"keys": asked[:1], "codec": "zstd"})
    assert again["results"][asked[0]]["reason"] == "already_encoded"


async def test_compress_by_tokens(api):
    keys, chunks = fill(api.peer, 2)
    status, body = await api.call("POST", "/compress", {"tokens": tokens(2) + [1, 2], "codec": "zstd"})
    assert status == 200 and body["compressed"] == 2
    assert list(body["results"]) == [key_hex(k) for k in keys]


@pytest.mark.parametrize("request_body, why", [
    ({"codec": "fp8"}, "lossy"), ({"codec": "int8"}, "lossy"), ({"codec": "none"}, "name a codec"),
    ({"codec": "brotli"}, "unknown codec"), ({"codec": 4}, "codec must be"), ({"codec": ""}, "codec must be"),
    ({}, "missing body field"), ({"codec": "zstd", "tier": "cpu"}, "unknown body field"),
    ({"codec": "zstd", "tokens": [], "keys": []}, "exactly one of keys, tokens"),
])
async def test_refused_requests_change_nothing(api, request_body, why):
    keys, chunks = fill(api.peer, 2)
    if "codec" in request_body and "tokens" not in request_body:
        request_body = {"keys": [key_hex(k) for k in keys], **request_body}
    status, body = await api.call("POST", "/compress", request_body)
    assert status == 400 and why in body["error"], body
    assert [held(api.peer, k) for k in keys] == [c.numpy().tobytes() for c in chunks]
    assert api.peer.store.stats().recode_bytes_saved == {}


async def test_a_peer_of_opaque_chunks_refuses_every_codec(tmp_path):
    peer = FakePeer(ME, config(tmp_path), "opaque", SLOT)
    runner, client = await open_api(peer)
    try:
        status, body = await client.call("POST", "/compress", {"keys": [], "codec": "zstd"})
        assert status == 400 and "opaque bytes" in body["error"]
    finally:
        await client.session.close()
        await runner.cleanup()
        peer.store.close()


async def test_compress_mesh_wide_signed_and_refused_without_the_secret(tmp_path):
    me = FakePeer(ME, config(tmp_path / "a", SECRET), EXACT, SLOT)
    other = FakePeer(OTHER, config(tmp_path / "b", SECRET), EXACT, SLOT)
    apis = [await open_api(p) for p in (me, other)]
    (_, mine), (_, theirs) = apis
    me.known_control_urls[OTHER] = theirs.url
    try:
        keys, _ = fill(me, 2)
        fill(other, 1)
        async with aiohttp.ClientSession() as bare:  # no secret: refused, nothing changed
            async with bare.post(mine.url + "/compress?scope=mesh", json={"keys": [], "codec": "zstd"}) as r:
                assert r.status == 401
        body = {"keys": [key_hex(k) for k in keys], "codec": "zstd"}
        status, answer = await mine.call("POST", "/compress?scope=mesh", body)
        assert status == 200 and set(answer["peers"]) == {ME, OTHER}
        assert answer["peers"][ME]["compressed"] == 2
        assert answer["peers"][OTHER]["compressed"] == 1  # it holds the first chunk only
        assert answer["peers"][OTHER]["results"][key_hex(keys[1])]["reason"] == "not_held"
        assert len(held(other, keys[0])) % 2 == 1
        status, refused = await mine.call("POST", "/compress?scope=mesh", {**body, "codec": "fp8"})
        assert status == 400 and "lossy" in refused["error"]  # refused here: nobody was asked
    finally:
        for (runner, client), peer in zip(apis, (me, other)):
            await client.session.close()
            await runner.cleanup()
            peer.store.close()
