"""Serving one inbound connection: handshake, then requests until it closes.

LOOKUP and PING are answered inline by the read loop (no await but the
reply's send); the other requests run concurrently as tasks (a PULL streams
while a LOOKUP is answered), capped per connection. A shared-memory PULL is
answered with CHUNK_REFS batches when the puller speaks protocol 2, one
CHUNK_REF per chunk otherwise. A protocol error closes this connection
only; the peer keeps serving every other one. Chunks are pinned from the
moment they are chosen until their bytes are written (TCP/UCX) or the puller
releases them (shared memory), so eviction never pulls a slot out from under
a transfer. A shared pull's pins outlive its connection: the puller may still
be copying refs it has read, so only RELEASE or the lease's end unpins them
(see `kvmesh.transfer.shm`).

Limits (`kvmesh.transfer.limits`): until the handshake is done a connection
may announce only small headers, and no request may carry a payload; the
handshake is timed, every frame written is timed (a puller that stops
reading is cut off, which unpins what its requests held), and a connection
with no request in flight is closed once idle (`kvmesh.transfer.watch`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from kvmesh.errors import HandshakeError, KvmeshError, ProtocolError
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.admission import Admission
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.limits import REQUEST_MAX_PAYLOAD_BYTES, ServerLimits
from kvmesh.transfer.shm import SHARED_LEASE_S
from kvmesh.transfer.streams import Stream
from kvmesh.transfer.watch import IDLE, SEND_TIMEOUT, ConnectionWatch

log = logging.getLogger(__name__)

# Chunk refs per CHUNK_REFS frame: the puller starts copying the first batch
# while later ones are pinned; one frame per chunk cost ~30 us of decode each.
REFS_PER_FRAME = 16

# How a served connection ended (serve_connection's return value).
END_CLOSED = "closed"  # the other side closed or reset it, or the handshake timed out
END_REFUSED = "refused"  # the handshake refused it: version, namespace or secret
END_PROTOCOL_ERROR = "protocol_error"
END_IDLE = IDLE  # no request for the idle timeout
END_SEND_TIMEOUT = SEND_TIMEOUT  # a frame could not be written within the send timeout


class ServingNode(Protocol):
    """What the server needs from its peer. Called on the peer's loop thread."""

    def identity(self) -> Any:
        """peer_id, namespace, host_id, shm_path, ucx_port, control_port of this peer."""
    def on_connected(self, hello: f.Hello) -> None: ...
    def holders(self, keys: tuple[bytes, ...]) -> list[tuple[str, ...]]: ...
    def on_advertise(self, holder: str, keys: tuple[bytes, ...]) -> None: ...
    def on_withdraw(self, holder: str, keys: tuple[bytes, ...]) -> None: ...
    def members_exchange(self, peers: tuple[str, ...]) -> tuple[str, ...]: ...
    async def prefix(self, keys: tuple[bytes, ...]) -> int: ...
    async def fetch(self, keys: tuple[bytes, ...], holder: str) -> int: ...
    def open_chunk(self, key: bytes) -> Any | None:
        """Pin a chunk for sending; returns a ticket with view/length/checksum/offset, or None."""
    def close_chunk(self, ticket: Any) -> None: ...


async def serve_connection(stream: Stream, node: ServingNode, secret: bytes | None,
                           timeout_s: float, limits: ServerLimits | None = None,
                           admission: Admission | None = None) -> str:
    """Serve one inbound stream until it closes; returns how it ended (END_*).

    `limits` (default: `ServerLimits.default(timeout_s)`) bound the
    handshake, each send, the time idle, and the header a stranger may
    announce before the handshake is done; `admission`, if given, is told
    when the other side has authenticated (the caller releases it).
    """
    limits = limits or ServerLimits.default(timeout_s)
    conn = FramedConnection(stream)
    conn.set_frame_caps(limits.pre_auth_header_bytes, REQUEST_MAX_PAYLOAD_BYTES)
    session = _Session(conn, node)
    watch = ConnectionWatch(conn, lambda: bool(session.tasks), limits.idle_s, limits.send_s)
    end = END_CLOSED
    try:
        session.version = await asyncio.wait_for(_handshake(conn, node, secret), limits.handshake_s)
        conn.set_frame_caps(f.MAX_HEADER_BYTES, REQUEST_MAX_PAYLOAD_BYTES)
        if admission is not None:
            admission.authenticated()
        watch.start()
        await session.run()
    except HandshakeError as exc:
        end = END_REFUSED
        log.info("refused a peer: %s", exc)
        await _try_send(conn, f.Error(0, str(exc)))
    except ProtocolError as exc:
        end = END_PROTOCOL_ERROR
        log.warning("closing a connection after a protocol error: %s", exc)
        await _try_send(conn, f.Error(0, f"protocol error: {exc}"))
    except (KvmeshError, asyncio.TimeoutError):  # closed, reset, or the handshake timed out
        pass
    finally:
        watch.stop()
        await session.stop()
        conn.close()
    return watch.ended_by or end


async def _try_send(conn: FramedConnection, frame: f.Frame) -> None:
    try:
        await asyncio.wait_for(conn.send(frame), 0.5)
    except (asyncio.TimeoutError, KvmeshError):
        pass


async def _handshake(conn: FramedConnection, node: ServingNode, secret: bytes | None) -> int:
    """Returns the protocol version both sides speak."""
    hello = await conn.read_frame()
    if not isinstance(hello, f.Hello):
        raise HandshakeError(f"expected HELLO, got {type(hello).__name__}")
    version = handshake.choose_version(hello)
    me = node.identity()
    handshake.check_namespace(me.namespace, hello.namespace)
    nonce = handshake.new_nonce()
    await conn.send(f.Welcome(me.peer_id, version, me.namespace, me.host_id, me.shm_path,
                              nonce, handshake.proof(secret, b"server", hello.nonce, nonce),
                              me.ucx_port, me.control_port))
    auth = await conn.read_frame()
    if not isinstance(auth, f.Auth):
        raise HandshakeError(f"expected AUTH, got {type(auth).__name__}")
    handshake.check_proof(secret, auth.proof, b"client", nonce, hello.nonce)
    node.on_connected(hello)
    return version


class _Session:
    def __init__(self, conn: FramedConnection, node: ServingNode) -> None:
        self.conn = conn
        self.node = node
        self.version = f.MIN_PROTOCOL_VERSION
        self.tasks: set[asyncio.Task] = set()
        self.leases: dict[int, list[Any]] = {}  # shared-memory pulls awaiting RELEASE
        self.slots = asyncio.Semaphore(f.MAX_INFLIGHT_REQUESTS)

    async def run(self) -> None:
        while True:
            frame = await self.conn.read_frame()
            if isinstance(frame, (f.Advertise, f.Withdraw, f.Release)):
                self._on_oneway(frame)
            elif isinstance(frame, (f.Lookup, f.Ping)):
                # Answered right here: no await but the send, whose fast path
                # (socket ready) does not yield. A task per LOOKUP cost a task
                # and a loop turn, on the TTFT path.
                await self.conn.send(self._answer_now(frame))
            elif isinstance(frame, (f.Members, f.Pull, f.Prefix, f.Fetch)):
                if self.slots.locked():
                    await self.conn.send(f.Error(frame.request_id, "too many requests in flight"))
                    continue
                await self.slots.acquire()
                task = asyncio.get_running_loop().create_task(self._answer(frame))
                self.tasks.add(task)
                task.add_done_callback(self._done)
            else:
                raise ProtocolError(f"unexpected {type(frame).__name__} from a client")

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()

    def _on_oneway(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Advertise):
            self.node.on_advertise(frame.holder, frame.keys)
        elif isinstance(frame, f.Withdraw):
            self.node.on_withdraw(frame.holder, frame.keys)
        else:
            self._release(frame.request_id)

    def _answer_now(self, frame: f.Lookup | f.Ping) -> f.Frame:
        if isinstance(frame, f.Lookup):
            return f.Holders(frame.request_id, tuple(self.node.holders(frame.keys)))
        return f.Pong(frame.request_id)

    async def _answer(self, frame: f.Frame) -> None:
        try:
            if isinstance(frame, f.Pull):
                await self._serve_pull(frame)
                return
            if isinstance(frame, f.Prefix):
                reply: f.Frame = f.PrefixReply(frame.request_id, await self.node.prefix(frame.keys))
            elif isinstance(frame, f.Fetch):
                reply = f.Fetched(frame.request_id, await self.node.fetch(frame.keys, frame.holder))
            else:
                reply = f.Members(frame.request_id, self.node.members_exchange(frame.peers), True)
            await self.conn.send(reply)
        except KvmeshError as exc:
            log.debug("request %s failed: %s", type(frame).__name__, exc)
            self.conn.close()

    async def _serve_pull(self, pull: f.Pull) -> None:
        lease: list[Any] = []
        if pull.shared:
            self.leases[pull.request_id] = lease
            asyncio.get_running_loop().call_later(SHARED_LEASE_S, self._release, pull.request_id)
            if self.version >= 2:
                await self._serve_shared_pull(pull, lease)
                return
        for index, key in enumerate(pull.keys):
            ticket = self.node.open_chunk(key)
            if ticket is None:
                await self.conn.send(f.Miss(pull.request_id, index, key))
                continue
            if pull.shared:
                lease.append(ticket)
                await self.conn.send(f.ChunkRef(pull.request_id, index, key, ticket.checksum,
                                                ticket.length, ticket.offset))
                continue
            try:
                await self.conn.send(f.Chunk(pull.request_id, index, key, ticket.checksum,
                                             ticket.length, ticket.view))
            finally:
                self.node.close_chunk(ticket)

    async def _serve_shared_pull(self, pull: f.Pull, lease: list[Any]) -> None:
        """Pin chunks and send their refs REFS_PER_FRAME at a time (misses one by one)."""
        batch: list[tuple[int, bytes, Any]] = []
        for index, key in enumerate(pull.keys):
            ticket = self.node.open_chunk(key)
            if ticket is None:
                await self.conn.send(f.Miss(pull.request_id, index, key))
                continue
            lease.append(ticket)
            batch.append((index, key, ticket))
            if len(batch) == REFS_PER_FRAME:
                await self.conn.send(_chunk_refs(pull.request_id, batch))
                batch = []
        if batch:
            await self.conn.send(_chunk_refs(pull.request_id, batch))

    def _release(self, request_id: int) -> None:
        for ticket in self.leases.pop(request_id, ()):
            self.node.close_chunk(ticket)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        # Leases stay: each one's timer unpins it (see the module docstring).


def _chunk_refs(request_id: int, batch: list[tuple[int, bytes, Any]]) -> f.ChunkRefs:
    return f.ChunkRefs(request_id, tuple(i for i, _, _ in batch), tuple(k for _, k, _ in batch),
                       tuple(t.checksum for *_, t in batch), tuple(t.length for *_, t in batch),
                       tuple(t.offset for *_, t in batch))
