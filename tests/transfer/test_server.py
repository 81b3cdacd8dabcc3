"""The server side of a shared-memory PULL, per negotiated protocol version."""

import asyncio
import socket
from dataclasses import dataclass

import pytest

from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.server import REFS_PER_FRAME, serve_connection
from kvmesh.transfer.streams import TcpStream

NS = b"n" * 16


@dataclass
class Ticket:
    checksum: int
    length: int
    offset: int


class Node:
    """A ServingNode holding every key but MISSING; counts open pins."""

    peer_id, namespace, host_id, shm_path, ucx_port, control_port = "s:1", NS, "h", "/p", 0, 0

    def identity(self):
        return self
    MISSING = bytes(16)

    def __init__(self) -> None:
        self.pinned = 0

    def on_connected(self, hello) -> None:
        pass

    def holders(self, keys):
        return [("s:1",) for _ in keys]

    def open_chunk(self, key):
        if key == self.MISSING:
            return None
        self.pinned += 1
        return Ticket(checksum=key[0], length=100 + key[0], offset=4096 * key[0])

    def close_chunk(self, ticket) -> None:
        self.pinned -= 1


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


async def _session(version: int):
    node = Node()
    a, b = _tcp_pair()
    server = asyncio.get_running_loop().create_task(serve_connection(TcpStream(a), node, None, 2.0))
    conn = FramedConnection(TcpStream(b))
    await conn.send(f.Hello("", 1, version, NS, "h", "", handshake.new_nonce()))
    welcome = await conn.read_frame()
    assert welcome.version == version
    await conn.send(f.Auth(b""))
    return node, conn, server


def _keys(n: int) -> tuple[bytes, ...]:
    return tuple(bytes([i + 1]) * 16 for i in range(n))


async def _close(conn, server) -> None:
    conn.close()
    await asyncio.wait_for(server, 2)


async def test_protocol_2_answers_a_shared_pull_with_batched_refs():
    node, conn, server = await _session(2)
    keys = _keys(REFS_PER_FRAME + 3)
    keys = keys[:2] + (Node.MISSING,) + keys[2:]
    await conn.send(f.Pull(9, keys, True))
    refs, misses = [], []
    while len(refs) + len(misses) < len(keys):
        frame = await asyncio.wait_for(conn.read_frame(), 2)
        if isinstance(frame, f.Miss):
            misses.append(frame.index)
        else:
            assert isinstance(frame, f.ChunkRefs) and len(frame.indices) <= REFS_PER_FRAME
            refs += frame.refs()
    assert misses == [2]
    assert [r.index for r in refs] == [i for i in range(len(keys)) if i != 2]
    assert all(r.key == keys[r.index] and r.offset == 4096 * r.key[0] for r in refs)
    assert node.pinned == len(refs)  # pinned until RELEASE
    await conn.send(f.Release(9))
    await asyncio.sleep(0.05)
    assert node.pinned == 0
    await _close(conn, server)


async def test_protocol_1_puller_still_gets_one_chunk_ref_per_chunk():
    node, conn, server = await _session(1)
    keys = _keys(3)
    await conn.send(f.Pull(4, keys, True))
    frames = [await asyncio.wait_for(conn.read_frame(), 2) for _ in keys]
    assert [type(fr) for fr in frames] == [f.ChunkRef] * 3
    assert [fr.index for fr in frames] == [0, 1, 2]
    await _close(conn, server)


@pytest.mark.parametrize("version", [1, 2])
async def test_lookup_and_ping_are_answered_inline_in_order(version):
    _, conn, server = await _session(version)
    await conn.send(f.Ping(1))
    await conn.send(f.Lookup(2, _keys(2)))
    await conn.send(f.Ping(3))
    got = [await asyncio.wait_for(conn.read_frame(), 2) for _ in range(3)]
    assert got == [f.Pong(1), f.Holders(2, (("s:1",), ("s:1",))), f.Pong(3)]
    await _close(conn, server)


async def test_shared_pins_outlive_the_connection_until_the_lease_ends(monkeypatch):
    # The puller may still be copying refs it read before the connection
    # dropped: only RELEASE or the lease's end may unpin them.
    monkeypatch.setattr("kvmesh.transfer.server.SHARED_LEASE_S", 0.3)
    node, conn, server = await _session(2)
    await conn.send(f.Pull(5, _keys(3), True))
    frame = await asyncio.wait_for(conn.read_frame(), 2)
    assert isinstance(frame, f.ChunkRefs) and node.pinned == 3
    await _close(conn, server)
    assert node.pinned == 3
    await asyncio.sleep(0.5)
    assert node.pinned == 0
