"""What this peer tells others in handshakes, and what it learns of theirs.

`Contacts` speaks for this peer: the HELLO each outgoing connection opens
with, the INFO it tells a server once both proofs are done, and the identity
its own server tells connecting peers (peer id, namespace, host id, UCX and
control ports). Our pool we share only as a server, through our own door, so
the INFO we send as a client carries no pool token.

It also keeps the contacts members give of themselves: the control API URL
each one's handshake told (outgoing: `note_control_port`; incoming, once the
member proved its peer id: `on_member`), and it checks a claimed identity by
asking its owner, over our own connection to it, whether it opened the
connection (`verify`, one VOUCH round trip; see `kvmesh.transfer.server`).

Loop thread. The ports are 0 until their listeners open.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence

from kvmesh.config import TlsConfig
from kvmesh.peers.serving import ServingIdentity
from kvmesh.transfer import frames as f
from kvmesh.transfer import handshake
from kvmesh.transfer.client import PeerClient
from kvmesh.transfer.shm import host_id
from kvmesh.transfer.tls import control_scheme
from kvmesh.types import PeerAddress, PeerId

# Control URLs kept for other peers: members come and go (`forget` on leave),
# and identities that never became members must not grow the table for ever.
MAX_CONTROL_URLS = 4096

# dial(peer) -> our connection to that member, dialed now if there is none.
DialFn = Callable[[PeerId], Awaitable[PeerClient]]


class Contacts:
    def __init__(self, peer_id: PeerId, namespace: bytes, tls: TlsConfig | None, timeout_s: float,
                 dial: DialFn, learn: Callable[[PeerId], None]) -> None:
        """`dial` reaches members (the connection pool); `learn(peer)` tells
        gossip of a member that reached us directly."""
        self.peer_id = peer_id
        self.namespace = namespace
        self.host_id = host_id()
        self._tls = tls
        self._timeout_s = timeout_s
        self._dial = dial
        self._learn = learn
        self._ucx_port = 0
        self._control_port = 0
        self._control_urls: dict[PeerId, str] = {}

    # ---- what we tell others --------------------------------------------------

    def identity(self) -> ServingIdentity:
        return ServingIdentity(self.peer_id, self.namespace, self.host_id, self._ucx_port,
                               self._control_port)

    def hello(self) -> f.Hello:
        """A new HELLO (a fresh nonce each call) for one outgoing connection."""
        return f.Hello(self.peer_id, f.MIN_PROTOCOL_VERSION, f.PROTOCOL_VERSION, self.namespace,
                       "", "", handshake.new_nonce())

    def info(self) -> f.Info:
        """What we tell a server once both proofs are done (see the module docstring)."""
        return f.Info(self.host_id, self._ucx_port, self._control_port, b"")

    def note_ucx_port(self, port: int) -> None:
        """Our UCX listener opened on `port`."""
        self._ucx_port = port

    def note_own_control_url(self, url: str) -> None:
        """Our control API listens at `url` (its port goes into handshakes)."""
        self._control_port = int(url.rsplit(":", 1)[1])
        self._control_urls[self.peer_id] = url

    # ---- what we learn of members ----------------------------------------------

    async def verify(self, claimed: PeerId, nonce: bytes) -> bool:
        """Ask `claimed`, over our own connection to it, whether it opened the
        connection whose HELLO carried `nonce`."""
        client = await self._dial(claimed)
        reply = await client.request(lambda rid: f.Vouch(rid, nonce), self._timeout_s)
        return reply.mine

    def on_member(self, peer: PeerId, info: f.Info) -> None:
        """A member proved its peer id on an inbound connection."""
        self._learn(peer)
        self.note_control_port(peer, info.control_port)

    def note_control_port(self, peer: PeerId, port: int) -> None:
        """`peer`'s handshake told its control port (0: it runs no control API;
        anything but a TCP port, from a wire integer, is ignored)."""
        if 0 < port < 65536 and (peer in self._control_urls
                                 or len(self._control_urls) < MAX_CONTROL_URLS):
            host = PeerAddress.parse(peer).host
            scheme = control_scheme(self._tls)
            self._control_urls[peer] = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def forget(self, peer: PeerId) -> None:
        """`peer` left the mesh (or died): its control URL goes with it."""
        if peer != self.peer_id:
            self._control_urls.pop(peer, None)

    async def control_urls(self, peers: Sequence[PeerId]) -> dict[PeerId, str]:
        """Control API base URLs of these members; dials (bounded) those whose
        URL we lack, since their handshake tells it. Unknown ones are left out."""
        unknown = [p for p in peers if p not in self._control_urls and p != self.peer_id]
        await asyncio.gather(*(self._dial(p) for p in unknown), return_exceptions=True)
        return {p: self._control_urls[p] for p in peers if p in self._control_urls}
