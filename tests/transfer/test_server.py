"""The server side of a connection, driven frame by frame (protocol 3)."""

import asyncio
import socket
from dataclasses import dataclass

import pytest

from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.pin_budget import PinBudget
from kvmesh.transfer.pull_server import REFS_PER_FRAME, PullServer
from kvmesh.transfer.server import serve_connection
from kvmesh.transfer.streams import TcpStream

NS = b"n" * 16


@dataclass
class Ticket:
    checksum: int
    length: int
    offset: int
    view: bytes = b""


@dataclass
class Identity:
    peer_id: str = "s:1"
    namespace: bytes = NS
    host_id: str = "h"
    ucx_port: int = 0
    control_port: int = 0


class Node:
    """A ServingNode holding every key but MISSING; counts open pins; vouches
    for whoever `vouches` says."""

    MISSING = bytes(16)
    wire_form = None  # streams send chunks as they are held

    def __init__(self, slots: int = 1000, vouches: bool = True) -> None:
        self.pins = PinBudget.for_slots(slots)
        self.pinned = 0
        self.vouches = vouches
        self.proven: list = []
        self.advertised: list = []
        self.members: list = []

    def identity(self):
        return Identity()

    def pool_token(self, on_proven) -> bytes:
        self.proven.append(on_proven)
        return b"t" * 32

    def revoke_pool_token(self, token) -> None:
        pass

    async def verify(self, claimed, nonce) -> bool:
        return self.vouches

    def vouch(self, asker, nonce) -> bool:
        return False

    def on_member(self, peer, info) -> None:
        self.members.append(peer)

    def holders(self, keys):
        return [("s:1",) for _ in keys]

    def on_advertise(self, holder, keys) -> None:
        self.advertised.append((holder, keys))

    def on_withdraw(self, holder, keys) -> None:
        pass

    async def open_chunk(self, key):
        if key == self.MISSING:
            return None
        self.pinned += 1
        return Ticket(checksum=key[0], length=100 + key[0], offset=4096 * key[0],
                      view=bytes(100 + key[0]))

    def close_chunk(self, ticket) -> None:
        self.pinned -= 1


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


async def _session(node: Node | None = None, peer_id: str = "c:2", same_host: bool = True):
    node = node or Node()
    a, b = _tcp_pair()
    server = asyncio.get_running_loop().create_task(serve_connection(TcpStream(a), node, None, 2.0))
    conn = FramedConnection(TcpStream(b))
    await conn.send(f.Hello(peer_id, 3, 3, NS, "", "", handshake.new_nonce()))
    welcome = await conn.read_frame()
    assert welcome.version == 3 and welcome.host_id == "" and welcome.shm_path == ""
    await conn.send(f.Auth(b""))
    await conn.send(f.Info("h", 0, 0, b""))
    info = await conn.read_frame()
    assert isinstance(info, f.Info)
    if same_host and node.proven:
        node.proven[-1]()  # as if the pool door had checked this connection's token
    await asyncio.sleep(0.01)  # let the identity check run
    return node, conn, server


def _keys(n: int) -> tuple[bytes, ...]:
    return tuple(bytes([i + 1]) * 16 for i in range(n))


async def _close(conn, server) -> None:
    conn.close()
    await asyncio.wait_for(server, 2)


async def _pull_frames(conn, count: int) -> tuple[list, list, set]:
    refs, misses, leases = [], [], set()
    while len(refs) + len(misses) < count:
        frame = await asyncio.wait_for(conn.read_frame(), 2)
        if isinstance(frame, f.Miss):
            misses.append(frame.index)
        else:
            assert isinstance(frame, f.ChunkRefs) and len(frame.indices) <= REFS_PER_FRAME
            refs += frame.refs()
            leases.add(frame.lease)
    return refs, misses, leases


async def test_a_shared_pull_is_answered_with_batched_refs_a_lease_per_frame():
    node, conn, server = await _session()
    keys = _keys(REFS_PER_FRAME + 3)
    keys = keys[:2] + (Node.MISSING,) + keys[2:]
    await conn.send(f.Pull(9, keys, True))
    refs, misses, leases = await _pull_frames(conn, len(keys))
    assert misses == [2]
    assert [r.index for r in refs] == [i for i in range(len(keys)) if i != 2]
    assert all(r.key == keys[r.index] and r.offset == 4096 * r.key[0] for r in refs)
    assert node.pinned == len(refs) and len(leases) == 2  # a lease per frame, until RELEASE
    first, second = sorted(leases)
    await conn.send(f.Release(first))
    await asyncio.sleep(0.05)
    assert node.pinned == len(refs) - REFS_PER_FRAME  # the first frame's chunks came back
    await conn.send(f.Release(second))
    await asyncio.sleep(0.05)
    assert node.pinned == 0
    await _close(conn, server)


async def test_a_puller_not_proven_on_this_host_is_streamed_to_not_shared():
    node, conn, server = await _session(same_host=False)
    await conn.send(f.Pull(4, _keys(2), True))
    frames = [await asyncio.wait_for(conn.read_frame(), 2) for _ in range(2)]
    assert [type(fr) for fr in frames] == [f.Chunk, f.Chunk]
    await asyncio.sleep(0.05)
    assert node.pinned == 0  # streamed chunks are unpinned once written
    await _close(conn, server)


async def test_lookup_ping_and_vouch_are_answered_inline_in_order():
    _, conn, server = await _session()
    await conn.send(f.Ping(1))
    await conn.send(f.Lookup(2, _keys(2)))
    await conn.send(f.Vouch(3, b"x" * 16))
    got = [await asyncio.wait_for(conn.read_frame(), 2) for _ in range(3)]
    assert got == [f.Pong(1), f.Holders(2, (("s:1",), ("s:1",))), f.Vouched(3, False)]
    await _close(conn, server)


async def test_shared_pins_outlive_the_connection_until_the_lease_ends(monkeypatch):
    # The puller may still be copying refs it read before the connection
    # dropped: only RELEASE or the lease's end may unpin them.
    monkeypatch.setattr("kvmesh.transfer.pull_server.SHARED_LEASE_S", 0.3)
    node, conn, server = await _session()
    await conn.send(f.Pull(5, _keys(3), True))
    frame = await asyncio.wait_for(conn.read_frame(), 2)
    assert isinstance(frame, f.ChunkRefs) and node.pinned == 3
    await _close(conn, server)
    assert node.pinned == 3
    await asyncio.sleep(0.5)
    assert node.pinned == 0


@pytest.mark.parametrize("hello_peer", ["", "not an address", "s:1"])
async def test_a_hello_with_no_or_a_bad_or_our_own_peer_id(hello_peer):
    node = Node()
    a, b = _tcp_pair()
    server = asyncio.get_running_loop().create_task(serve_connection(TcpStream(a), node, None, 2.0))
    conn = FramedConnection(TcpStream(b))
    await conn.send(f.Hello(hello_peer, 3, 3, NS, "", "", handshake.new_nonce()))
    reply = await asyncio.wait_for(conn.read_frame(), 2)
    if hello_peer == "":  # an engine's lookup client: welcome, but no pool token
        await conn.send(f.Auth(b""))
        await conn.send(f.Info("h", 0, 0, b""))
        info = await asyncio.wait_for(conn.read_frame(), 2)
        assert isinstance(reply, f.Welcome) and info.pool_token == b""
    else:
        assert isinstance(reply, f.Error)
    await _close(conn, server)


async def test_a_pull_larger_than_the_pin_budget_goes_on_as_batches_come_back():
    node = Node(slots=2 * REFS_PER_FRAME)  # one peer may pin one frame's worth at a time
    node, conn, server = await _session(node)
    keys = _keys(3 * REFS_PER_FRAME)
    await conn.send(f.Pull(11, keys, True))
    got = 0
    while got < len(keys):
        frame = await asyncio.wait_for(conn.read_frame(), 2)
        assert isinstance(frame, f.ChunkRefs)  # never a MISS: it waits for pins to come back
        assert node.pinned <= REFS_PER_FRAME
        got += len(frame.indices)
        await conn.send(f.Release(frame.lease))  # as a puller does once it has copied them
    await asyncio.sleep(0.05)
    assert node.pinned == 0
    await _close(conn, server)


async def test_a_shared_pull_cut_off_mid_batch_leaves_no_pins():
    """Chunks pinned for a refs frame that was never sent (the serve task was
    cancelled, e.g. its connection closed) are unpinned, not left to no lease."""
    node = Node()
    stuck = asyncio.Event()
    opened = node.open_chunk

    async def open_chunk(key):
        if key[0] == 4:  # the fourth chunk (keys count from 1) never comes
            stuck.set()
            await asyncio.Event().wait()
        return await opened(key)

    node.open_chunk = open_chunk
    sent: list = []

    async def send(frame):
        sent.append(frame)

    pulls = PullServer(node, node.pins, "c:2", send, pin_wait_s=1.0)
    task = asyncio.get_running_loop().create_task(pulls.serve(f.Pull(1, _keys(8), True), True))
    await asyncio.wait_for(stuck.wait(), 2)
    assert node.pinned == 3 and not sent  # three pinned for a frame not yet sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert node.pinned == 0 and node.pins.held() == 0 and pulls.leases == 0


@pytest.mark.parametrize("pulls", [1, 3])
async def test_a_peer_share_smaller_than_a_frame_never_waits_on_its_own_unsent_refs(pulls):
    """A pull waiting for pins first sends the refs it has pinned: the
    puller can only give back pins it was told about. Before, with a share
    under one frame (or several pulls each part-way through a frame), the
    pull waited the whole request timeout on pins that it held itself."""
    node = Node(slots=20)  # one peer may pin 10 chunks at once, under one frame's 16
    node, conn, server = await _session(node)
    keys = _keys(2 * REFS_PER_FRAME)
    for rid in range(1, pulls + 1):
        await conn.send(f.Pull(rid, keys, True))
    got, started = 0, asyncio.get_running_loop().time()
    while got < pulls * len(keys):
        frame = await asyncio.wait_for(conn.read_frame(), 2)
        assert isinstance(frame, f.ChunkRefs)  # never a MISS
        assert node.pinned <= 10
        got += len(frame.indices)
        await conn.send(f.Release(frame.lease))
    assert asyncio.get_running_loop().time() - started < 1.0  # no wait ran out on the way
    await asyncio.sleep(0.05)
    assert node.pinned == 0
    await _close(conn, server)


async def test_a_puller_whose_peer_id_is_not_yet_checked_is_streamed_to_not_shared():
    """Shared pins outlive the connection and count against the claimed
    peer's share: until the claim is checked they are not lent."""
    class Unanswered(Node):
        async def verify(self, claimed, nonce) -> bool:
            await asyncio.Event().wait()

    node, conn, server = await _session(Unanswered())
    await conn.send(f.Pull(4, _keys(2), True))
    frames = [await asyncio.wait_for(conn.read_frame(), 2) for _ in range(2)]
    assert [type(fr) for fr in frames] == [f.Chunk, f.Chunk]
    await asyncio.sleep(0.05)
    assert node.pinned == 0 and node.pins.held() == 0
    await _close(conn, server)


def _encoding(log: list, gate: asyncio.Event | None = None):
    """A wire form that stands in for an encoder: checksum + 1000, half the
    length; notes how many encodes run at once."""
    running = [0]

    async def wire(ticket):
        running[0] += 1
        log.append(running[0])
        try:
            await asyncio.sleep(0.01)
            if gate is not None:
                await gate.wait()
        finally:
            running[0] -= 1
        return Ticket(ticket.checksum + 1000, ticket.length // 2, -1, bytes(ticket.length // 2))

    return wire


async def test_an_encoded_stream_sends_each_chunk_as_its_wire_form_encoding_ahead():
    node, sent, running = Node(), [], []

    async def send(frame):
        sent.append(frame)

    pulls = PullServer(node, node.pins, "c:2", send, pin_wait_s=1.0, wire=_encoding(running))
    await pulls.serve(f.Pull(1, _keys(6) + (Node.MISSING,), False), False)
    chunks = [fr for fr in sent if isinstance(fr, f.Chunk)]
    assert [c.index for c in chunks] == list(range(6))
    assert [(c.checksum, c.length) for c in chunks] == [(1000 + k[0], (100 + k[0]) // 2) for k in _keys(6)]
    assert [fr.index for fr in sent if isinstance(fr, f.Miss)] == [6]
    assert max(running) > 1  # the next chunks encode while one is sent
    assert node.pinned == 0 and node.pins.held() == 0


async def test_an_encoded_stream_with_a_tiny_pin_share_sends_ahead_rather_than_wait_on_itself():
    node, sent = Node(slots=2), []  # one pin per peer at a time

    async def send(frame):
        sent.append(frame)

    pulls = PullServer(node, node.pins, "c:2", send, pin_wait_s=1.0, wire=_encoding([]))
    started = asyncio.get_running_loop().time()
    await pulls.serve(f.Pull(1, _keys(5), False), False)
    assert [type(fr) for fr in sent] == [f.Chunk] * 5  # never a MISS
    assert asyncio.get_running_loop().time() - started < 0.5  # no wait ran out
    assert node.pinned == 0


async def test_a_cancelled_encoded_stream_gives_every_pin_back():
    node, gate = Node(), asyncio.Event()

    async def send(frame):
        pass

    pulls = PullServer(node, node.pins, "c:2", send, pin_wait_s=1.0, wire=_encoding([], gate))
    task = asyncio.get_running_loop().create_task(pulls.serve(f.Pull(1, _keys(8), False), False))
    while node.pinned < 3:  # one being sent, two encoding ahead
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert node.pinned == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert node.pinned == 0 and node.pins.held() == 0
