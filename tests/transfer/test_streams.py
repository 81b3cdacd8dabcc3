"""TcpStream reads: a raised SO_RCVLOWAT never strands a reader."""

import asyncio
import socket

import pytest

from kvmesh.transfer.streams import RCVLOWAT_MAX, StreamClosed, TcpStream


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


async def _read_exactly(stream: TcpStream, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        got += await asyncio.wait_for(stream.recv_into(view[got:]), 2)
    return bytes(buf)


async def test_a_short_frame_after_a_big_read_still_wakes_the_reader():
    a, b = _tcp_pair()
    reader = TcpStream(b)
    big = bytes(range(256)) * (RCVLOWAT_MAX // 128)  # two low-water marks' worth
    read = asyncio.ensure_future(_read_exactly(reader, len(big)))
    await asyncio.sleep(0.05)  # the reader waits, with the mark raised
    a.sendall(big)
    assert await read == big
    read = asyncio.ensure_future(_read_exactly(reader, 16))
    await asyncio.sleep(0.05)
    a.sendall(b"0123456789abcdef")  # far below the last mark
    assert await read == b"0123456789abcdef"
    a.close()
    reader.close()


async def test_a_closed_peer_wakes_a_reader_waiting_for_a_big_buffer():
    a, b = _tcp_pair()
    reader = TcpStream(b)
    read = asyncio.ensure_future(_read_exactly(reader, 4 * RCVLOWAT_MAX))
    await asyncio.sleep(0.05)
    a.sendall(bytes(1000))  # less than the mark, then gone
    a.close()
    with pytest.raises(StreamClosed):
        await read
    reader.close()
