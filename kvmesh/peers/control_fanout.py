"""The control API's `?scope=mesh`: every member asked the same, in parallel
(GET /status, POST /compress).

Each member's reply is bounded in size and time and checked to be a JSON
object; a member that fails gets {"error": ...} in its place. With a mesh
secret each request is signed (`control_auth`): the secret never leaves this
peer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kvmesh.peers import control_auth
from kvmesh.peers.metrics import status_json
from kvmesh.transfer.tls import control_contexts

MAX_REMOTE_STATUS_BYTES = 1 << 20  # a member's /status reply


async def mesh_status(peer) -> dict[str, Any]:
    """Every member's /status, or {"error": ...} for one that did not answer.

    Each member is asked once, in parallel, bounded by the transfer timeout
    (members never dialled are dialled first to learn their control port);
    this peer answers for itself without a request. With a mesh secret each
    request is signed (`control_auth`): the secret itself never leaves.
    """
    replies = await ask_members(peer, "GET", "/status", b"", peer.config.transfer.timeout_s,
                                MAX_REMOTE_STATUS_BYTES)
    replies[peer.peer_id] = status_json(peer.status())
    return dict(sorted(replies.items()))


async def ask_members(peer, method: str, path: str, body: bytes, timeout_s: float,
                      max_reply_bytes: int) -> dict[str, Any]:
    """{member: its JSON reply to `method path` with `body`, or {"error": ...}}
    for every member but this peer, asked in parallel as `mesh_status` says;
    each reply bounded by `max_reply_bytes` and the whole by `timeout_s`."""
    others = [m for m in sorted(peer.members()) if m != peer.peer_id]
    urls = await peer.control_urls(others)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # With TLS on the control API, members are asked over mutual HTTPS.
    connector = aiohttp.TCPConnector(ssl=control_contexts(peer.config.tls)[1] or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        replies = await asyncio.gather(*(_member_json(session, urls.get(m), method, path, body,
                                                      peer.config.mesh.secret, max_reply_bytes)
                                         for m in others))
    return dict(zip(others, replies))


async def _member_json(session: aiohttp.ClientSession, url: str | None, method: str, path: str,
                       body: bytes, secret: bytes | None, max_reply_bytes: int) -> dict[str, Any]:
    if not url:
        return {"error": "control URL unknown"}
    try:
        target = url.rstrip("/") + path
        headers = control_auth.signed_headers(secret, method, target, body) if secret else {}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        async with session.request(method, target, headers=headers,
                                   data=body if method == "POST" else None) as resp:
            raw = bytearray()
            async for part in resp.content.iter_chunked(1 << 16):
                raw += part
                if len(raw) > max_reply_bytes:
                    return {"error": f"reply over {max_reply_bytes} bytes"}
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                return {"error": f"HTTP {resp.status}: the reply is not a JSON object"}
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {reply.get('error', '')}"}
            return reply
    except asyncio.TimeoutError:
        return {"error": "timed out"}
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
