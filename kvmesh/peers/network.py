"""How a peer reaches the world: one endpoint of its own, and dials to others.

A `Network` binds a peer's `Endpoint` (a stream listener and a gossip socket
under one address) and dials other peers' listeners. The peer passes every
byte through these two, so the same peer runs over real sockets
(`TcpNetwork`) and, in tests, many peers in one process over
`kvmesh.peers.memory_network.MemoryNetwork`.

`TcpNetwork`: the TCP listener (data path) and the UDP gossip socket share
one port number, so a member's gossip address is its peer id whenever the
peer id's host is an IP literal. With `KVMESH_PORT=0` a free TCP port is
picked and the pair is retried on another if its UDP twin is taken. A peer
bound to a wildcard (`0.0.0.0`, `::`) is known to the others by
`advertise_host` (a pod IP from the downward API), else by what this host's
name resolves to. With `KVMESH_TLS_*` every stream, dialled or accepted, is
mutual TLS (`kvmesh.transfer.tls`); the TLS handshake of an accepted
connection runs in that connection's own task, never in the accept loop.

Everything here runs on the peer's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from typing import Protocol

from kvmesh.config import MeshConfig, TlsConfig
from kvmesh.errors import ConfigError, TransferError
from kvmesh.membership.edges import GossipTransport
from kvmesh.membership.udp import UdpTransport, format_addr
from kvmesh.transfer.streams import Stream, TcpStream
from kvmesh.transfer.tls import TlsStream, client_context, open_stream, server_context
from kvmesh.types import PeerAddress, PeerId



class Accepted(Protocol):
    """An inbound connection before its stream is open (a TLS handshake may
    be due): admitted or refused by its `remote` address first, then opened
    in the connection's own task, never in the accept loop."""

    remote: str  # the other end's IP; "" when unknown

    async def open(self, timeout_s: float) -> Stream:
        """The stream, within `timeout_s`; KvmeshError or TimeoutError if not."""

    def close(self) -> None:
        """Refuse it."""


class ReadyStream:
    """An `Accepted` whose stream needs no handshake of its own (plain TCP, memory, UCX)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.remote = getattr(stream, "remote", "")

    async def open(self, timeout_s: float) -> Stream:
        return self.stream

    def close(self) -> None:
        self.stream.close()


class TlsAccepted:
    """An accepted socket whose TLS handshake runs in `open`."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self._sock, self._ctx = sock, ctx
        try:
            self.remote = str(sock.getpeername()[0])
        except (OSError, IndexError):
            self.remote = ""

    async def open(self, timeout_s: float) -> Stream:
        try:
            return await TlsStream.accept(self._sock, self._ctx, timeout_s)
        except OSError as exc:
            raise TransferError(f"TLS accept: {exc}") from None

    def close(self) -> None:
        self._sock.close()

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
PORT_PAIR_ATTEMPTS = 16


class Endpoint(Protocol):
    peer_id: PeerId  # advertised host : port, how others dial us
    gossip_addr: str  # advertised IP literal : port, where others send datagrams
    gossip: GossipTransport

    async def accept(self) -> Accepted:
        """The next inbound connection; waits until one arrives. Raises OSError
        when accepting fails (out of descriptors, say); the caller retries."""

    def close(self) -> None:
        """Stop listening (streams already accepted stay open)."""


class Network(Protocol):
    async def open(self, mesh: MeshConfig, timeout_s: float) -> Endpoint:
        """Bind this peer's endpoint as `mesh` says; raises OSError or ConfigError."""

    async def dial(self, peer: PeerId, timeout_s: float) -> Stream:
        """A stream to `peer`'s listener, within `timeout_s`; raises TransferError."""


class TcpNetwork:
    """Real sockets: TCP (or TLS) for streams, UDP for gossip, one port number each peer."""

    def __init__(self, tls: TlsConfig | None = None) -> None:
        self._server_tls = server_context(tls)
        self._client_tls = client_context(tls)

    async def open(self, mesh: MeshConfig, timeout_s: float) -> "TcpEndpoint":
        host = await advertised_host(mesh, timeout_s)
        ip = await resolve_ip(host, timeout_s)
        for _ in range(PORT_PAIR_ATTEMPTS):
            sock = socket.create_server((mesh.host, mesh.port), reuse_port=False)
            port = sock.getsockname()[1]
            try:
                udp = await UdpTransport.open(mesh.host, port, timeout_s)
            except OSError:
                sock.close()
                if mesh.port:
                    raise
                continue
            sock.setblocking(False)
            return TcpEndpoint(sock, udp, PeerAddress(host, port).peer_id, format_addr(ip, port),
                               self._server_tls)
        raise OSError(f"no port on {mesh.host} is free for both TCP and UDP")

    async def dial(self, peer: PeerId, timeout_s: float) -> Stream:
        address = PeerAddress.parse(peer)
        return await open_stream(address.host, address.port, self._client_tls, timeout_s)


class TcpEndpoint:
    def __init__(self, sock: socket.socket, udp: UdpTransport, peer_id: PeerId,
                 gossip_addr: str, tls: ssl.SSLContext | None = None) -> None:
        self.sock = sock  # the TCP listener, non-blocking
        self.gossip = udp
        self.peer_id = peer_id
        self.gossip_addr = gossip_addr
        self._tls = tls

    async def accept(self) -> Accepted:
        conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
        if self._tls is not None:
            return TlsAccepted(conn, self._tls)
        try:
            return ReadyStream(TcpStream(conn))
        except BaseException:  # its options cannot be set (reset already): not leaked
            conn.close()
            raise

    def close(self) -> None:
        self.gossip.close()
        self.sock.close()


async def advertised_host(mesh: MeshConfig, timeout_s: float) -> str:
    if mesh.advertise_host:
        return mesh.advertise_host
    if mesh.host not in WILDCARD_HOSTS:
        return mesh.host
    guess = await resolve_ip(socket.gethostname(), timeout_s)
    if ipaddress.ip_address(guess).is_loopback:
        raise ConfigError(f"KVMESH_HOST={mesh.host} needs KVMESH_ADVERTISE_HOST: this host's "
                          f"name resolves to {guess}, which other hosts cannot reach")
    log.info("advertising %s (this host's name); set KVMESH_ADVERTISE_HOST to choose", guess)
    return guess


async def resolve_ip(host: str, timeout_s: float) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
        host, None, type=socket.SOCK_DGRAM), timeout_s)
    return infos[0][4][0]
