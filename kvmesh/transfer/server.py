"""Serving one inbound connection: handshake, then requests until it closes.

The handshake (protocol 3): HELLO, WELCOME, AUTH, then INFO each way. The
client learns nothing about this host or its pool until its AUTH checked
out, and our INFO carries a pool token only for a member (a connection that
names a peer id), for this connection alone (see `pool_door`).

Identity: a connection claims a peer id in its HELLO. The claim is checked
by asking that peer, over our own connection to it, whether it opened this
connection (VOUCH with the HELLO's nonce, which only the real peer knows).
Until the answer, ADVERTISE and WITHDRAW are held back (up to
MAX_HELD_KEYS keys); a refuted claim closes the connection. Directory
entries are only ever made for the connection's own peer id: ADVERTISE and
WITHDRAW naming anyone else break the protocol. FETCH is served to verified
members only. A connection without a peer id (an engine's own lookup
client) may ask, never tell.

LOOKUP, PING and VOUCH are answered inline by the read loop (no await but
the reply's send); PULL, PREFIX, FETCH and MEMBERS run concurrently as
tasks, capped per connection. PULLs are served by `pull_server` (pins,
leases, the pin budget). A protocol error closes this connection only; the
peer keeps serving every other one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from kvmesh.errors import HandshakeError, KvmeshError, ProtocolError
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.lookup_answer import fit_holders
from kvmesh.transfer.pin_budget import PinBudget
from kvmesh.transfer.pull_server import PullServer
from kvmesh.transfer.streams import Stream
from kvmesh.types import PeerAddress, PeerId

log = logging.getLogger(__name__)

MAX_HELD_KEYS = 1 << 16  # ADVERTISE/WITHDRAW keys held back while a claim is checked


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


async def serve_connection(stream: Stream, node: ServingNode, secret: bytes | None,
                           timeout_s: float) -> None:
    conn = FramedConnection(stream)
    session = _Session(conn, node, timeout_s)
    try:
        await asyncio.wait_for(session.handshake(secret), timeout_s)
        await session.run()
    except HandshakeError as exc:
        log.info("refused a peer: %s", exc)
        await _try_send(conn, f.Error(0, str(exc)))
    except ProtocolError as exc:
        log.warning("closing a connection after a protocol error: %s", exc)
        await _try_send(conn, f.Error(0, f"protocol error: {exc}"))
    except (KvmeshError, asyncio.TimeoutError):  # closed, reset, or the handshake timed out
        pass
    except Exception:  # noqa: BLE001 - a bug here closes this connection, not the peer
        log.exception("serving a connection of %s failed", session.peer or "a client")
    finally:
        await session.stop()
        conn.close()


async def _try_send(conn: FramedConnection, frame: f.Frame) -> None:
    try:
        await asyncio.wait_for(conn.send(frame), 0.5)
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
        self.peer = PeerId("")  # the claimed peer id; "" for a non-member
        self.verified = False
        self.same_host = False  # proven through the pool door
        self.token = b""
        self.tasks: set[asyncio.Task] = set()
        self.held: list[f.Advertise | f.Withdraw] = []  # until the claim is checked
        self.held_keys = 0
        self.slots = asyncio.Semaphore(f.MAX_INFLIGHT_REQUESTS)
        self.pulls = PullServer(node, node.pins, self, conn.send)

    async def handshake(self, secret: bytes | None) -> None:
        hello = await self._expect(f.Hello)
        version = handshake.choose_version(hello)
        me = self.node.identity()
        handshake.check_namespace(me.namespace, hello.namespace)
        self.peer = claimed_peer(hello, me.peer_id)
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

    def _proven_same_host(self) -> None:
        self.same_host = True

    async def _verify(self, nonce: bytes, info: f.Info) -> None:
        try:
            ok = await asyncio.wait_for(self.node.verify(self.peer, nonce), self.timeout_s * 2)
        except (KvmeshError, asyncio.TimeoutError):
            ok = False
        if not ok:
            log.warning("closing a connection that claims to be %s: that peer does not vouch "
                        "for it", self.peer)
            self.conn.close()
            return
        self.verified = True
        self.node.on_member(self.peer, info)
        held, self.held, self.held_keys = self.held, [], 0
        for frame in held:
            self._apply(frame)

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
        if self.verified:
            self._apply(frame)
        elif self.held_keys + len(frame.keys) <= MAX_HELD_KEYS:
            self.held.append(frame)
            self.held_keys += len(frame.keys)
        # else dropped: a stale directory until the holder's next rebalance

    def _apply(self, frame: f.Advertise | f.Withdraw) -> None:
        if isinstance(frame, f.Advertise):
            self.node.on_advertise(self.peer, frame.keys)
        else:
            self.node.on_withdraw(self.peer, frame.keys)

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
                await self.pulls.serve(frame, shared=frame.shared and self.same_host)
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
        if not self.verified:
            return f.Error(frame.request_id, "FETCH is for verified members only")
        return f.Fetched(frame.request_id, await self.node.fetch(frame.keys, PeerId(frame.holder)))

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.token:
            self.node.revoke_pool_token(self.token)
        self.pulls.stop()
