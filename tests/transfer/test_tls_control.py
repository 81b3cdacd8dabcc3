"""The control API's contexts: HTTPS with client certificates, through aiohttp
as `start_control_api` and the mesh fan-out would use them."""

import dataclasses
import ssl

import aiohttp
import pytest
from aiohttp import web

from kvmesh.transfer.tls import control_contexts, control_scheme
from tests.tls_pki import pki  # noqa: F401 - a fixture


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _site(ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/health", _health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    return runner, runner.addresses[0][1]


async def _get(url: str, ctx: ssl.SSLContext | bool) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=2)) as session:
        async with session.get(url) as resp:
            return await resp.json()


async def test_a_member_gets_an_answer_over_https_and_a_stranger_does_not(pki):
    server, _ = control_contexts(pki.server)
    _, client = control_contexts(pki.client)
    _, stranger = control_contexts(pki.stranger)
    stranger.verify_mode = ssl.CERT_NONE  # it would talk to anyone; we must not talk to it
    no_certificate = ssl.create_default_context(cafile=pki.server.ca)
    no_certificate.check_hostname = False
    runner, port = await _site(server)
    try:
        assert await _get(f"https://127.0.0.1:{port}/health", client) == {"ok": True}
        for ctx in (stranger, no_certificate):
            with pytest.raises(aiohttp.ClientError):
                await _get(f"https://127.0.0.1:{port}/health", ctx)
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port
            await _get(f"http://127.0.0.1:{port}/health", False)
    finally:
        await runner.cleanup()


def test_control_api_stays_plain_when_tls_is_off_or_declined(pki):
    assert control_contexts(None) == (None, None)
    assert control_contexts(dataclasses.replace(pki.server, control=False)) == (None, None)
    assert control_scheme(None) == "http" and control_scheme(pki.server) == "https"
    assert control_scheme(dataclasses.replace(pki.server, control=False)) == "http"
