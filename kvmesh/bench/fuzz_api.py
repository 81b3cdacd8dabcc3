"""Fuzzing the control API in-process: aiohttp's test server, a stand-in peer, wild requests.

Two apps (one with a mesh secret, one without) run on one event loop, each
over its own `FuzzPeer`; every input is one request from
`fuzz_api_requests`, sent through an aiohttp client session or, for some, as
mutated raw bytes over a socket. (Not aiohttp's TestClient: it keeps every
response until it is closed, which over 10^5 requests reads as a leak.) Whatever arrives, the API must not answer
5xx (a 502 from a failed move cannot happen here: the stand-in's pushes
succeed). Each request is bounded by the hang limit (asyncio.wait_for); the
tracebacks the app logs for a 500 are kept with the failing input.
Single-threaded: `run` is called from one thread, which owns the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
from pathlib import Path

from aiohttp import ClientError, ClientSession, DummyCookieJar
from aiohttp.test_utils import TestServer

from kvmesh.bench.fuzz_api_peer import OTHER, FuzzPeer
from kvmesh.bench.fuzz_api_requests import (
    ApiRequest,
    authorization,
    make_request,
    raw_bytes,
)
from kvmesh.bench.fuzz_tally import InputHang
from kvmesh.config import ControlConfig
from kvmesh.peers.control_api import build_app
from kvmesh.types import key_hex

SECRET = b"fuzz-control-secret"
RAW_WAIT_S = 0.1  # for a raw request's status line before sending EOF (it may be incomplete)
RESTOCK_EVERY = 50  # inputs between putting the stand-in peers' chunks back
_LOGGERS = ("kvmesh.peers.control_api", "aiohttp.server", "aiohttp.web")


class _LastError(logging.Handler):
    """Keeps the last logged exception (the app logs one for every 500) and silences the rest."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.trace = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.trace = self.format(record)[-4000:]


class ApiSurface:
    """The control API; `run` sends one request and checks its status. See the module docstring."""

    name = "api"

    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s
        self.loop = asyncio.new_event_loop()
        self._tmp = tempfile.TemporaryDirectory(prefix="kvmesh-fuzz-api-", dir=_memory_dir())
        self.peers = {s: FuzzPeer("127.0.0.1:7001", Path(self._tmp.name) / f"disk{int(s)}",
                                  SECRET if s else None) for s in (False, True)}
        self.servers = {s: TestServer(build_app(p, ControlConfig()), loop=self.loop)
                        for s, p in self.peers.items()}
        for secret, server in self.servers.items():
            self.loop.run_until_complete(server.start_server())
            self.peers[secret].known_control_urls[OTHER] = str(server.make_url("")).rstrip("/")
        self.session = self.loop.run_until_complete(_open_session())
        self.keys = [key_hex(k) for k in self.peers[False].keys]  # both stand-ins stock the same
        self._errors = _LastError()
        self._saved_loggers = []
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._saved_loggers.append((logger, logger.propagate))
            logger.addHandler(self._errors)
            logger.propagate = False
        self._inputs = 0
        self.statuses: dict[int, int] = {}  # status -> count; 0: no answer (closed, or unsendable)

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        for server in self.servers.values():
            self.loop.run_until_complete(server.close())
        self.loop.close()
        for peer in self.peers.values():
            peer.close()
        for logger, propagate in self._saved_loggers:
            logger.removeHandler(self._errors)
            logger.propagate = propagate
        self._tmp.cleanup()

    def make(self, rng: random.Random) -> ApiRequest:
        if self._inputs % RESTOCK_EVERY == 0:
            for peer in self.peers.values():
                peer.restock()
        self._inputs += 1
        return make_request(rng, self.keys)

    def run(self, req: ApiRequest) -> tuple[bool, str | None]:
        """(refused with a 4xx, None); a 5xx raises ServerError, a request past the bound InputHang."""
        self._errors.trace = ""
        try:
            status = self.loop.run_until_complete(asyncio.wait_for(self._send(req), self.hang_s))
        except asyncio.TimeoutError:
            raise InputHang(f"no answer within {self.hang_s}s") from None
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            raise ServerError(status, self._errors.trace)
        return status >= 400, None

    async def _send(self, req: ApiRequest) -> int:
        server = self.servers[req.secret]
        host = req.host.replace("{port}", str(server.port))
        headers = {**req.extra, "Host": host}
        if req.origin is not None:
            headers["Origin"] = req.origin.replace("{port}", str(server.port))
        if req.content_type is not None:
            headers["Content-Type"] = req.content_type
        auth = authorization(req, SECRET if req.secret else b"no secret set", host)
        if auth is not None:
            headers["Authorization"] = auth
        # A path that starts "//" reads as a URL with a host: only raw bytes send it as it is.
        if req.raw_mutations or req.raw_seed or req.path.startswith("//"):
            req.sent = raw_bytes(req, headers)
            return await self._send_raw(server, req.sent)
        try:
            async with self.session.request(req.method, server.make_url(req.path), headers=headers,
                                            data=req.body, skip_auto_headers=("Content-Type",)) as resp:
                await resp.read()
                return resp.status
        except (ClientError, ValueError):  # the client library refused to send it
            return 0

    async def _send_raw(self, server: TestServer, data: bytes) -> int:
        """Write `data`, read the status line, close. A request the server is still waiting
        on the rest of gets an EOF after RAW_WAIT_S (then the server closes, unanswered: 0).
        Not waiting for the server to close: a mutated Connection header may keep it open."""
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(data)
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), RAW_WAIT_S)
            except asyncio.TimeoutError:
                writer.write_eof()
                line = await reader.readline()
        except (ConnectionError, OSError):
            return 0
        finally:
            writer.close()
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def _memory_dir() -> str | None:
    """tmpfs for the stand-ins' disk tiers where there is one: a move to disk fsyncs each
    chunk, and on a busy disk one fsync can outlast the hang bound (seen: 1.7 s)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


async def _open_session() -> ClientSession:
    """A session on the running loop that keeps no cookies (the requests carry their own)."""
    return ClientSession(cookie_jar=DummyCookieJar())


class ServerError(Exception):
    """The API answered 5xx."""

    def __init__(self, status: int, trace: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.trace = trace
