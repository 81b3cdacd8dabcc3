"""The mesh secret never crosses the network in clear: signed control requests.

`GET /status?scope=mesh` used to send `Authorization: Bearer <secret>` to
every member's control URL over plain HTTP, so anyone on the path learned
the mesh secret (and with it the data path, gossip and every control API).
The fan-out and mesh-inspect now sign each request instead (Kvmesh-HMAC:
method, path and query, Host, body hash, time and a nonce); a captured
header reveals nothing, is refused once used, after its window, and for any
other request.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from kvmesh import inspect as mi
from kvmesh.peers.control_auth import SCHEME, WINDOW_S, Verifier, sign
from tests.peers.control_fakes import OTHER, SECRET, running_api, tokens_for


@pytest.fixture
async def secure(tmp_path):
    async with running_api(tmp_path, secret=SECRET, chunks=2) as client:
        yield client


class Capture:
    """A member's control API that records what it is sent and answers a status."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> "Capture":
        async def any_route(request: web.Request) -> web.Response:
            self.requests.append((list(request.raw_headers), await request.read()))
            return web.json_response({"peer_id": OTHER})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_route)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def authorizations(self) -> list[str]:
        return [v.decode("latin-1") for headers, _ in self.requests for k, v in headers
                if k.lower() == b"authorization"]

    def carries_secret(self) -> bool:
        return any(SECRET in k or SECRET in v or SECRET in body
                   for headers, body in self.requests for k, v in headers)


# ---- the reproduced leak ------------------------------------------------------------------

async def test_mesh_fan_out_never_sends_the_secret(secure):
    async with Capture() as member:
        secure.peer.known_control_urls[OTHER] = member.url
        status, body = await secure.call("GET", "/status?scope=mesh")
    assert status == 200 and body["peers"][OTHER] == {"peer_id": OTHER}
    assert len(member.requests) == 1
    assert not member.carries_secret(), member.authorizations()
    assert member.authorizations()[0].startswith(SCHEME + " ")


def test_mesh_inspect_never_sends_the_secret(monkeypatch):
    async def run() -> tuple[int, Capture]:
        async with Capture() as member:
            code = await asyncio.to_thread(mi.main, [member.url, "--json", "--secret", SECRET.decode()])
        return code, member

    code, member = asyncio.run(run())
    assert code == 0 and member.requests
    assert not member.carries_secret(), member.authorizations()
    assert all(a.startswith(SCHEME + " ") for a in member.authorizations())


async def test_mesh_inspect_signature_is_accepted(secure, capsys):
    assert await asyncio.to_thread(mi.main, [secure.url, "--secret", SECRET.decode()]) == 0
    assert secure.peer.peer_id in capsys.readouterr().out
    assert await asyncio.to_thread(mi.main, [secure.url, "--secret", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err


# ---- a captured header is worth nothing ------------------------------------------------------------

def host_of(api) -> str:
    return api.url.split("//", 1)[1]


async def send(api, method: str, path: str, authorization: str, host: str, body: bytes = b"",
               content_type: str = "application/json") -> tuple[int, dict]:
    headers = {"Authorization": authorization, "Host": host}
    if body:
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession() as bare:
        async with bare.request(method, api.url + path, data=body or None, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_signed_request_is_accepted_once(secure):
    body = b'{"all": true}'
    header = sign(SECRET, "POST", "/clear", host_of(secure), body)
    assert await send(secure, "POST", "/clear", header, host_of(secure), body) == (200, {"removed": 2})
    secure.peer.put(secure.peer.hasher.keys(tokens_for(1)))
    before = secure.peer.snapshot()
    status, reply = await send(secure, "POST", "/clear", header, host_of(secure), body)
    assert status == 401 and "replayed" in reply["error"]
    assert secure.peer.snapshot() == before


@pytest.mark.parametrize("method, path, host, body", [
    ("GET", "/status?scope=mesh", None, b""),  # another query
    ("GET", "/metrics", None, b""),  # another path
    ("POST", "/clear", None, b'{"all": true}'),  # another method and body
    ("GET", "/status", "localhost:{port}", b""),  # another Host (another peer's, say)
])
async def test_signature_is_bound_to_its_request(secure, method, path, host, body):
    signed_host = host_of(secure)
    header = sign(SECRET, "GET", "/status", signed_host)
    before = secure.peer.snapshot()
    port = signed_host.rsplit(":", 1)[1]
    status, reply = await send(secure, method, path, header, (host or signed_host).format(port=port), body)
    assert status == 401 and "signature" in reply["error"]
    assert secure.peer.snapshot() == before


async def test_signature_body_is_bound(secure):
    header = sign(SECRET, "POST", "/pin", host_of(secure), b'{"keys": []}')
    before = secure.peer.snapshot()
    status, _ = await send(secure, "POST", "/clear", header, host_of(secure), b'{"all": true}')
    assert status == 401 and secure.peer.snapshot() == before


async def test_signature_with_another_secret_is_refused(secure):
    header = sign(b"not the secret", "GET", "/status", host_of(secure))
    status, reply = await send(secure, "GET", "/status", header, host_of(secure))
    assert status == 401 and "signature" in reply["error"]


async def test_bearer_still_accepted_for_operators(secure):
    status, _ = await send(secure, "GET", "/status", "Bearer " + SECRET.decode(), host_of(secure))
    assert status == 200


# ---- the verifier from tables --------------------------------------------------------------------

class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ARGS = ("GET", "/status", "127.0.0.1:7470", b"")


@pytest.mark.parametrize("skew_s, ok", [(0, True), (WINDOW_S, True), (-WINDOW_S, True),
                                        (WINDOW_S + 1, False), (-WINDOW_S - 1, False), (-1e6, False)])
def test_signature_window(skew_s, ok):
    clock = Clock()
    header = sign(SECRET, *ARGS, now=clock.now + skew_s)
    why = Verifier(SECRET, clock=clock).check(header, *ARGS)
    assert (why is None) is ok
    if not ok:
        assert "window" in why


@pytest.mark.parametrize("header", [
    "", "Kvmesh-HMAC", "Kvmesh-HMAC ts=1,nonce=00,mac=00",
    "Kvmesh-HMAC ts=x,nonce=" + "0" * 32 + ",mac=" + "0" * 64,
    "Kvmesh-HMAC nonce=" + "0" * 32 + ",ts=1000000,mac=" + "0" * 64,
    "Kvmesh-HMAC ts=1000000,nonce=" + "0" * 32 + ",mac=" + "0" * 64 + ",extra=1",
    "Kvmesh-HMAC ts=1000000,nonce=" + "G" * 32 + ",mac=" + "0" * 64,
    "Kvmesh-HMAC ts=" + "9" * 40 + ",nonce=" + "0" * 32 + ",mac=" + "0" * 64,
    "Kvmesh-HMAC ts=1000000,nonce=" + "0" * 32 + ",mac=" + "0" * 64,  # well formed, wrong mac
])
def test_malformed_or_forged_signatures_are_refused(header):
    verifier = Verifier(SECRET, clock=Clock())
    assert verifier.check(header, *ARGS) is not None


def test_nonces_are_remembered_within_the_window_and_capped():
    clock = Clock()
    verifier = Verifier(SECRET, clock=clock, max_nonces=3)
    headers = [sign(SECRET, *ARGS, now=clock.now) for _ in range(4)]
    assert [verifier.check(h, *ARGS) for h in headers[:3]] == [None, None, None]
    assert "replayed" in verifier.check(headers[0], *ARGS)
    assert "too many" in verifier.check(headers[3], *ARGS)  # full: refused, not forgotten
    clock.now += 2 * WINDOW_S + 1  # every remembered nonce has expired with its window
    fresh = sign(SECRET, *ARGS, now=clock.now)
    assert verifier.check(fresh, *ARGS) is None
    assert verifier.check(headers[0], *ARGS) is not None  # old: outside the window now


def test_signature_reveals_only_time_nonce_and_mac():
    header = sign(SECRET, *ARGS, now=1_000_000.0, nonce="ab" * 16)
    scheme, fields = header.split(" ", 1)
    assert scheme == SCHEME
    assert [f.split("=", 1)[0] for f in fields.split(",")] == ["ts", "nonce", "mac"]
    assert SECRET.decode() not in header and json.dumps(SECRET.decode()) not in header
