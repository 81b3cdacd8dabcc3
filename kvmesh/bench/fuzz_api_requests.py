"""Fuzz requests for the control API: obeyable requests with some parts replaced by anything.

`make_request` starts from a request the API would obey (a valid body for a
route, a loopback Host, the right Content-Type, a bearer token or a
signature) and replaces none, one or two of its parts (method, path, Host,
Origin, Content-Type, Authorization, body, extra headers) with something
mostly wrong, so each check is met alone and in pairs. `raw_bytes` writes a
request out as HTTP/1.1 and mutates the bytes, for what a client library
would refuse to send (duplicate or broken headers, bad chunked encoding,
lengths that lie). Pure: everything comes from the `random.Random` passed in.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field

from kvmesh.bench import fuzz_mutate as mut
from kvmesh.peers import control_auth
from kvmesh.peers.control_schema import MAX_BODY_BYTES, MAX_KEYS

ROUTES = ("/health", "/status", "/status?scope=mesh", "/status?scope=local", "/status?scope=x",
          "/status?scope=mesh&scope=local", "/status?x=1", "/metrics", "/lookup", "/pin", "/unpin",
          "/clear", "/move", "/compress", "/compress?scope=mesh", "/", "/clear/", "/CLEAR", "/clear//", "/clear?all=1", "/%2e%2e/status",
          "/status%00", "/health/../status", "//health", "/" + "a" * 5000, "/pin?keys=1")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND",
           "PURGE", "SEARCH", "REPORT", "CONNECT")
GOOD_HOSTS = ("127.0.0.1:{port}", "localhost", "[::1]:{port}", "127.0.0.1", "LOCALHOST.")
BAD_HOSTS = ("evil.example", "evil.example:{port}", "", "a@127.0.0.1", "127.0.0.1.evil.example",
             "[::1", "0.0.0.0:{port}", "127.0.0.1:99999", "127.0.0.1:-1", " ", "x" * 300,
             "127.0.0.1, evil.example", "[fe80::1%25eth0]:1")
BAD_ORIGINS = ("http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}", "",
               "http://127.0.0.1:{port}/x", "file://", "http://[::1]", "x" * 300)
CONTENT_TYPES = (None, "application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "APPLICATION/JSON", "application/json;", "application/jsonx", ";", "application/")
AUTHS = ("none", "bearer", "signature", "wrong bearer", "bad signature", "stale signature",
         "garbled signature", "empty bearer", "basic")
EXTRA_NAMES = ("X-Forwarded-For", "X-Forwarded-Host", "Referer", "Cookie", "Accept", "User-Agent",
               "Forwarded", "Sec-Fetch-Site", "Expect", "Accept-Encoding", "Range", "If-None-Match")
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
PARTS = ("method", "path", "host", "origin", "content_type", "auth", "body", "extra")


@dataclass
class ApiRequest:
    """One request as the client sends it; `{port}` in Host/Origin stands for the API's port."""

    secret: bool  # sent to the app that has a mesh secret
    method: str = "POST"
    path: str = "/lookup"
    host: str = "127.0.0.1:{port}"
    origin: str | None = None
    content_type: str | None = "application/json"
    auth: str = "bearer"
    body: bytes = b"{}"
    extra: dict[str, str] = field(default_factory=dict)
    raw_mutations: int = 0  # >0: sent as raw bytes, mutated this many times (seeded below)
    raw_seed: int = 0
    sent: bytes = b""  # the raw bytes as written to the socket (raw requests only), for a replay

    def as_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("body", "sent")}
        out["body_hex"] = self.body[:4096].hex()
        out["body_bytes"] = len(self.body)
        if self.sent:
            out["sent_hex"] = self.sent[:65536].hex()
        return out


_BAD_KEYS = ("", "zz" * 16, "0" * 31, "0" * 33, "A" * 32, 1, None, ["x"])


def _key_list(rng: random.Random, keys: list[str]) -> list:
    return [rng.choice(keys) if rng.random() < 0.8 else rng.choice(_BAD_KEYS)
            for _ in range(rng.choice((0, 1, 2, 3, 8)))]


def _text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(0, most)))


def valid_body(rng: random.Random, keys: list[str]) -> tuple[str, dict]:
    some = sorted({rng.choice(keys) for _ in range(rng.randint(1, 3))})
    return rng.choice((
        ("/clear", {"all": True}), ("/clear", {"tier": rng.choice(("cpu", "disk"))}),
        ("/clear", {"keys": some}), ("/pin", {"keys": some}), ("/unpin", {"keys": some}),
        ("/move", {"keys": some, "tier": rng.choice(("cpu", "disk"))}),
        ("/move", {"keys": some, "peer": "127.0.0.1:7002", "keep": rng.random() < 0.5}),
        ("/lookup", {"tokens": [rng.randrange(1 << 31) for _ in range(rng.randint(0, 24))]}),
        ("/lookup", {"keys": some}),
        ("/compress", {"keys": some, "codec": rng.choice(("zstd", "fp8", "none", "x"))}),
        ("/lookup", {"tokens": [1, 2, 3, 4], "cache_salt": rng.choice(("", "t1", "ü" * 10))}),
    ))


def _json_value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice((None, True, False, 0, -1, 1 << 31, 1 << 64, -(1 << 70), 1.5, 1e308,
                           "", "cpu", "disk", "x" * rng.randint(0, 40), "\u0000", "\ud7ff"))
    if roll < 0.75:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(("keys", "tier", "all", "tokens", "peer", "keep", "cache_salt", "x", "")):
            _json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def wild_body(rng: random.Random, keys: list[str]) -> bytes:
    roll = rng.random()
    if roll < 0.35:
        doc = {name: _json_value(rng) if rng.random() < 0.4 else _key_list(rng, keys)
               for name in rng.sample(("keys", "tier", "all", "tokens", "peer", "keep",
                                       "cache_salt", "x"), rng.randint(1, 3))}
        return json.dumps(doc).encode()
    if roll < 0.5:
        return json.dumps(_json_value(rng)).encode()
    if roll < 0.65:
        return mut.mutate(rng, json.dumps(valid_body(rng, keys)[1]).encode())
    return rng.choice(_ODD_BODIES)(rng, keys)


_ODD_BODIES = (
    lambda rng, keys: b"",
    lambda rng, keys: rng.randbytes(rng.randint(1, 64)),
    lambda rng, keys: b"[" * rng.choice((100, 10_000, 200_000)),
    lambda rng, keys: b'{"tokens": [' + b"1," * rng.choice((10, 5000)) + b"1]}",
    lambda rng, keys: b'{"tokens": [' + b"9" * 5000 + b"]}",
    lambda rng, keys: b'{"tokens": [NaN, Infinity, -Infinity, 1e999]}',
    lambda rng, keys: b'{"keys": ["' + b'", "'.join(k.encode() for k in keys) * 100 + b'"]}',
    lambda rng, keys: json.dumps({"keys": [keys[0]] * (MAX_KEYS + 1)}).encode(),
    lambda rng, keys: b'{"all": true, "all": false}',
    lambda rng, keys: b"\xff\xfe{\x00}",
    lambda rng, keys: b'{"cache_salt": "' + b"s" * 2000 + b'", "tokens": [1]}',
    lambda rng, keys: b" " * (MAX_BODY_BYTES + 1),
)


def _wild_part(rng: random.Random, part: str, keys: list[str]):
    if part == "method":
        return rng.choice(METHODS) if rng.random() < 0.8 else "".join(
            rng.choice(string.ascii_uppercase) for _ in range(rng.randint(1, 8)))
    if part == "path":
        return rng.choice(ROUTES) if rng.random() < 0.6 else "/" + "".join(
            rng.choice(string.ascii_letters + string.digits + "-._~/?=&%") for _ in range(rng.randint(0, 24)))
    if part == "host":
        return rng.choice(BAD_HOSTS) if rng.random() < 0.7 else _text(rng, 24)
    if part == "origin":
        return rng.choice(BAD_ORIGINS) if rng.random() < 0.7 else _text(rng, 24)
    if part == "content_type":
        return rng.choice(CONTENT_TYPES) if rng.random() < 0.7 else _text(rng, 24)
    if part == "auth":
        return rng.choice(AUTHS)
    if part == "body":
        return wild_body(rng, keys)
    return {rng.choice(EXTRA_NAMES): _text(rng, 40) for _ in range(rng.randint(1, 3))}


def make_request(rng: random.Random, keys: list[str]) -> ApiRequest:
    path, body = valid_body(rng, keys)
    host = rng.choice(GOOD_HOSTS)
    req = ApiRequest(secret=rng.random() < 0.5, path=path, host=host,
                     origin=rng.choice((None, "http://" + host)),
                     content_type=rng.choice(("application/json", "application/json; charset=utf-8")),
                     auth=rng.choice(("bearer", "signature")), body=json.dumps(body).encode())
    if rng.random() < 0.1:  # the read-only routes, obeyed as they are
        req.method, req.path, req.body, req.content_type = "GET", rng.choice(ROUTES[:8]), b"", None
    for part in rng.sample(PARTS, rng.choice((0, 1, 1, 2, 2))):
        setattr(req, part, _wild_part(rng, part, keys))
    if rng.random() < 0.15:
        req.raw_mutations, req.raw_seed = rng.randint(0, 3), rng.randrange(1 << 30)
    return req


def authorization(req: ApiRequest, secret: bytes, host: str) -> str | None:
    """The Authorization header for `req.auth`, signed over exactly what is sent."""
    auth = req.auth
    if auth == "bearer":
        return "Bearer " + secret.decode()
    if auth == "wrong bearer":
        return "Bearer " + secret.decode() + "x"
    if auth == "empty bearer":
        return "Bearer "
    if auth == "basic":
        return "Basic YTpi"
    if auth in ("signature", "bad signature", "stale signature"):
        key = secret if auth != "bad signature" else b"another secret"
        now = None if auth != "stale signature" else 1.0
        return control_auth.sign(key, req.method, req.path, host, req.body, now=now)
    if auth == "garbled signature":
        return control_auth.sign(secret, req.method, req.path, host, req.body)[:-3] + "zz,"
    return None


def raw_bytes(req: ApiRequest, headers: dict[str, str]) -> bytes:
    """`req` written out as HTTP/1.1 (closing the connection), then mutated `raw_mutations` times."""
    lines = [f"{req.method} {req.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(req.body)}", "Connection: close", "", ""]
    data = "\r\n".join(lines).encode("utf-8", "surrogateescape") + req.body
    rng = random.Random(req.raw_seed)
    for _ in range(req.raw_mutations):
        roll = rng.random()
        if roll < 0.3:
            data = data.replace(b"\r\n", b"\r\nTransfer-Encoding: chunked\r\n", 1)
        elif roll < 0.4:
            data = data.replace(b"\r\n\r\n", b"\r\nHost: evil.example\r\n\r\n", 1)
        else:
            data = mut.mutate(rng, data, 1)
    return data
