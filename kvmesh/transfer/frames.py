"""Frame types of the kvmesh wire protocol.

Every frame is a frozen dataclass. On the wire a frame is a fixed 16-byte
prefix, a msgpack header map, and for CHUNK frames a raw payload that never
passes through msgpack.

ONLY APPEND TO `FrameType`: the values are part of the protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# 2: CHUNK_REFS (a shared-memory pull answered in batches).
# 3: INFO after AUTH (nothing about a host or its pool before it); VOUCH binds
#    a claimed peer id; same-host pools are handed over as file descriptors
#    (kvmesh.transfer.pool_door), never by path; shared leases get ids from the
#    holder. 1 and 2 trusted what came before AUTH, so 3 is also the minimum.
PROTOCOL_VERSION = 3
MIN_PROTOCOL_VERSION = 3

# Hard caps, checked before anything is allocated.
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 30
MAX_KEYS_PER_REQUEST = 4096
MAX_INFLIGHT_REQUESTS = 256
MAX_PEER_ID_BYTES = 255  # "host:port"; a DNS name is at most 253 bytes


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    AUTH = 3
    ERROR = 4
    PING = 5
    PONG = 6
    LOOKUP = 7          # directory query: which peers hold these keys
    HOLDERS = 8         # reply to LOOKUP
    ADVERTISE = 9       # one-way: the sender now holds these keys
    WITHDRAW = 10       # one-way: the sender no longer holds these keys
    PULL = 11           # send me these chunks
    CHUNK = 12          # one chunk, payload follows the header
    MISS = 13           # one chunk of a PULL that the holder does not have
    CHUNK_REF = 14      # one chunk, to be copied from the holder's shared pool
    RELEASE = 15        # the puller is done with these CHUNK_REF slots
    PREFIX = 16         # ask a peer for the longest mesh-wide prefix of these keys
    PREFIX_REPLY = 17
    MEMBERS = 18        # exchange member lists (request and reply)
    FETCH = 19          # please pull these keys from `holder` (used to move chunks)
    FETCHED = 20        # reply to FETCH: how many arrived
    CHUNK_REFS = 21     # many CHUNK_REFs of one PULL in one frame (protocol >= 2)
    INFO = 22           # after AUTH, each side: its host, ports and pool token (protocol >= 3)
    VOUCH = 23          # did you open a connection to me with this HELLO nonce? (protocol >= 3)
    VOUCHED = 24        # reply to VOUCH


@dataclass(frozen=True, slots=True)
class Hello:
    peer_id: str  # "" for a client that is not a mesh member (an engine's lookups)
    min_version: int
    max_version: int
    namespace: bytes
    host_id: str  # unused since protocol 3 (sent before AUTH): ""
    shm_path: str  # unused since protocol 3: ""
    nonce: bytes
    ucx_port: int = 0  # unused since protocol 3 (see INFO): 0
    control_port: int = 0  # unused since protocol 3: 0


@dataclass(frozen=True, slots=True)
class Welcome:
    peer_id: str
    version: int
    namespace: bytes
    host_id: str  # unused since protocol 3: ""
    shm_path: str  # unused since protocol 3: ""
    nonce: bytes
    proof: bytes  # HMAC over both nonces and both peer ids; empty when no secret is set
    ucx_port: int = 0  # unused since protocol 3: 0
    control_port: int = 0  # unused since protocol 3: 0


@dataclass(frozen=True, slots=True)
class Auth:
    proof: bytes


@dataclass(frozen=True, slots=True)
class Error:
    request_id: int
    message: str


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: int


@dataclass(frozen=True, slots=True)
class Pong:
    request_id: int


@dataclass(frozen=True, slots=True)
class Lookup:
    request_id: int
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Holders:
    request_id: int
    holders: tuple[tuple[str, ...], ...]  # one tuple of peer ids per key


@dataclass(frozen=True, slots=True)
class Advertise:
    holder: str
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Withdraw:
    holder: str
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Pull:
    request_id: int
    keys: tuple[bytes, ...]
    shared: bool = False  # answer with CHUNK_REF instead of payloads


@dataclass(frozen=True, slots=True)
class Chunk:
    request_id: int
    index: int  # position in the PULL's key list
    key: bytes
    checksum: int  # xxh3_64 of the payload
    length: int
    payload: object = None  # bytes-like on send; filled by the receiver's sink


@dataclass(frozen=True, slots=True)
class Miss:
    request_id: int
    index: int
    key: bytes


@dataclass(frozen=True, slots=True)
class ChunkRef:
    request_id: int
    index: int
    key: bytes
    checksum: int
    length: int
    offset: int  # byte offset in the holder's shared pool file


@dataclass(frozen=True, slots=True)
class ChunkRefs:
    """CHUNK_REF for several chunks of one PULL; the tuples run in parallel.

    One frame per batch instead of one per chunk: the puller decodes and
    dispatches once, and the holder writes once.
    """

    request_id: int
    indices: tuple[int, ...]
    keys: tuple[bytes, ...]
    checksums: tuple[int, ...]
    lengths: tuple[int, ...]
    offsets: tuple[int, ...]
    lease: int = 0  # what RELEASE names to unpin these (the holder picks it)

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(self.request_id, *ref) for ref in
                zip(self.indices, self.keys, self.checksums, self.lengths, self.offsets)]


@dataclass(frozen=True, slots=True)
class Release:
    lease: int  # the holder's lease id, from CHUNK_REFS (protocol >= 3)


@dataclass(frozen=True, slots=True)
class Prefix:
    request_id: int
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PrefixReply:
    request_id: int
    matched: int


@dataclass(frozen=True, slots=True)
class Members:
    request_id: int
    peers: tuple[str, ...]
    reply: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    request_id: int
    keys: tuple[bytes, ...]
    holder: str


@dataclass(frozen=True, slots=True)
class Fetched:
    request_id: int
    count: int


@dataclass(frozen=True, slots=True)
class Info:
    """What a peer tells the other once the secret proofs are done (both ways)."""

    host_id: str  # same value: maybe the same host (proven only through the pool door)
    ucx_port: int  # 0: no UCX listener
    control_port: int  # 0: no control API
    pool_token: bytes  # b"": no pool to share; else what the pool door asks to see


@dataclass(frozen=True, slots=True)
class Vouch:
    request_id: int
    nonce: bytes  # the HELLO nonce of a connection that claims to come from the one asked


@dataclass(frozen=True, slots=True)
class Vouched:
    request_id: int
    mine: bool  # the one asked opened that connection, to the asker

Frame = (Hello | Welcome | Auth | Error | Ping | Pong | Lookup | Holders | Advertise
         | Withdraw | Pull | Chunk | Miss | ChunkRef | Release | Prefix | PrefixReply | Members
         | Fetch | Fetched | ChunkRefs | Info | Vouch | Vouched)

FRAME_CLASSES: dict[FrameType, type] = {
    FrameType.HELLO: Hello, FrameType.WELCOME: Welcome, FrameType.AUTH: Auth,
    FrameType.ERROR: Error, FrameType.PING: Ping, FrameType.PONG: Pong,
    FrameType.LOOKUP: Lookup, FrameType.HOLDERS: Holders,
    FrameType.ADVERTISE: Advertise, FrameType.WITHDRAW: Withdraw,
    FrameType.PULL: Pull, FrameType.CHUNK: Chunk, FrameType.MISS: Miss,
    FrameType.CHUNK_REF: ChunkRef, FrameType.RELEASE: Release,
    FrameType.PREFIX: Prefix, FrameType.PREFIX_REPLY: PrefixReply,
    FrameType.MEMBERS: Members, FrameType.FETCH: Fetch, FrameType.FETCHED: Fetched,
    FrameType.CHUNK_REFS: ChunkRefs, FrameType.INFO: Info, FrameType.VOUCH: Vouch,
    FrameType.VOUCHED: Vouched,
}
FRAME_TYPES: dict[type, FrameType] = {cls: t for t, cls in FRAME_CLASSES.items()}
# The one frame type that answers each request (ERROR answers any of them).
REPLY_TO: dict[type, type] = {Lookup: Holders, Ping: Pong, Prefix: PrefixReply, Fetch: Fetched,
                              Members: Members, Vouch: Vouched}
