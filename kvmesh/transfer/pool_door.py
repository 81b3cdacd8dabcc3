"""Handing a same-host peer our CPU pool: a file descriptor over a Unix socket.

Same-host pulls copy straight out of the holder's pool. Nothing about the pool
crosses the network: no path, no size. Instead each holder keeps a *door*, a
Unix socket at `door_path(run_dir, peer_id)`. The puller computes that path
itself, from its own run dir and the peer id it dialled, never from a frame.
The run dir is private to the user (`private_dir`), so no other user can
plant a socket there.

Once a TCP handshake has authenticated both sides, the holder's INFO frame
carries a pool token issued for that one connection (`PoolDoor.issue`): an
8-byte id and a 24-byte key. The puller knocks on the door, and both prove
they know the key without sending it:

    puller -> holder   id (8) | nonce (16) | HMAC(key, "kvmesh-pool/puller" | nonce)
    holder -> puller   HMAC(key, "kvmesh-pool/holder" | nonce) | pool size (u64 BE)
                       + SCM_RIGHTS: a read-only descriptor of the sealed pool

Reaching the socket at all proves the puller is on this host (same
filesystem). The holder then marks the token's connection as same-host
(`on_proven`), and only such connections get shared pulls. The puller checks
the descriptor before mapping it (`slab_pool.map_shared_fd`: a regular file of
the announced size, its size sealed so the mapping can never fault). Every
step is bounded by the timeout; any failure just means the pair uses its TCP
connection for pulls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import mmap
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Callable

import xxhash

from kvmesh.errors import ConfigError, TransferError
from kvmesh.store.slab_pool import map_shared_fd
from kvmesh.types import PeerId

log = logging.getLogger(__name__)

TOKEN_ID_BYTES = 8
TOKEN_KEY_BYTES = 24
TOKEN_BYTES = TOKEN_ID_BYTES + TOKEN_KEY_BYTES
NONCE_BYTES = 16
MAC_BYTES = 32
REQUEST_BYTES = TOKEN_ID_BYTES + NONCE_BYTES + MAC_BYTES
GRANT = struct.Struct(f">{MAC_BYTES}sQ")
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
MAX_PENDING_KNOCKS = 64  # door connections served at once; more are refused


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if needed, and check that only this user can
    use it: a directory, not a link, owned by us, no access for others.
    ConfigError naming the setting otherwise."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"KVMESH_RUN_DIR {path} is not a directory (a link?)")
    if info.st_uid != os.getuid():
        raise ConfigError(f"KVMESH_RUN_DIR {path} belongs to uid {info.st_uid}, not to this user "
                          f"({os.getuid()}): choose a directory of your own")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def door_path(run_dir: Path, peer_id: PeerId) -> Path | None:
    """Where the peer `peer_id` of this host keeps its door (hex only: no
    part of the path comes from the peer id's characters); None when the run
    dir is too long for a Unix socket path (then no pool is shared: pulls go
    over TCP)."""
    path = run_dir / f"pool-{xxhash.xxh3_64_hexdigest(peer_id.encode())}.sock"
    return path if len(os.fsencode(path)) <= MAX_UNIX_PATH else None


def _mac(key: bytes, role: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"kvmesh-pool/" + role + b"|" + nonce, hashlib.sha256).digest()


class PoolDoor:
    """The holder's side. `share()` returns (a new read-only pool fd, its size).

    Loop thread: `open`, `issue`, `revoke`, `close`.
    """

    def __init__(self, path: Path, share: Callable[[], tuple[int, int]], timeout_s: float) -> None:
        self.path = path
        self._share = share
        self._timeout_s = timeout_s
        self._tokens: dict[bytes, tuple[bytes, Callable[[], None]]] = {}  # id -> (key, on_proven)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._knocks: set[asyncio.Task] = set()
        self.granted = 0
        self.refused = 0

    async def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink(missing_ok=True)  # a crashed run's socket, in our private dir
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    def issue(self, on_proven: Callable[[], None]) -> bytes:
        """A token for one authenticated connection; `on_proven()` runs (on the
        loop) when a puller on this host shows it."""
        token = os.urandom(TOKEN_BYTES)
        self._tokens[token[:TOKEN_ID_BYTES]] = (token[TOKEN_ID_BYTES:], on_proven)
        return token

    def revoke(self, token: bytes) -> None:
        self._tokens.pop(token[:TOKEN_ID_BYTES], None)

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._knocks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self.path.unlink(missing_ok=True)
        self._tokens.clear()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors, say: wait, do not die
                log.warning("pool door: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._knocks) >= MAX_PENDING_KNOCKS:
                conn.close()
                self.refused += 1
                continue
            task = loop.create_task(self._answer(conn))
            self._knocks.add(task)
            task.add_done_callback(self._knocks.discard)

    async def _answer(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            request = await asyncio.wait_for(_recv_exact(conn, REQUEST_BYTES), self._timeout_s)
            grant = self._check(request)
            if grant is None:
                self.refused += 1
                return
            mac, on_proven = grant
            fd, size = self._share()
            try:
                # One small message on a fresh socket: the send buffer is empty.
                conn.sendmsg([GRANT.pack(mac, size)],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
            finally:
                os.close(fd)
            self.granted += 1
            on_proven()
        except (OSError, asyncio.TimeoutError, TransferError) as exc:
            self.refused += 1
            log.debug("pool door: %s", exc)
        finally:
            conn.close()

    def _check(self, request: bytes) -> tuple[bytes, Callable[[], None]] | None:
        token_id, rest = request[:TOKEN_ID_BYTES], request[TOKEN_ID_BYTES:]
        nonce, mac = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
        issued = self._tokens.get(token_id)
        if issued is None:
            return None
        key, on_proven = issued
        if not hmac.compare_digest(mac, _mac(key, b"puller", nonce)):
            return None
        return _mac(key, b"holder", nonce), on_proven


async def _recv_exact(conn: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        part = await loop.sock_recv(conn, n - len(data))
        if not part:
            raise TransferError("the pool door's caller hung up")
        data += part
    return data


async def knock(path: Path | None, token: bytes, timeout_s: float) -> mmap.mmap:
    """The puller's side: the holder's pool, mapped read-only, or TransferError.

    Runs the exchange on a worker thread (a blocking socket under a timeout:
    once per connection, and SCM_RIGHTS is simplest that way).
    """
    if len(token) != TOKEN_BYTES:
        raise TransferError("the holder's pool token has the wrong size")
    if path is None:
        raise TransferError("the run dir is too long for a Unix socket path")
    try:
        return await asyncio.to_thread(_knock, path, token, timeout_s)
    except (OSError, ValueError) as exc:
        raise TransferError(f"pool door {path.name}: {exc}") from None


def _knock(path: Path, token: bytes, timeout_s: float) -> mmap.mmap:
    key, nonce = token[TOKEN_ID_BYTES:], os.urandom(NONCE_BYTES)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(token[:TOKEN_ID_BYTES] + nonce + _mac(key, b"puller", nonce))
        data, fds = b"", []
        while len(data) < GRANT.size:
            part, got, _flags, _addr = socket.recv_fds(sock, GRANT.size - len(data), 1)
            fds += got
            if not part:
                break
            data += part
    try:
        if len(data) != GRANT.size or len(fds) != 1:
            raise ValueError("the holder did not grant its pool")
        mac, size = GRANT.unpack(data)
        if not hmac.compare_digest(mac, _mac(key, b"holder", nonce)):
            raise ValueError("the door's answer does not prove the token: not the holder")
        mapping = map_shared_fd(fds[0])
        if len(mapping) != size:
            mapping.close()
            raise ValueError(f"the pool is {len(mapping)} bytes, the holder said {size}")
        return mapping
    finally:
        for fd in fds:
            os.close(fd)
