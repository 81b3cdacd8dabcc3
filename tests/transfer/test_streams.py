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


@pytest.mark.parametrize("waiting", ["recv", "send"])
async def test_close_wakes_a_receive_or_send_waiting_on_the_socket(waiting):
    """Closing the socket under a waiting asyncio receive used to leave it
    waiting for ever, and the task that owned it with it."""
    a, b = _tcp_pair()
    stream = TcpStream(b)
    if waiting == "recv":
        pending = asyncio.ensure_future(stream.recv_into(memoryview(bytearray(64))))
    else:  # more than both socket buffers hold, and nobody reads
        pending = asyncio.ensure_future(stream.send([bytes(64 << 20)]))
    await asyncio.sleep(0.05)
    assert not pending.done()
    stream.close()
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(pending, 2)
    assert b.fileno() == -1  # and the descriptor is closed once they let go
    with pytest.raises(StreamClosed):
        await stream.recv_into(memoryview(bytearray(1)))
    a.close()


def test_an_accepted_stream_knows_its_remote_address():
    async def remote() -> str:
        a, b = _tcp_pair()
        stream = TcpStream(a)
        stream.close()
        b.close()
        return stream.remote

    assert asyncio.run(remote()) == "127.0.0.1"
