"""A pull over a TCP stream, against a scripted holder: what each chunk becomes."""

import asyncio
import os
import socket

import xxhash

from kvmesh.transfer import codec, handshake
from kvmesh.transfer import frames as f
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.streams import TcpStream

NS = b"n" * 16
SIZE = 2 * codec.PAYLOAD_PIECE_BYTES + 123  # several pieces per payload


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


async def _connect() -> tuple[PeerClient, FramedConnection]:
    """A client and the holder's end of its connection, past the handshake."""
    a, b = _tcp_pair()
    holder = FramedConnection(TcpStream(a))

    async def accept() -> None:
        hello = await holder.read_frame()
        await holder.send(f.Welcome("h:1", f.PROTOCOL_VERSION, NS, "", "",
                                    handshake.new_nonce(), b""))
        assert isinstance(hello, f.Hello) and isinstance(await holder.read_frame(), f.Auth)
        assert isinstance(await holder.read_frame(), f.Info)
        await holder.send(f.Info("other-host", 0, 0, b""))

    hello = f.Hello("", f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, NS, "", "",
                    handshake.new_nonce())
    client, _ = await asyncio.gather(
        PeerClient.open(TcpStream(b), hello, f.Info("h", 0, 0, b""), NS, None, 2.0, 4), accept())
    return client, holder


class Slots:
    """dest/done for a pull: a buffer per index, and what done() said."""

    def __init__(self) -> None:
        self.bufs: dict[int, bytearray] = {}
        self.done: dict[int, bool] = {}

    def dest(self, index: int, length: int) -> memoryview:
        self.bufs[index] = bytearray(length)
        return memoryview(self.bufs[index])

    def report(self, index: int, ok: bool, length: int, checksum: int) -> None:
        assert index not in self.done, "done() twice for one key"
        self.done[index] = ok


def _keys(n: int) -> tuple[bytes, ...]:
    return tuple(bytes([i + 1]) * 16 for i in range(n))


def _chunk(rid: int, index: int, payload: bytes, checksum: int | None = None) -> f.Chunk:
    digest = xxhash.xxh3_64_intdigest(payload) if checksum is None else checksum
    return f.Chunk(rid, index, _keys(index + 1)[index], digest, len(payload), payload)


async def test_good_chunks_land_and_corrupt_missing_or_unsent_ones_fail():
    client, holder = await _connect()
    slots, good, bad = Slots(), os.urandom(SIZE), os.urandom(SIZE)

    async def serve() -> None:
        pull = await holder.read_frame()
        await holder.send(_chunk(pull.request_id, 0, good))
        await holder.send(_chunk(pull.request_id, 1, bad, xxhash.xxh3_64_intdigest(bad) ^ 1))
        await holder.send(f.Miss(pull.request_id, 2, pull.keys[2]))
        holder.close()  # dies before chunk 3

    await asyncio.wait_for(asyncio.gather(
        client.pull(_keys(4), slots.dest, slots.report, timeout_s=5.0), serve()), 5)
    assert slots.done == {0: True, 1: False, 2: False, 3: False}
    assert bytes(slots.bufs[0]) == good
    await client.aclose()


async def test_a_holder_stalling_mid_payload_fails_the_pull_after_the_stall_window():
    client, holder = await _connect()
    slots, payload = Slots(), os.urandom(SIZE)

    async def serve() -> None:
        pull = await holder.read_frame()
        await holder.send(_chunk(pull.request_id, 0, payload))
        head, body = codec.encode(_chunk(pull.request_id, 1, payload))
        await holder.stream.send([head, body[: len(body) // 2]])  # then nothing more

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(asyncio.gather(
        client.pull(_keys(2), slots.dest, slots.report, timeout_s=5.0, stall_s=0.3), serve()), 5)
    assert slots.done == {0: True, 1: False}
    assert loop.time() - start < 2.0 and client.closed  # the stall, not the whole budget
    holder.close()


async def test_a_cancelled_pull_closes_its_connection_before_its_slots_are_freed():
    client, holder = await _connect()
    slots, payload = Slots(), os.urandom(SIZE)
    started = asyncio.Event()

    async def serve() -> None:
        pull = await holder.read_frame()
        head, body = codec.encode(_chunk(pull.request_id, 0, payload))
        await holder.stream.send([head, body[: len(body) // 2]])  # mid-payload
        started.set()

    pull = asyncio.ensure_future(client.pull(_keys(1), slots.dest, slots.report, timeout_s=5.0))
    await asyncio.wait_for(asyncio.gather(serve(), started.wait()), 5)
    while 0 not in slots.bufs:
        await asyncio.sleep(0.01)  # the payload has a slot and is landing in it
    pull.cancel()
    await asyncio.gather(pull, return_exceptions=True)
    assert client.closed and slots.done == {0: False}
    landed = bytes(slots.bufs[0])
    rest = codec.encode(_chunk(1, 0, payload))[1][len(payload) // 2:]
    await holder.stream.send([rest])  # the rest arrives after the slot was given back
    await asyncio.sleep(0.1)
    assert bytes(slots.bufs[0]) == landed  # nothing more was written into it
    holder.close()


async def test_a_holder_that_lies_about_indices_or_sends_twice_cannot_misreport():
    client, holder = await _connect()
    slots, first, second = Slots(), os.urandom(SIZE), os.urandom(SIZE)

    async def serve() -> None:
        pull = await holder.read_frame()
        await holder.send(_chunk(pull.request_id, 7, first))  # an index the pull never had
        await holder.send(_chunk(pull.request_id, 0, first))
        await holder.send(_chunk(pull.request_id, 0, second))  # a second CHUNK for index 0
        await holder.send(f.Miss(pull.request_id, 0, pull.keys[0]))  # and a late MISS for it
        await holder.send(_chunk(pull.request_id, 1, second))

    await asyncio.wait_for(asyncio.gather(
        client.pull(_keys(2), slots.dest, slots.report, timeout_s=5.0), serve()), 5)
    assert slots.done == {0: True, 1: True}
    assert bytes(slots.bufs[0]) == first and bytes(slots.bufs[1]) == second
    await client.aclose()
    holder.close()
