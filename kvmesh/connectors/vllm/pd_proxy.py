"""`kvmesh pd-proxy`: prefill/decode disaggregation in front of two vLLM servers.

Each OpenAI request goes first to the prefill server (a `kv_producer` engine)
with `max_tokens=1`, which computes the prompt's KV and publishes it to the
mesh; then the original request goes to the decode server (a `kv_consumer`
engine) with the `kv_transfer_params` the prefill server returned, so the
decode engine pulls the prompt's KV from the mesh instead of recomputing it.
The proxy moves no KV itself. Streaming responses from the decode server are
passed through as they come.
"""

from __future__ import annotations

import argparse
import itertools
import logging

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)
ROUTES = ("/v1/completions", "/v1/chat/completions")


def prefill_body(body: dict) -> dict:
    """The request as the prefill engine gets it: one token, no streaming."""
    out = dict(body, max_tokens=1, stream=False)
    out.pop("max_completion_tokens", None)
    out.pop("stream_options", None)
    out["kv_transfer_params"] = {"kvmesh_role": "prefill"}
    return out


def decode_body(body: dict, prefill_reply: dict) -> dict:
    out = dict(body)
    params = prefill_reply.get("kv_transfer_params")
    if isinstance(params, dict):
        out["kv_transfer_params"] = params
    return out


class Proxy:
    def __init__(self, prefill: list[str], decode: list[str], timeout_s: float) -> None:
        self._prefill = itertools.cycle(prefill)
        self._decode = itertools.cycle(decode)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self, _app: web.Application) -> None:
        await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "request body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "request body must be a JSON object"}, status=400)
        path = request.path
        try:
            async with self._session.post(next(self._prefill) + path, json=prefill_body(body)) as r:
                prefilled = await r.json()
                if r.status != 200:
                    return web.json_response(prefilled, status=r.status)
            async with self._session.post(next(self._decode) + path,
                                          json=decode_body(body, prefilled)) as r:
                if not body.get("stream"):
                    return web.json_response(await r.json(), status=r.status)
                response = web.StreamResponse(status=r.status, headers={
                    "Content-Type": r.headers.get("Content-Type", "text/event-stream")})
                await response.prepare(request)
                async for part in r.content.iter_any():
                    await response.write(part)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response({"error": f"upstream failed: {exc}"}, status=502)

    async def passthrough_get(self, request: web.Request) -> web.Response:
        async with self._session.get(next(self._decode) + request.path) as r:
            return web.Response(body=await r.read(), status=r.status,
                                content_type=r.content_type)


def build_app(prefill: list[str], decode: list[str], timeout_s: float = 600) -> web.Application:
    proxy = Proxy(prefill, decode, timeout_s)
    app = web.Application(client_max_size=64 << 20)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    for route in ROUTES:
        app.router.add_post(route, proxy.handle)
    app.router.add_get("/v1/models", proxy.passthrough_get)
    app.router.add_get("/health", proxy.passthrough_get)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmesh pd-proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill", action="append", required=True,
                        help="base URL of a prefill (kv_producer) server; repeatable")
    parser.add_argument("--decode", action="append", required=True,
                        help="base URL of a decode (kv_consumer) server; repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    strip = lambda urls: [u.rstrip("/") for u in urls]
    web.run_app(build_app(strip(args.prefill), strip(args.decode), args.timeout),
                host=args.host, port=args.port, print=None)
    return 0
