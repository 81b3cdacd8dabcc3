"""A hostile peer that speaks kvmesh's wire protocol directly.

`HostileClient` dials a real peer and says whatever a test wants, frame by
frame: any claimed peer id, any INFO, any request. `FakeHolder` listens like
a peer and answers like one, but with what a test chose: its WELCOME and
INFO, whether it vouches for connections, and the bytes it serves. Both use
the project's own codec, so every frame is well formed unless a test makes
it otherwise. Run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Callable

from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.connection import FramedConnection
from kvmesh.transfer.streams import TcpStream
from kvmesh.types import PeerAddress


class HostileClient:
    def __init__(self, conn: FramedConnection, welcome: f.Welcome, info: f.Info | None) -> None:
        self.conn = conn
        self.welcome = welcome
        self.info = info  # the server's INFO: None if it refused us after AUTH
        self.nonce = b""

    @classmethod
    async def connect(cls, target: str, namespace: bytes, *, claim: str = "",
                      secret: bytes | None = None, host_id: str = "evil-host",
                      timeout_s: float = 3.0) -> "HostileClient":
        address = PeerAddress.parse(target)
        conn = FramedConnection(await TcpStream.connect(address.host, address.port))
        nonce = handshake.new_nonce()
        await conn.send(f.Hello(claim, 3, 3, namespace, "", "", nonce))
        welcome = await asyncio.wait_for(conn.read_frame(), timeout_s)
        if not isinstance(welcome, f.Welcome):
            return cls(conn, welcome, None)
        await conn.send(f.Auth(handshake.proof(secret, b"client", welcome.nonce, nonce)))
        await conn.send(f.Info(host_id, 0, 0, b""))
        try:
            info = await asyncio.wait_for(conn.read_frame(), timeout_s)
        except Exception:  # noqa: BLE001 - refused: the server hung up
            info = None
        client = cls(conn, welcome, info if isinstance(info, f.Info) else None)
        client.nonce = nonce
        return client

    async def send(self, frame: f.Frame) -> None:
        await self.conn.send(frame)

    async def recv(self, timeout_s: float = 3.0) -> f.Frame:
        return await asyncio.wait_for(self.conn.read_frame(), timeout_s)

    async def closed_by_server(self, timeout_s: float = 3.0) -> bool:
        """Whether the server hangs up within `timeout_s` (frames before are read and dropped)."""
        try:
            while True:
                await asyncio.wait_for(self.conn.read_frame(), timeout_s)
        except asyncio.TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - StreamClosed, or the ERROR then the close
            return True

    def close(self) -> None:
        self.conn.close()


@dataclass
class FakeHolder:
    """Listens like a peer; answers every connection as the test configured."""

    namespace: bytes
    host_id: str = "evil-host"
    shm_path: str = ""  # what a protocol-2 holder would have put in WELCOME
    pool_token: bytes = b""
    vouch: bool = True  # answer VOUCH with "yes, that connection is mine"
    chunks: dict[bytes, bytes] = field(default_factory=dict)  # key -> payload to serve
    refs: Callable[[f.Pull], list[f.Frame]] | None = None  # instead of streaming chunks
    accepted: int = 0
    pulls: list[f.Pull] = field(default_factory=list)

    async def start(self) -> str:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.peer_id = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._task = asyncio.get_running_loop().create_task(self._accept())
        return self.peer_id

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._sock)
            self.accepted += 1
            loop.create_task(self._serve(FramedConnection(TcpStream(sock))))

    async def _serve(self, conn: FramedConnection) -> None:
        try:
            hello = await conn.read_frame()
            nonce = handshake.new_nonce()
            await conn.send(f.Welcome(self.peer_id, 3, self.namespace, self.host_id, self.shm_path,
                                      nonce, b""))
            await conn.read_frame()  # AUTH
            await conn.read_frame()  # INFO
            await conn.send(f.Info(self.host_id, 0, 0, self.pool_token))
            while True:
                await self._answer(conn, await conn.read_frame(), hello)
        except Exception:  # noqa: BLE001 - the victim hung up
            conn.close()

    async def _answer(self, conn: FramedConnection, frame: f.Frame, hello: f.Hello) -> None:
        if isinstance(frame, f.Vouch):
            await conn.send(f.Vouched(frame.request_id, self.vouch))
        elif isinstance(frame, f.Ping):
            await conn.send(f.Pong(frame.request_id))
        elif isinstance(frame, f.Lookup):
            await conn.send(f.Holders(frame.request_id, tuple(() for _ in frame.keys)))
        elif isinstance(frame, f.Pull):
            self.pulls.append(frame)
            for out in (self.refs(frame) if self.refs else self._stream(frame)):
                await conn.send(out)

    def _stream(self, pull: f.Pull) -> list[f.Frame]:
        import xxhash  # noqa: PLC0415

        out: list[f.Frame] = []
        for i, key in enumerate(pull.keys):
            data = self.chunks.get(key)
            out.append(f.Miss(pull.request_id, i, key) if data is None else
                       f.Chunk(pull.request_id, i, key, xxhash.xxh3_64_intdigest(data), len(data),
                               data))
        return out
