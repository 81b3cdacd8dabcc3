"""An `Expect` header the control API does not support gets a JSON 417, never a 500.

Found by `kvmesh bench fuzz`: aiohttp's default expect handler runs before
any middleware and echoed the header into a text response; a byte that is not
UTF-8 made that a 500 with a traceback in the log, for anyone who reaches the
port (no Host check, no secret needed). Now every route has our own handler.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.peers.control_fakes import FakePeer, make_config, open_api


async def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("expect", [b"\xe4", b"something-else"])
async def test_an_unsupported_expect_header_is_a_json_417(tmp_path, expect):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path))
    runner, api = await open_api(peer)
    try:
        status, body = await _raw(api.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: "
                                  + expect + b"\r\nConnection: close\r\n\r\n")
        assert status == 417
        assert "error" in json.loads(body)
        ok, _ = await _raw(api.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Connection: close\r\n\r\n")
        assert ok == 200  # and the API goes on serving
    finally:
        await api.session.close()
        await runner.cleanup()


async def test_expect_100_continue_still_works(tmp_path):
    peer = FakePeer("127.0.0.1:7001", make_config(tmp_path))
    runner, api = await open_api(peer)
    try:
        body = b'{"keys": []}'
        status, _ = await _raw(api.url, b"POST /pin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                               b"Connection: close\r\n\r\n" + body)
        assert status in (100, 200)
    finally:
        await api.session.close()
        await runner.cleanup()
