"""TlsStream: frames cross intact however the bytes are cut; strangers, plain
TCP and stalled handshakes are refused within the timeout."""

import asyncio
import dataclasses
import logging
import socket
import ssl
import time

import pytest
import xxhash

from kvmesh.errors import ConfigError, HandshakeError
from kvmesh.transfer import codec, tls
from kvmesh.transfer import frames as f
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.streams import StreamClosed
from kvmesh.transfer.tls import TlsStream, client_context, serve_accepted, server_context
from tests.tls_pki import pki  # noqa: F401 - a fixture

TIMEOUT = 1.0
SLACK = 0.5  # scheduling on a loaded machine
KEY = bytes(range(16))


def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """(server, client) TlsStreams over loopback, past the handshake."""
    loop = asyncio.get_running_loop()
    with _listener() as listener:
        async def accept() -> TlsStream:
            conn, _ = await loop.sock_accept(listener)
            return await TlsStream.accept(conn, server_ctx, TIMEOUT)

        return await asyncio.gather(accept(), TlsStream.connect(
            "127.0.0.1", listener.getsockname()[1], client_ctx, TIMEOUT))


class Capped:
    """A stream whose reader offers at most `cap` bytes per receive."""

    def __init__(self, stream: TlsStream, cap: int | None) -> None:
        self.stream, self.cap, self.kind = stream, cap, stream.kind

    async def recv_into(self, buf: memoryview) -> int:
        view = buf[:self.cap] if self.cap else buf
        n = await self.stream.recv_into(view)
        assert 1 <= n <= len(view), "recv_into must write at least one byte and no more than asked"
        return n

    async def send(self, parts) -> None:
        await self.stream.send(parts)

    def close(self) -> None:
        self.stream.close()


def _chunk(size: int, request_id: int = 1) -> f.Chunk:
    payload = (bytes(range(251)) * (size // 251 + 1))[:size]  # period 251: no alignment luck
    return f.Chunk(request_id, 0, KEY, xxhash.xxh3_64_intdigest(payload), size, payload)


def _sink(chunk: f.Chunk) -> memoryview:
    """Each payload lands in a fresh buffer of its own."""
    return memoryview(bytearray(chunk.length))


async def _exchange(server, client, frames, cap: int | None) -> list[f.Frame]:
    reader = FramedConnection(Capped(server, cap), sink=_sink)
    writer = FramedConnection(client)

    async def send_all() -> None:
        for frame in frames:
            await writer.send(frame)

    async def read_all() -> list[f.Frame]:
        return [await reader.read_frame() for _ in frames]

    got, _ = await asyncio.wait_for(asyncio.gather(read_all(), send_all()), 60)
    return got


# ---- frames, in every chunking ------------------------------------------------------

@pytest.mark.parametrize("ciphertext_read", [1, 7, 16406, tls.RECV_BUFFER_BYTES])
@pytest.mark.parametrize("cap", [1, 7, 16383, 16385, None])
async def test_frames_cross_whole_however_the_bytes_are_cut(pki, monkeypatch, ciphertext_read, cap):
    # ciphertext_read: bytes handed to OpenSSL per socket read (1: every record
    # split at every byte); cap: plaintext the reader asks for per receive.
    monkeypatch.setattr(tls, "RECV_BUFFER_BYTES", ciphertext_read)
    server, client = await _pair(server_context(pki.server), client_context(pki.client))
    sent = [f.Ping(7), f.Lookup(8, (KEY, KEY[::-1])), _chunk(70_001, 9), f.Error(10, "é" * 300),
            _chunk(0, 11), f.Pong(12)]
    got = await _exchange(server, client, sent, cap)
    for want, have in zip(sent, got):
        if isinstance(want, f.Chunk):
            assert have.payload is not None and bytes(have.payload) == bytes(want.payload)
            want, have = (dataclasses.replace(x, payload=None) for x in (want, have))
        assert have == want
    server.close()
    client.close()


@pytest.mark.parametrize("cap", [4093, 16385, None])
async def test_a_64_mib_chunk_crosses_while_frames_flow_the_other_way(pki, cap):
    server, client = await _pair(server_context(pki.server), client_context(pki.client))
    big = _chunk(64 << 20)
    pings = [f.Ping(i) for i in range(200)]
    # One stream, both directions at once: the chunk server -> client, pings back.
    got, back = await asyncio.gather(_exchange(client, server, [big], cap),
                                     _exchange(server, client, pings, None))
    assert back == pings
    assert got[0].payload is not None and bytes(got[0].payload) == big.payload
    server.close()
    client.close()


async def test_send_waits_for_a_reader_that_does_not_read(pki):
    server, client = await _pair(server_context(pki.server), client_context(pki.client))
    big = _chunk(64 << 20)
    sending = asyncio.ensure_future(FramedConnection(client).send(big))
    done, _ = await asyncio.wait({sending}, timeout=0.5)
    assert not done, "64 MiB cannot fit in socket buffers: send must wait for the reader"
    frame = await asyncio.wait_for(FramedConnection(server, sink=_sink).read_frame(), 60)
    await asyncio.wait_for(sending, 10)
    assert frame.payload is not None and bytes(frame.payload) == big.payload
    server.close()
    client.close()


async def test_a_closed_or_tampered_connection_raises_stream_closed(pki):
    server, client = await _pair(server_context(pki.server), client_context(pki.client))
    buf = memoryview(bytearray(100))
    # An application-data record whose authentication tag cannot match.
    client._sock.send(b"\x17\x03\x03\x00\x20" + bytes(32))
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(server.recv_into(buf), TIMEOUT)
    server.close()
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(client.recv_into(buf), TIMEOUT)
    client.close()


# ---- refusals and stalls, each within the timeout ---------------------------------

async def _serve_one(listener: socket.socket, ctx: ssl.SSLContext) -> tuple[list, float]:
    """serve_accepted on the next connection: (streams it served, seconds it took)."""
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    served: list = []

    async def serve(stream) -> None:
        served.append(stream)
        stream.close()

    start = time.monotonic()
    await asyncio.wait_for(serve_accepted(conn, ctx, TIMEOUT, serve), 3 * TIMEOUT)
    return served, time.monotonic() - start


def _no_certificate(pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.server.ca)
    return ctx


def _stranger_trusting_anyone(pki) -> ssl.SSLContext:
    ctx = client_context(pki.stranger)
    ctx.verify_mode = ssl.CERT_NONE  # the attack: it need not check us to be refused
    return ctx


@pytest.mark.parametrize("make_ctx,why", [
    (_no_certificate, "peer did not return a certificate"),
    (_stranger_trusting_anyone, "certificate verify failed")])
async def test_a_client_without_a_mesh_certificate_is_refused(pki, caplog, make_ctx, why):
    caplog.set_level(logging.INFO, "kvmesh.transfer.tls")
    with _listener() as listener:
        serving = asyncio.ensure_future(_serve_one(listener, server_context(pki.server)))
        port = listener.getsockname()[1]
        client = await TlsStream.connect("127.0.0.1", port, make_ctx(pki), TIMEOUT)
        # TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(client.recv_into(memoryview(bytearray(16))), TIMEOUT)
        served, took = await serving
    client.close()
    assert served == [] and took < TIMEOUT
    assert why in caplog.text


async def _serving_a_raw_client(listener: socket.socket, raw: socket.socket, pki) -> asyncio.Future:
    """The TLS server at work on its next connection, once `raw` (a plain,
    non-blocking socket) has connected to it; the future gives `_serve_one`'s answer."""
    serving = asyncio.ensure_future(_serve_one(listener, server_context(pki.server)))
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, listener.getsockname())
    return serving


async def test_a_plain_tcp_client_is_refused(pki, caplog):
    caplog.set_level(logging.INFO, "kvmesh.transfer.tls")
    loop = asyncio.get_running_loop()
    with _listener() as listener, socket.socket() as plain:
        serving = await _serving_a_raw_client(listener, plain, pki)
        hello = f.Hello("a:1", 1, 2, b"n" * 16, "h", "", b"x" * 16)
        await loop.sock_sendall(plain, codec.encode_bytes(hello))
        served, took = await serving
        assert served == [] and took < TIMEOUT
        try:
            rest = await asyncio.wait_for(loop.sock_recv(plain, 1 << 16), TIMEOUT)
        except ConnectionResetError:
            rest = b""
        assert not rest.startswith(codec.MAGIC)  # an alert at most, never a kvmesh frame
    assert "wrong version number" in caplog.text


async def test_a_server_outside_the_mesh_is_refused_by_the_client(pki):
    with pytest.raises(HandshakeError, match="certificate verify failed"):
        await _pair(server_context(pki.stranger), client_context(pki.client))


def _client_hello(pki) -> bytes:
    obj = client_context(pki.client).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("sent", ["nothing", "half a ClientHello"])
async def test_a_client_that_stalls_mid_handshake_is_dropped_at_the_timeout(pki, caplog, sent):
    caplog.set_level(logging.INFO, "kvmesh.transfer.tls")
    loop = asyncio.get_running_loop()
    with _listener() as listener, socket.socket() as staller:
        serving = await _serving_a_raw_client(listener, staller, pki)
        if sent != "nothing":
            hello = _client_hello(pki)
            await loop.sock_sendall(staller, hello[:len(hello) // 2])
        served, took = await serving
        assert served == [] and TIMEOUT - 0.05 <= took < TIMEOUT + SLACK
        assert await asyncio.wait_for(loop.sock_recv(staller, 1 << 16), TIMEOUT) == b""  # hung up
    assert f"no TLS handshake within {TIMEOUT:g}s" in caplog.text


async def test_a_server_that_never_answers_times_the_client_out(pki):
    with _listener() as listener:  # listens, accepts into the backlog, never speaks
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await TlsStream.connect("127.0.0.1", listener.getsockname()[1],
                                    client_context(pki.client), TIMEOUT)
        assert time.monotonic() - start < TIMEOUT + SLACK


# ---- contexts ------------------------------------------------------------------------

def test_contexts_are_mutual_tls13_without_name_checks(pki):
    server, client = server_context(pki.server), client_context(pki.client)
    for ctx in (server, client):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert not client.check_hostname and server.num_tickets == 0
    assert server_context(None) is None and client_context(None) is None


def test_unreadable_certificate_files_are_a_config_error(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = [pki.server.__class__(garbage, pki.server.key, pki.server.ca),
           pki.server.__class__(pki.server.cert, pki.client.key, pki.server.ca),  # not its key
           pki.server.__class__(pki.server.cert, pki.server.key, garbage)]
    for config in bad:
        with pytest.raises(ConfigError, match="KVMESH_TLS_"):
            server_context(config)
