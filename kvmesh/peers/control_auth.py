"""Signed control requests: proof of the mesh secret that does not carry it.

    Authorization: Kvmesh-HMAC ts=<unix seconds>,nonce=<32 hex>,mac=<64 hex>

mac = HMAC-SHA256(key, "kvmesh-control-v1\\n" METHOD "\\n" path?query "\\n" Host
"\\n" ts "\\n" nonce "\\n" hex(SHA-256(body))), with key = HMAC-SHA256(secret,
"kvmesh control api v1"), so this MAC never equals one made with the secret
for another purpose (the data-path handshake, gossip seals).

A server accepts a signature whose ts is within WINDOW_S of its own clock,
whose mac matches the request it came with, and whose nonce it has not seen
within the window; it then remembers the nonce. So a captured header
reveals nothing about the secret, cannot be used for any other method, path,
query, Host or body, is refused by the same server once used, and by every
server once its window has passed. Another server with the same secret and
the same Host name (two peers on one machine's loopback) would accept it
once within the window; only a local user able to sniff loopback could
capture it, and such a user can read the secret from the peer's environment.

Both sides sign the Host header as it is sent, so a proxy that rewrites Host
breaks signatures (kubectl port-forward does not: it is a TCP tunnel).

Pure and stdlib-only (mesh-inspect imports it): `sign` and `Verifier` take
the clock from their caller. A Verifier is not thread-safe; the control API
uses one per app, on its event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Callable
from urllib.parse import urlsplit

SCHEME = "Kvmesh-HMAC"
WINDOW_S = 30.0  # clock skew tolerated between peers, and a captured header's life
MAX_NONCES = 1 << 16  # remembered nonces; past this, signed requests are refused until some expire
NONCE_BYTES = 16
_CONTEXT = b"kvmesh-control-v1"
_KEY_LABEL = b"kvmesh control api v1"
_HEADER = re.compile(SCHEME + r" ts=(?P<ts>[0-9]{1,12}),nonce=(?P<nonce>[0-9a-f]{32}),mac=(?P<mac>[0-9a-f]{64})")


def sign(secret: bytes, method: str, target: str, host: str, body: bytes = b"", *,
         now: float | None = None, nonce: str | None = None) -> str:
    """The Authorization header value for one request.

    `target` is the path and query exactly as sent ("/status?scope=mesh");
    `host` the Host header exactly as sent ("10.0.0.7:7470"). A fresh random
    nonce unless one is given (tests).
    """
    ts = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(NONCE_BYTES) if nonce is None else nonce
    mac = _mac(_key(secret), method, target, host, ts, nonce, body)
    return f"{SCHEME} ts={ts},nonce={nonce},mac={mac}"


def signed_headers(secret: bytes, method: str, url: str, body: bytes = b"") -> dict[str, str]:
    """Host and Authorization for a request to `url`: send both exactly as given.

    Host is the URL's authority as written (without userinfo), so what is
    signed is what the server sees.
    """
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return {"Host": host, "Authorization": sign(secret, method, target, host, body)}


def is_signature(header: str) -> bool:
    """Whether an Authorization value claims to be a signature (valid or not)."""
    return header.startswith(SCHEME + " ")


class Verifier:
    """Checks signatures for one server and remembers the nonces it accepted."""

    def __init__(self, secret: bytes, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES) -> None:
        self._key = _key(secret)
        self._window_s = window_s
        self._clock = clock
        self._max_nonces = max_nonces
        self._seen: dict[str, float] = {}  # nonce -> forget after; insertion order is time order

    def check(self, header: str, method: str, target: str, host: str, body: bytes) -> str | None:
        """None when the signature is valid for this request (its nonce is then spent);
        else why it is refused."""
        match = _HEADER.fullmatch(header)
        if match is None:
            return f"malformed {SCHEME} signature: expected '{SCHEME} ts=..,nonce=..,mac=..'"
        now = self._clock()
        if abs(now - int(match["ts"])) > self._window_s:
            return (f"{SCHEME} signature is outside its {self._window_s:g} s window "
                    "(clocks apart, or an old header)")
        expected = _mac(self._key, method, target, host, match["ts"], match["nonce"], body)
        if not hmac.compare_digest(expected, match["mac"]):
            return f"{SCHEME} signature does not match this request or the mesh secret"
        return self._spend(match["nonce"], now)

    def _spend(self, nonce: str, now: float) -> str | None:
        self._forget_expired(now)
        if nonce in self._seen:
            return f"{SCHEME} signature replayed: its nonce was already used"
        if len(self._seen) >= self._max_nonces:
            return f"too many signed requests in {self._window_s:g} s: try again shortly"
        # Its ts stays acceptable until at most now + 2 windows (ts <= now + window).
        self._seen[nonce] = now + 2 * self._window_s
        return None

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            nonce, until = next(iter(self._seen.items()))
            if until >= now:
                return
            del self._seen[nonce]


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, method: str, target: str, host: str, ts: str, nonce: str, body: bytes) -> str:
    parts = (_CONTEXT, method.upper().encode("utf-8", "backslashreplace"),
             target.encode("utf-8", "backslashreplace"), host.encode("utf-8", "backslashreplace"),
             ts.encode(), nonce.encode(), hashlib.sha256(body).hexdigest().encode())
    return hmac.new(key, b"\n".join(parts), hashlib.sha256).hexdigest()
