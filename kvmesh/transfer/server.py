"""Serving one inbound connection: handshake, then requests until it closes.

The handshake (protocol 3): HELLO, WELCOME, AUTH, then INFO each way. The
client learns nothing about this host or its pool until its AUTH checked
out, and our INFO carries a pool token only for a member (a connection that
names a peer id), for this connection alone (see `pool_door`).

Identity: a connection claims a peer id in its HELLO. The claim is checked
by asking that peer, over our own connection to it, whether it opened this
connection (VOUCH with the HELLO's nonce, which only the real peer knows);
a refuted claim closes the connection (`claimed_identity` says what happens
to its directory changes meanwhile). Directory entries are only ever made
for the connection's own peer id: ADVERTISE and WITHDRAW naming anyone else
break the protocol. FETCH is served to verified members only. A connection
without a peer id (an engine's own lookup client) may ask, never tell.

LOOKUP, PING and VOUCH are answered inline by the read loop (no await but
the reply's send); PULL, PREFIX, FETCH and MEMBERS run concurrently as
tasks, capped per connection. PULLs are served by `pull_server` (pins,
leases, the pin budget, charged to the claimed peer id: one peer's share
holds over all its connections); shared pulls only once the claim is
checked. A protocol error closes this connection only; the
peer keeps serving every other one.

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
from kvmesh.transfer.claimed_identity import ClaimedIdentity
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.deadline import within
from kvmesh.transfer.limits import REQUEST_MAX_PAYLOAD_BYTES, ServerLimits
from kvmesh.transfer.lookup_answer import fit_holders
from kvmesh.transfer.pin_budget import PinBudget
from kvmesh.transfer.pull_server import PullServer
from kvmesh.transfer.streams import Stream
from kvmesh.transfer.watch import IDLE, SEND_TIMEOUT, ConnectionWatch
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)

# How a served connection ended (serve_connection's return value).
END_CLOSED = "closed"  # the other side closed or reset it, or the handshake timed out
END_REFUSED = "refused"  # the handshake refused it: version, namespace, secret or identity
END_PROTOCOL_ERROR = "protocol_error"
END_IDLE = IDLE  # no request for the idle timeout
END_SEND_TIMEOUT = SEND_TIMEOUT  # a frame could not be written within the send timeout
END_BUG = "bug"


class ServingNode(Protocol):
    """What the server needs from its peer. Called on the peer's loop thread."""

    pins: PinBudget

    def identity(self) -> Any:
        """peer_id, namespace, host_id, ucx_port, control_port of this peer."""
    def pool_token(self, on_proven: Any) -> bytes:
        """A pool-door token for one connection (b"": no pool to share)."""
    def revoke_pool_token(self, token: bytes) -> None: ...
    async def verify(self, claimed: PeerId, nonce: bytes) -> bool:
        """Whether `claimed` vouches for the connection whose HELLO had `nonce`."""
    def vouch(self, asker: PeerId, nonce: bytes) -> bool:
        """Whether we opened a connection to `asker` with this HELLO nonce."""
    def on_member(self, peer: PeerId, info: f.Info) -> None:
        """A verified member is connected (its INFO: control port, ...)."""
    def holders(self, keys: tuple[bytes, ...]) -> list[tuple[str, ...]]: ...
    def on_advertise(self, holder: PeerId, keys: tuple[bytes, ...]) -> None: ...
    def on_withdraw(self, holder: PeerId, keys: tuple[bytes, ...]) -> None: ...
    def members_exchange(self, peers: tuple[str, ...]) -> tuple[str, ...]: ...
    async def prefix(self, keys: tuple[bytes, ...]) -> int: ...
    async def fetch(self, keys: tuple[bytes, ...], holder: PeerId) -> int: ...
    async def open_chunk(self, key: bytes) -> Any | None: ...
    def close_chunk(self, ticket: Any) -> None: ...
    # None, or what a stream sends for an open chunk (`pull_server.WireForm`)
    wire_form: Any


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
    session = _Session(conn, node, timeout_s)
    watch = ConnectionWatch(conn, lambda: bool(session.tasks), limits.idle_s, limits.send_s)
    end = END_CLOSED
    try:
        await within(session.handshake(secret), limits.handshake_s)
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
    except Exception:  # noqa: BLE001 - a bug here closes this connection, not the peer
        end = END_BUG
        log.exception("serving a connection of %s failed", session.peer or "a client")
    finally:
        watch.stop()
        await session.stop()
        conn.close()
    return watch.ended_by or end


async def _try_send(conn: FramedConnection, frame: f.Frame) -> None:
    try:
        await within(conn.send(frame), 0.5)
    except (asyncio.TimeoutError, KvmeshError):
        pass


def claimed_peer(hello: f.Hello, ours: PeerId) -> PeerId:
    """The peer id a HELLO claims ("" for a non-member), or HandshakeError."""
    if not hello.peer_id:
        return PeerId("")
    try:
        PeerAddress.parse(hello.peer_id)
    except ValueError:
        raise HandshakeError(f"malformed peer id {hello.peer_id[:80]!r}") from None
    if hello.peer_id == ours:
        raise HandshakeError("the peer claims our own peer id")
    return PeerId(hello.peer_id)


class _Session:
    def __init__(self, conn: FramedConnection, node: ServingNode, timeout_s: float) -> None:
        self.conn = conn
        self.node = node
        self.timeout_s = timeout_s
        self.identity = ClaimedIdentity(PeerId(""), node.on_advertise, node.on_withdraw)
        self.same_host = False  # proven through the pool door
        self.token = b""
        self.tasks: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(f.MAX_INFLIGHT_REQUESTS)
        self.pulls: PullServer | None = None  # once the handshake named the peer

    async def handshake(self, secret: bytes | None) -> None:
        hello = await self._expect(f.Hello)
        version = handshake.choose_version(hello)
        me = self.node.identity()
        handshake.check_namespace(me.namespace, hello.namespace)
        self.identity.peer = claimed_peer(hello, me.peer_id)
        # Pins are budgeted per peer, all its connections together; a
        # connection that names no peer is a budget of its own.
        self.pulls = PullServer(self.node, self.node.pins, self.peer or self, self.conn.send,
                                pin_wait_s=self.timeout_s, wire=self.node.wire_form)
        nonce = handshake.new_nonce()
        await self.conn.send(f.Welcome(me.peer_id, version, me.namespace, "", "", nonce,
                                       handshake.proof(secret, b"server", hello.nonce, nonce)))
        auth = await self._expect(f.Auth)
        handshake.check_proof(secret, auth.proof, b"client", nonce, hello.nonce)
        if self.peer:
            self.token = self.node.pool_token(self._proven_same_host)
        await self.conn.send(f.Info(me.host_id, me.ucx_port, me.control_port, self.token))
        info = await self._expect(f.Info)
        if self.peer:
            self._spawn(self._verify(hello.nonce, info))

    async def _expect(self, kind: type) -> Any:
        frame = await self.conn.read_frame()
        if not isinstance(frame, kind):
            raise HandshakeError(f"expected {kind.__name__.upper()}, got {type(frame).__name__}")
        return frame

    @property
    def peer(self) -> PeerId:
        """The claimed peer id ("" for a non-member)."""
        return self.identity.peer

    def _proven_same_host(self) -> None:
        self.same_host = True

    async def _verify(self, nonce: bytes, info: f.Info) -> None:
        try:
            ok = await within(self.node.verify(self.peer, nonce), self.timeout_s * 2)
        except (KvmeshError, asyncio.TimeoutError) as exc:  # gone, or unreachable from here
            log.info("closing a connection that claims to be %s: could not ask it (%s)",
                     self.peer, exc)
            ok = None
        if not ok:
            if ok is not None:
                log.warning("closing a connection that claims to be %s: that peer does not "
                            "vouch for it", self.peer)
            self.identity.refuted()
            self.conn.close()
            return
        self.identity.confirmed()
        self.node.on_member(self.peer, info)

    async def run(self) -> None:
        while True:
            frame = await self.conn.read_frame()
            if isinstance(frame, (f.Advertise, f.Withdraw)):
                self._on_directory_change(frame)
            elif isinstance(frame, f.Release):
                self.pulls.release(frame.lease)
            elif isinstance(frame, (f.Lookup, f.Ping, f.Vouch)):
                # Answered right here: no await but the send, whose fast path
                # (socket ready) does not yield. A task per LOOKUP cost a task
                # and a loop turn, on the TTFT path.
                await self.conn.send(self._answer_now(frame))
            elif isinstance(frame, (f.Members, f.Pull, f.Prefix, f.Fetch)):
                if self.slots.locked():
                    await self.conn.send(f.Error(frame.request_id, "too many requests in flight"))
                    continue
                await self.slots.acquire()
                self._spawn(self._answer(frame), self.slots.release)
            else:
                raise ProtocolError(f"unexpected {type(frame).__name__} from a client")

    def _spawn(self, coro, then=None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if then is not None:
            task.add_done_callback(lambda _: then())

    def _on_directory_change(self, frame: f.Advertise | f.Withdraw) -> None:
        if not self.peer or frame.holder != self.peer:
            raise ProtocolError(f"{type(frame).__name__.upper()} for {frame.holder[:80]!r} on "
                                f"a connection of {self.peer or 'a non-member'!r}")
        self.identity.change(frame)

    def _answer_now(self, frame: f.Lookup | f.Ping | f.Vouch) -> f.Frame:
        if isinstance(frame, f.Lookup):
            return f.Holders(frame.request_id, fit_holders(self.node.holders(frame.keys)))
        if isinstance(frame, f.Vouch):
            return f.Vouched(frame.request_id,
                             bool(self.peer) and self.node.vouch(self.peer, frame.nonce))
        return f.Pong(frame.request_id)

    async def _answer(self, frame: f.Frame) -> None:
        try:
            if isinstance(frame, f.Pull):
                # Shared pins outlive the connection, so they are lent only
                # under a checked peer id: an impostor's would stay charged to
                # the real peer for a lease after it was cut off.
                shared = frame.shared and self.same_host and self.identity.verified
                await self.pulls.serve(frame, shared=shared)
                return
            if isinstance(frame, f.Prefix):
                reply: f.Frame = f.PrefixReply(frame.request_id, await self.node.prefix(frame.keys))
            elif isinstance(frame, f.Fetch):
                reply = await self._fetch(frame)
            else:
                reply = f.Members(frame.request_id, self.node.members_exchange(frame.peers), True)
            await self.conn.send(reply)
        except KvmeshError as exc:
            log.debug("request %s failed: %s", type(frame).__name__, exc)
            self.conn.close()

    async def _fetch(self, frame: f.Fetch) -> f.Frame:
        if not self.identity.verified:
            return f.Error(frame.request_id, "FETCH is for verified members only")
        return f.Fetched(frame.request_id, await self.node.fetch(frame.keys, PeerId(frame.holder)))

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.token:
            self.node.revoke_pool_token(self.token)
        if self.pulls is not None:
            self.pulls.stop()
