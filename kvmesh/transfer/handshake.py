"""Handshake rules: version range, namespace and the secret proof.

With a mesh secret each side proves it knows the secret by an HMAC over both
sides' fresh nonces; the secret itself never crosses the wire. Pure functions,
so the rules are tested without sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from kvmesh.errors import HandshakeError
from kvmesh.transfer import frames as f

NONCE_BYTES = 16


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def proof(secret: bytes | None, role: bytes, first: bytes, second: bytes) -> bytes:
    if not secret:
        return b""
    return hmac.new(secret, b"kvmesh/" + role + b"/" + first + second, hashlib.sha256).digest()


def check_proof(secret: bytes | None, got: bytes, role: bytes, first: bytes, second: bytes) -> None:
    if not secret:
        if got:
            raise HandshakeError("the other peer uses a mesh secret and this one does not")
        return
    if not hmac.compare_digest(got, proof(secret, role, first, second)):
        raise HandshakeError("wrong mesh secret")


def choose_version(hello: f.Hello) -> int:
    lo = max(hello.min_version, f.MIN_PROTOCOL_VERSION)
    hi = min(hello.max_version, f.PROTOCOL_VERSION)
    if lo > hi:
        raise HandshakeError(
            f"no common protocol version: theirs {hello.min_version}..{hello.max_version}, "
            f"ours {f.MIN_PROTOCOL_VERSION}..{f.PROTOCOL_VERSION}")
    return hi


def check_version(version: int) -> None:
    """The version a server chose must be one we speak."""
    if not f.MIN_PROTOCOL_VERSION <= version <= f.PROTOCOL_VERSION:
        raise HandshakeError(f"the server chose protocol {version}, "
                             f"we speak {f.MIN_PROTOCOL_VERSION}..{f.PROTOCOL_VERSION}")


def check_namespace(ours: bytes, theirs: bytes) -> None:
    if ours != theirs:
        raise HandshakeError(f"namespace mismatch: ours {ours.hex()[:12]}, theirs {theirs.hex()[:12]}")
