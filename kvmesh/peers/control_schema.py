"""Validation of control API requests: JSON in, typed requests out.

Every handler parses its whole request here before it touches the peer, so a
bad request changes nothing. Each parser raises `RequestError` (HTTP 400
unless it says otherwise) with a message naming the field and what was
expected. Pure functions: no aiohttp, no peer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from kvmesh.errors import KvmeshError
from kvmesh.types import CHUNK_KEY_BYTES, ChunkKey, PeerAddress, PeerId

MAX_BODY_BYTES = 4 << 20  # aiohttp refuses larger bodies with 413
MAX_KEYS = 1 << 16  # keys per request, and chunks hashed from tokens
MAX_TOKENS = 1 << 20
MAX_SALT_CHARS = 1024
MAX_CODEC_CHARS = 32
TIERS = ("cpu", "disk")
SCOPES = ("local", "mesh")
_KEY_HEX_CHARS = 2 * CHUNK_KEY_BYTES
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TOKEN_LIMIT = 1 << 31  # token ids are hashed as int32


class RequestError(KvmeshError, ValueError):
    """A control request the peer refuses; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class LookupRequest:
    keys: tuple[ChunkKey, ...] | None  # exactly one of keys / tokens
    tokens: tuple[int, ...] | None
    cache_salt: str | None  # only with tokens


@dataclass(frozen=True, slots=True)
class ClearRequest:
    keys: tuple[ChunkKey, ...] | None  # keys given: remove those
    tier: str | None  # else one tier, or every tier when None


@dataclass(frozen=True, slots=True)
class CompressRequest:
    keys: tuple[ChunkKey, ...] | None  # exactly one of keys / tokens
    tokens: tuple[int, ...] | None
    cache_salt: str | None  # only with tokens
    codec: str  # a codec's name, checked by the peer (it knows which it may write)


@dataclass(frozen=True, slots=True)
class MoveRequest:
    keys: tuple[ChunkKey, ...]
    tier: str | None  # exactly one of tier / peer
    peer: PeerId | None
    keep: bool  # with peer: keep the local copies


# ---- public API ---------------------------------------------------------------

def decode_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise RequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object, got {_kind(body)}")
    return body


def parse_scope(query: Mapping[str, str]) -> str:
    _fields(query, required=(), optional=("scope",), where="query")
    scope = query.get("scope", "local")
    if scope not in SCOPES:
        raise RequestError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


def parse_lookup(body: Mapping[str, Any]) -> LookupRequest:
    _fields(body, required=(), optional=("keys", "tokens", "cache_salt"))
    which = _exactly_one(body, ("keys", "tokens"))
    if which == "keys":
        if "cache_salt" in body:
            raise RequestError("cache_salt applies only to a lookup by tokens")
        return LookupRequest(_keys(body["keys"], unique=False), None, None)
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or len(salt) > MAX_SALT_CHARS):
        raise RequestError(f"cache_salt must be a string of at most {MAX_SALT_CHARS} characters")
    return LookupRequest(None, _tokens(body["tokens"]), salt)


def parse_keys_only(body: Mapping[str, Any]) -> tuple[ChunkKey, ...]:
    """A body of just {"keys": [...]}: pin and unpin."""
    _fields(body, required=("keys",), optional=())
    return _keys(body["keys"], unique=True)


def parse_clear(body: Mapping[str, Any]) -> ClearRequest:
    _fields(body, required=(), optional=("keys", "tier", "all"))
    which = _exactly_one(body, ("keys", "tier", "all"))
    if which == "keys":
        return ClearRequest(_keys(body["keys"], unique=True), None)
    if which == "tier":
        return ClearRequest(None, _tier(body["tier"]))
    if body["all"] is not True:
        raise RequestError("all must be true (to clear nothing, send nothing)")
    return ClearRequest(None, None)


def parse_compress(body: Mapping[str, Any]) -> CompressRequest:
    _fields(body, required=("codec",), optional=("keys", "tokens", "cache_salt"))
    codec = body["codec"]
    if not isinstance(codec, str) or not 0 < len(codec) <= MAX_CODEC_CHARS:
        raise RequestError(f"codec must be a codec's name, got {_preview(codec)}")
    where = parse_lookup({k: v for k, v in body.items() if k != "codec"})  # keys | tokens, cache_salt
    keys = None if where.keys is None else tuple(dict.fromkeys(where.keys))  # each chunk once
    return CompressRequest(keys, where.tokens, where.cache_salt, codec)


def parse_move(body: Mapping[str, Any]) -> MoveRequest:
    _fields(body, required=("keys",), optional=("tier", "peer", "keep"))
    keys = _keys(body["keys"], unique=True)
    if _exactly_one(body, ("tier", "peer")) == "tier":
        if "keep" in body:
            raise RequestError("keep applies only to a move to a peer")
        return MoveRequest(keys, _tier(body["tier"]), None, False)
    keep = body.get("keep", False)
    if not isinstance(keep, bool):
        raise RequestError(f"keep must be true or false, got {_kind(keep)}")
    return MoveRequest(keys, None, _peer(body["peer"]), keep)


# ---- helpers ------------------------------------------------------------------

def _fields(body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...],
            where: str = "body") -> None:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(required + optional) or "none"
        raise RequestError(f"unknown {where} field(s) {', '.join(unknown)} (allowed: {allowed})")
    missing = [name for name in required if name not in body]
    if missing:
        raise RequestError(f"missing {where} field(s) {', '.join(missing)}")


def _exactly_one(body: Mapping[str, Any], names: tuple[str, ...]) -> str:
    present = [name for name in names if name in body]
    if len(present) != 1:
        raise RequestError(f"give exactly one of {', '.join(names)}")
    return present[0]


def _keys(value: Any, unique: bool) -> tuple[ChunkKey, ...]:
    if not isinstance(value, list):
        raise RequestError(f"keys must be a list of hex strings, got {_kind(value)}")
    if len(value) > MAX_KEYS:
        raise RequestError(f"at most {MAX_KEYS} keys per request, got {len(value)}")
    keys = tuple(_key(item, i) for i, item in enumerate(value))
    return tuple(dict.fromkeys(keys)) if unique else keys


def _key(item: Any, index: int) -> ChunkKey:
    if (not isinstance(item, str) or len(item) != _KEY_HEX_CHARS
            or not _HEX_DIGITS.issuperset(item)):
        raise RequestError(f"keys[{index}] must be {_KEY_HEX_CHARS} hex digits "
                           f"(a {CHUNK_KEY_BYTES}-byte chunk key), got {_preview(item)}")
    return ChunkKey(bytes.fromhex(item))


def _tokens(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RequestError(f"tokens must be a list of token ids, got {_kind(value)}")
    if len(value) > MAX_TOKENS:
        raise RequestError(f"at most {MAX_TOKENS} tokens per request, got {len(value)}")
    for i, token in enumerate(value):
        if type(token) is not int or not 0 <= token < _TOKEN_LIMIT:
            raise RequestError(f"tokens[{i}] must be an integer in [0, 2^31), got {_preview(token)}")
    return tuple(value)


def _tier(value: Any) -> str:
    if not isinstance(value, str) or value not in TIERS:
        raise RequestError(f"tier must be one of {', '.join(TIERS)}, got {_preview(value)}")
    return value


def _peer(value: Any) -> PeerId:
    if not isinstance(value, str):
        raise RequestError(f"peer must be a host:port string, got {_kind(value)}")
    try:
        return PeerAddress.parse(value).peer_id
    except ValueError as exc:
        raise RequestError(f"peer: {exc}") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")


def _preview(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."
