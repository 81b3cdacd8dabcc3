"""Fuzz: arbitrary methods, paths, headers, content types and bodies against the control API.

Whatever arrives, the API must never answer 500, must answer every 4xx with
a JSON {"error": "..."} body, and must change nothing unless the request was
authorized (no secret set, the bearer, or a valid signature), came with a
Host and Origin that name this API, and carried a JSON object as
`application/json`. Each example starts from a request the API would obey
and replaces none, one or two of its parts (method, path, Host, Origin,
Content-Type, Authorization, body, extra headers) with anything, mostly
wrong, so that every single check is exercised alone. A method token
aiohttp's HTTP parser does not know never reaches the app: the parser
answers 400 with its own plain-text body, and only that and "nothing
changed" are asserted for it.

Driven through aiohttp's test client against one app per variant (with and
without a mesh secret); the peer is restocked between examples. A small
budget for CI (120 examples per variant, ~2 s each here); FUZZ_EXAMPLES=N
runs more.
"""

from __future__ import annotations

import asyncio
import json
import os
import string

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmesh.config import ControlConfig
from kvmesh.peers.control_api import build_app
from kvmesh.peers.control_auth import sign
from kvmesh.types import key_hex
from tests.peers.control_fakes import OTHER, SECRET, FakePeer, make_config, tokens_for

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
ROUTES = ["/health", "/status", "/status?scope=mesh", "/status?scope=x", "/metrics", "/lookup", "/pin",
          "/unpin", "/clear", "/move", "/compress", "/compress?scope=mesh", "/", "/clear/", "/CLEAR", "/clear//", "/clear?all=1"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "PURGE", "LINK",
           "SEARCH", "REPORT"]
# Methods aiohttp's HTTP parser knows (llhttp's table): others never reach the app, the parser
# answers them with its own plain-text 400.
PARSER_METHODS = frozenset(METHODS + ["COPY", "LOCK", "MKCOL", "MOVE", "PROPPATCH", "UNLOCK", "BIND", "REBIND",
                                      "UNBIND", "ACL", "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY", "SUBSCRIBE",
                                      "UNSUBSCRIBE", "MKCALENDAR", "UNLINK", "SOURCE", "QUERY"])
GOOD_HOSTS = ["127.0.0.1:{port}", "localhost", "[::1]:{port}", "127.0.0.1"]
BAD_HOSTS = ["evil.example", "evil.example:{port}", "", "a@127.0.0.1", "127.0.0.1.evil.example", "[::1",
             "0.0.0.0:{port}"]
BAD_ORIGINS = ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}", ""]
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "APPLICATION/JSON"]
AUTHS = ["none", "bearer", "signature", "wrong bearer", "bad signature", "replayed signature"]
SAFE_EXTRA_NAMES = ["X-Forwarded-For", "X-Forwarded-Host", "Referer", "Cookie", "Accept", "User-Agent",
                    "X-Requested-With", "Forwarded", "Sec-Fetch-Site", "Access-Control-Request-Method"]


def json_values():
    leaves = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def valid_bodies(keys: list[str]):
    """JSON objects the routes accept, each changing something on a restocked peer."""
    some_keys = st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)
    return st.one_of(
        st.sampled_from([("/clear", {"all": True}), ("/clear", {"tier": "cpu"}), ("/unpin", {"keys": [keys[0]]})]),
        st.builds(lambda k: ("/clear", {"keys": k}), some_keys),
        st.builds(lambda k: ("/pin", {"keys": k}), some_keys),
        st.builds(lambda k: ("/move", {"keys": k, "tier": "disk"}), some_keys),
        st.builds(lambda k, keep: ("/move", {"keys": k, "peer": OTHER, "keep": keep}), some_keys, st.booleans()),
        st.builds(lambda t: ("/lookup", {"tokens": t}), st.lists(st.integers(0, 2**31 - 1), max_size=12)),
    )


def wild_bodies(keys: list[str]):
    key_lists = st.lists(st.sampled_from(keys) | st.text(max_size=40), max_size=4)
    shaped = st.one_of(
        st.builds(lambda k: {"keys": k}, key_lists),
        st.builds(lambda k, t: {"keys": k, "tier": t}, key_lists, st.sampled_from(["cpu", "disk", "gpu"])),
        st.builds(lambda k, p, keep: {"keys": k, "peer": p, "keep": keep}, key_lists,
                  st.sampled_from([OTHER, "127.0.0.1:7001", "nohost"]), st.booleans()),
        st.builds(lambda t: {"tokens": t}, st.lists(st.integers(-1, 2**31), max_size=12)),
        st.dictionaries(st.sampled_from(["keys", "tier", "all", "tokens", "peer", "keep", "cache_salt", "x"]),
                        json_values(), max_size=3),
    ).map(lambda doc: json.dumps(doc).encode())
    return st.none() | shaped | st.binary(max_size=64) | json_values().map(lambda v: json.dumps(v).encode())


def wild(keys: list[str]) -> dict:
    """For each part of a request, what it may be replaced with: anything, mostly wrong."""
    return {
        "method": st.sampled_from(METHODS) | st.text(string.ascii_uppercase, min_size=1, max_size=8),
        "path": st.sampled_from(ROUTES)
        | st.text(string.ascii_letters + string.digits + "-._~/?=&", max_size=24).map(lambda p: "/" + p.lstrip("/")),
        "host": st.sampled_from(BAD_HOSTS) | st.text(PRINTABLE, max_size=24),
        "origin": st.sampled_from(BAD_ORIGINS) | st.text(PRINTABLE, max_size=24),
        "content_type": st.sampled_from(CONTENT_TYPES) | st.text(PRINTABLE, max_size=24),
        "auth": st.sampled_from(AUTHS),
        "body": wild_bodies(keys),
        "extra": st.dictionaries(st.sampled_from(SAFE_EXTRA_NAMES), st.text(PRINTABLE, max_size=24), max_size=3),
    }


@st.composite
def requests(draw, keys: list[str]):
    """A request the API would obey, with some of its parts (often none or one) replaced."""
    path, body = draw(valid_bodies(keys))
    host = draw(st.sampled_from(GOOD_HOSTS))
    req = {"method": "POST", "path": path, "host": host, "origin": draw(st.sampled_from([None, same_origin(host)])),
           "content_type": draw(st.sampled_from(["application/json", "application/json; charset=utf-8"])),
           "auth": draw(st.sampled_from(["bearer", "signature"])), "body": json.dumps(body).encode(), "extra": {}}
    replace = wild(keys)
    how_many = draw(st.integers(0, 2))  # a third obeyed, a third wrong in one part, a third in two
    for part in draw(st.lists(st.sampled_from(sorted(replace)), min_size=how_many, max_size=how_many,
                              unique=True)):
        req[part] = draw(replace[part])
    return req


class Harness:
    """One peer and app on one event loop for every example of a test."""

    def __init__(self, tmp_path, secret: bytes | None) -> None:
        self.secret = secret
        self.loop = asyncio.new_event_loop()
        self.peer = FakePeer("127.0.0.1:7001", make_config(tmp_path, secret=secret))
        self.keys = self.peer.hasher.keys(tokens_for(3))
        self.client = TestClient(TestServer(build_app(self.peer, ControlConfig())), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        self.port = self.client.port

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        self.peer.store.close()

    def restock(self) -> None:
        """Every key stored again in the CPU tier, the first one pinned once, the records cleared."""
        for key in self.keys:
            while self.peer.store.unpin(key):
                pass
            if self.peer.store.tier_of(key) == "disk":
                self.peer.store.move(key, "cpu")
        self.peer.put([k for k in self.keys if self.peer.store.tier_of(k) is None])
        self.peer.store.pin(self.keys[0])
        self.peer.withdrawn.clear()
        self.peer.pushed.clear()

    def headers(self, req: dict, body: bytes) -> dict[str, str]:
        host = req["host"].replace("{port}", str(self.port))
        headers = {**req["extra"], "Host": host}
        if req["origin"] is not None:
            headers["Origin"] = req["origin"].replace("{port}", str(self.port))
        if req["content_type"] is not None:
            headers["Content-Type"] = req["content_type"]
        auth, secret = req["auth"], self.secret or b"no secret set"
        if auth == "bearer":
            headers["Authorization"] = "Bearer " + secret.decode()
        elif auth == "wrong bearer":
            headers["Authorization"] = "Bearer " + secret.decode() + "x"
        elif auth in ("signature", "replayed signature"):
            headers["Authorization"] = sign(secret, req["method"], req["path"], host, body)
        elif auth == "bad signature":
            headers["Authorization"] = sign(b"another secret", req["method"], req["path"], host, body)
        return headers

    async def send(self, req: dict) -> tuple[int, str, dict]:
        body = req["body"] or b""
        headers = self.headers(req, body)
        if req["auth"] == "replayed signature":  # the first use may change state; only the replay is checked
            await self._request(req, headers)
            self.restock()
        before = self.peer.snapshot()
        status, text = await self._request(req, headers)
        return status, text, {"before": before, "after": self.peer.snapshot()}

    async def _request(self, req: dict, headers: dict) -> tuple[int, str]:
        async with self.client.request(req["method"], req["path"], headers=headers,
                                       data=req["body"], skip_auto_headers=("Content-Type",)) as resp:
            return resp.status, await resp.text()


def may_change_state(req: dict, secret: bytes | None) -> bool:
    """What the oracle allows to change the peer; everything else must leave it as it was."""
    authorized = secret is None or req["auth"] in ("bearer", "signature")
    json_body = (req["content_type"] or "").split(";")[0].strip().lower() == "application/json"
    try:
        is_object = isinstance(json.loads(req["body"] or b""), dict)
    except ValueError:
        is_object = False
    return (authorized and req["method"] == "POST" and json_body and is_object
            and req["host"] in GOOD_HOSTS and req["origin"] in (None, same_origin(req["host"])))


def same_origin(host: str) -> str:
    return "http://" + host


@pytest.fixture(params=[None, SECRET], ids=["no-secret", "secret"])
def harness(request, tmp_path):
    h = Harness(tmp_path, request.param)
    yield h
    h.close()


def test_fuzz_control_api(harness):
    hexes = [key_hex(k) for k in harness.keys]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(req=requests(hexes))
    def one(req):
        harness.restock()
        status, text, state = harness.loop.run_until_complete(harness.send(req))
        assert status < 500, (status, text)
        if req["method"] not in PARSER_METHODS:
            assert status == 400, (status, text)  # refused by the HTTP parser, before the app
        elif status >= 400 and req["method"] != "HEAD":
            reply = json.loads(text)
            assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply
        if not may_change_state(req, harness.secret):
            assert state["after"] == state["before"], (status, text)

    one()
