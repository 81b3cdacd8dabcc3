"""The control API's `?scope=mesh`: every member's /status, asked in parallel.

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
    others = [m for m in sorted(peer.members()) if m != peer.peer_id]
    urls = await peer.control_urls(others)
    timeout = aiohttp.ClientTimeout(total=peer.config.transfer.timeout_s)
    # With TLS on the control API, members are asked over mutual HTTPS.
    connector = aiohttp.TCPConnector(ssl=control_contexts(peer.config.tls)[1] or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        replies = await asyncio.gather(*(_member_status(session, urls.get(m),
                                                        peer.config.mesh.secret)
                                         for m in others))
    out = dict(zip(others, replies))
    out[peer.peer_id] = status_json(peer.status())
    return dict(sorted(out.items()))


async def _member_status(session: aiohttp.ClientSession, url: str | None,
                         secret: bytes | None) -> dict[str, Any]:
    if not url:
        return {"error": "control URL unknown"}
    try:
        target = url.rstrip("/") + "/status"
        headers = control_auth.signed_headers(secret, "GET", target) if secret else {}
        async with session.get(target, headers=headers) as resp:
            raw = bytearray()
            async for part in resp.content.iter_chunked(1 << 16):
                raw += part
                if len(raw) > MAX_REMOTE_STATUS_BYTES:
                    return {"error": f"status reply over {MAX_REMOTE_STATUS_BYTES} bytes"}
            body = json.loads(raw)
            if not isinstance(body, dict):
                return {"error": f"HTTP {resp.status}: the reply is not a JSON object"}
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {body.get('error', '')}"}
            return body
    except asyncio.TimeoutError:
        return {"error": "timed out"}
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
