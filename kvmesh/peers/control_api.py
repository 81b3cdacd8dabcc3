"""The control API: HTTP + JSON for operators, scripts and `mesh-inspect`.

    GET  /health                 {"ok": true, "peer_id"}
    GET  /status[?scope=mesh]    this peer's status, or every member's
    POST /lookup                 {"tokens": [...], "cache_salt"?} | {"keys": [...]}
    POST /pin, /unpin            {"keys": [...]}
    POST /clear                  {"keys": [...]} | {"tier": "cpu"|"disk"} | {"all": true}
    POST /move                   {"keys", "tier"} | {"keys", "peer": "host:port", "keep"?}
    POST /compress[?scope=mesh]  {"keys": [...] | "tokens": [...], "codec"}  (control_compress)
    GET  /metrics                Prometheus text format

Runs on the peer's own event loop and calls only the peer's verbs (those that
may do disk I/O, remove, clear and move, run it in a worker thread). Every
body is validated in full by `control_schema` before anything changes; a bad
request gets a 4xx JSON {"error": ...} and leaves the peer as it was. Errors
of any kind are answered as JSON; none of them stops the peer.

With a mesh secret set, every route needs one of
    Authorization: Bearer <secret>          (operators, curl; sends the secret)
    Authorization: Kvmesh-HMAC ts=..,nonce=..,mac=..
The second is an HMAC-SHA256 signature made with the secret over the method,
path and query, Host, body hash, a timestamp (valid for 30 s) and a nonce
(each accepted once): a captured header neither reveals the secret nor can
be replayed (`control_auth`). The `?scope=mesh` fan-out and mesh-inspect
sign; the secret never crosses the network in their requests.

Browsers cannot drive it (`control_guard`): every route refuses a Host that
does not name this API (403: DNS rebinding) and an Origin of another site
(403: CSRF); POST bodies must be `Content-Type: application/json` (415).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kvmesh.config import ControlConfig
from kvmesh.errors import ConfigError, KvmeshError
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.peers import control_auth
from kvmesh.peers import control_guard as guard
from kvmesh.peers import control_schema as schema
from kvmesh.peers.control_compress import MAX_REMOTE_COMPRESS_BYTES, compress_answer, mesh_timeout_s
from kvmesh.peers.control_fanout import ask_members, mesh_status
from kvmesh.peers.control_schema import RequestError
from kvmesh.peers.metrics import peer_registry, status_json
from kvmesh.transfer.tls import control_contexts, control_scheme
from kvmesh.types import ChunkKey, PeerAddress, key_hex

log = logging.getLogger(__name__)

PEER = web.AppKey("peer", object)
REGISTRY = web.AppKey("registry", CollectorRegistry)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_control_api(peer, config: ControlConfig) -> tuple[web.AppRunner, str]:
    """Serve the control API for `peer`; returns the runner and its base URL.

    The caller owns the runner and must `await runner.cleanup()` on shutdown.
    """
    tls = getattr(peer.config, "tls", None)
    runner = web.AppRunner(build_app(peer, config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port,
                          ssl_context=control_contexts(tls)[0]).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1" if ":" not in host else "::1"
    scheme = control_scheme(tls)
    return runner, f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def build_app(peer, config: ControlConfig) -> web.Application:
    """The routes behind their checks, outermost first: errors as JSON, Host and
    Origin, the secret, then JSON bodies only. Each check refuses before the
    next runs, so a refused request reaches no handler."""
    middlewares = [_json_errors, _same_site(peer, config), _auth(peer.config.mesh.secret), _json_bodies]
    app = web.Application(client_max_size=schema.MAX_BODY_BYTES, middlewares=middlewares)
    app[PEER] = peer
    app[REGISTRY] = peer_registry(peer)
    for path, handler in (("/health", health), ("/status", status), ("/metrics", metrics)):
        app.router.add_get(path, handler, expect_handler=_expect)
    for path, handler in (("/lookup", lookup), ("/pin", pin), ("/unpin", unpin),
                          ("/clear", clear), ("/move", move), ("/compress", compress)):
        app.router.add_post(path, handler, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` goes on as HTTP says; anything else is a JSON 417.

    aiohttp's own handler runs before every middleware and echoed the header
    into a text reply, which a byte that is not UTF-8 turned into a 500.
    """
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None
    return _error(417, "unsupported Expect header")


# ---- middlewares ----------------------------------------------------------------

@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return _error(exc.status, f"{detail} ({request.method} {request.path})", headers=exc.headers)
    except KvmeshError as exc:  # e.g. the store refused: the request met the peer's state
        return _error(409, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not take the peer down
        log.exception("control API %s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _same_site(peer, config: ControlConfig) -> Callable:
    """Refuse requests a browser was made to send: see `control_guard`."""
    own = [h for h in (config.host, *config.allowed_hosts) if h not in _WILDCARD_HOSTS]
    if peer.peer_id:  # the name other members reach this peer by (KVMESH_ADVERTISE_HOST)
        own.append(PeerAddress.parse(peer.peer_id).host)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        hosts = request.headers.getall("Host", [])
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        arrived_at = [sockname[0]] if isinstance(sockname, tuple) and sockname else []
        why = (guard.host_refusal(hosts, [*arrived_at, *own])
               or guard.origin_refusal(request.headers.getall("Origin", []), hosts[0], request.scheme))
        if why:
            return _error(403, why)
        return await handler(request)

    return check


@web.middleware
async def _json_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """POST bodies are JSON and say so; routing errors (404, 405) pass through as they are."""
    if request.method == "POST" and request.match_info.http_exception is None:
        why = guard.content_type_refusal(request.headers.get("Content-Type"))
        if why:
            return _error(415, why)
    return await handler(request)


def _auth(secret: bytes | None) -> Callable:
    """With a secret: a bearer token equal to it, or a valid `control_auth` signature."""
    expected = b"Bearer " + secret if secret else None
    verifier = control_auth.Verifier(secret) if secret else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if control_auth.is_signature(given):
            body = await request.read()  # over client_max_size: 413; the handler reads it again from cache
            why = verifier.check(given, request.method, request.raw_path,
                                 request.headers.get("Host", ""), body)
            if why is None:
                return await handler(request)
            return _error(401, f"{why}; sign with the mesh secret",
                          headers={"WWW-Authenticate": control_auth.SCHEME})
        if hmac.compare_digest(given.encode("utf-8", "backslashreplace"), expected):
            return await handler(request)
        return _error(401, "missing or wrong mesh secret: send Authorization: Bearer <secret>, "
                      f"or a {control_auth.SCHEME} signature made with it",
                      headers={"WWW-Authenticate": "Bearer"})

    return check


# ---- routes ---------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return _json({"ok": True, "peer_id": request.app[PEER].peer_id})


async def status(request: web.Request) -> web.Response:
    peer = request.app[PEER]
    if schema.parse_scope(request.query) == "mesh":
        return _json({"peers": await mesh_status(peer)})
    return _json(status_json(peer.status()))


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def lookup(request: web.Request) -> web.Response:
    peer = request.app[PEER]
    req = schema.parse_lookup(await _body(request))
    chunk_tokens = None
    if req.keys is not None:
        keys = list(req.keys)
    else:
        hasher = _hasher(peer, req.cache_salt)
        keys, chunk_tokens = hasher.keys(req.tokens, max_chunks=schema.MAX_KEYS), hasher.chunk_tokens
    matched = await peer.lookup_prefix(keys)
    holders = await peer.find_holders(keys)
    out = {"chunks": len(keys), "matched_chunks": matched,
           "local_chunks": peer.held_prefix(keys),
           "holders": [sorted(h) for h in holders]}
    if chunk_tokens is not None:
        out["matched_tokens"] = matched * chunk_tokens
    return _json(out)


async def pin(request: web.Request) -> web.Response:
    keys = schema.parse_keys_only(await _body(request))
    return _json({"results": _per_key(keys, request.app[PEER].pin(keys))})


async def unpin(request: web.Request) -> web.Response:
    keys = schema.parse_keys_only(await _body(request))
    return _json({"results": _per_key(keys, request.app[PEER].unpin(keys))})


async def clear(request: web.Request) -> web.Response:
    peer = request.app[PEER]
    req = schema.parse_clear(await _body(request))
    removed = await (peer.remove(req.keys) if req.keys is not None else peer.clear(req.tier))
    return _json({"removed": len(removed)})


async def move(request: web.Request) -> web.Response:
    peer = request.app[PEER]
    req = schema.parse_move(await _body(request))
    if req.tier is not None:
        if req.tier == "disk" and peer.config.store.disk_dir is None:
            raise RequestError("this peer has no disk tier (KVMESH_DISK_DIR is unset)")
        return _json({"results": _per_key(req.keys, await peer.move(req.keys, req.tier))})
    if req.peer == peer.peer_id:
        raise RequestError(f"peer {req.peer} is this peer")
    if req.peer not in peer.members():
        raise RequestError(f"peer {req.peer} is not a member of the mesh")
    held = [k for k in req.keys if peer.held_prefix([k])]
    try:
        delivered = await peer.push(held, req.peer) if held else 0
    except KvmeshError as exc:
        return _error(502, f"push to {req.peer} failed: {type(exc).__name__}: {exc}")
    removed = []
    if not req.keep and held and delivered == len(held):  # partial: keep every local copy
        removed = await peer.remove(held)
    return _json({"delivered": delivered, "not_held": len(req.keys) - len(held),
                  "removed": len(removed)})


async def compress(request: web.Request) -> web.Response:
    peer = request.app[PEER]
    scope = schema.parse_scope(request.query)
    raw = await request.read()
    req = schema.parse_compress(schema.decode_body(raw))
    if req.keys is not None:
        keys = list(req.keys)
    else:
        keys = _hasher(peer, req.cache_salt).keys(req.tokens, max_chunks=schema.MAX_KEYS)
    try:
        outcomes = await peer.compress(keys, req.codec)
    except ConfigError as exc:  # a codec this peer must not write: nothing was changed
        raise RequestError(str(exc)) from None
    answer = compress_answer(req.codec, keys, outcomes)
    if scope == "local":
        return _json(answer)
    timeout = mesh_timeout_s(peer.config.transfer.timeout_s, len(keys))
    peers = await ask_members(peer, "POST", "/compress", raw, timeout, MAX_REMOTE_COMPRESS_BYTES)
    peers[peer.peer_id] = answer
    return _json({"peers": dict(sorted(peers.items()))})


# ---- helpers -------------------------------------------------------------------

async def _body(request: web.Request) -> dict[str, Any]:
    return schema.decode_body(await request.read())  # over client_max_size: 413


def _hasher(peer, cache_salt: str | None) -> ChunkHasher:
    if peer.hasher is None:
        raise RequestError("this peer has no model namespace to hash tokens with: look up by keys")
    if cache_salt is None:
        return peer.hasher
    return ChunkHasher(peer.hasher.namespace.with_salt(cache_salt))


def _per_key(keys: Sequence[ChunkKey], results: Sequence[bool]) -> dict[str, bool]:
    return {key_hex(k): bool(ok) for k, ok in zip(keys, results)}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(status: int, message: str, headers=None) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    for name, value in (headers or {}).items():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response
