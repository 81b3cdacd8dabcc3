"""SWIM's wire format and its sans-IO codec: bytes in, messages out, and back.

A datagram is one msgpack array:
    [version, kind, seq, sender, target, target_addr, [entry, ...]]
and an entry is [state, incarnation, peer, addr, origin]. Later versions may
append fields to either; readers ignore what they do not know.

Pure functions and immutable values: no socket, no clock, no state, so any
thread may call them. `decode` takes untrusted bytes, checks every named cap
before msgpack allocates, and raises `RemoteProtocolError` for anything
malformed. `encode` trusts its caller to stay under `MAX_DATAGRAM_BYTES`
(`outbox` sizes every datagram it builds).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Sequence

import msgpack

from kvmesh.errors import RemoteProtocolError
from kvmesh.membership.states import MAX_INCARNATION, MemberState

VERSION = 1
MIN_VERSION = 1
MAX_DATAGRAM_BYTES = 1400  # we never send more: one Ethernet frame, no fragments
MAX_RECV_BYTES = 65507  # anything longer is dropped unread
MAX_ENTRIES = 128  # entries per datagram
MAX_NAME_BYTES = 255  # peer ids and addresses
MAX_SEQ = (1 << 32) - 1
HEADER_BYTES = 32  # array headers, version, kind, seq and string headers, rounded up


class Kind(IntEnum):
    """ONLY APPEND TO THIS LIST: the values are part of the protocol."""

    PING = 1
    ACK = 2
    PING_REQ = 3  # please ping `target` at `target_addr` and forward its ack
    NACK = 4  # a relay's ping went unanswered (Lifeguard: the requester is fine)
    GOSSIP = 5  # entries only
    SYNC = 6  # here is my state; send me yours
    SYNC_REPLY = 7  # here is my state


class Entry(NamedTuple):
    """One claim about one member. A NamedTuple: immutable and cheap at 1,000 peers."""

    state: int
    incarnation: int
    peer: str
    addr: str
    origin: str  # who suspects (suspect) or who leaves (left); "" otherwise


class Message(NamedTuple):
    """One decoded datagram; `entries` are already checked against the caps."""

    kind: Kind
    seq: int
    sender: str
    target: str
    target_addr: str
    entries: tuple[Entry, ...]


def pack_entry(entry: Entry) -> bytes:
    """An entry's bytes, packed once and then queued or sent as they are."""
    return msgpack.packb(tuple(entry))


def encode(kind: Kind, seq: int, sender: str, target: str = "", target_addr: str = "",
           entries: Sequence[bytes] = ()) -> bytes:
    """One datagram; `entries` are already packed (see `pack_entry`)."""
    head = msgpack.packb((VERSION, int(kind), seq, sender, target, target_addr))
    n = len(entries)
    count = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    # head starts with fixarray(6); the entries array makes it seven fields.
    return b"\x97" + head[1:] + count + b"".join(entries)


def decode(data: bytes) -> Message:
    """Parse one datagram; raises RemoteProtocolError for anything malformed."""
    if len(data) > MAX_RECV_BYTES:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes exceeds {MAX_RECV_BYTES}")
    try:
        obj = msgpack.unpackb(data, use_list=False, raw=False, max_str_len=MAX_NAME_BYTES,
                              max_bin_len=0, max_array_len=MAX_ENTRIES, max_map_len=0,
                              max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for bad input
        raise RemoteProtocolError(f"undecodable datagram: {exc}") from None
    if type(obj) is not tuple or len(obj) < 7:
        raise RemoteProtocolError("datagram is not a 7-field array")
    version, kind, seq, sender, target, target_addr, raw = obj[:7]
    if type(version) is not int or version < MIN_VERSION:
        raise RemoteProtocolError(f"unsupported version {version!r}")
    if type(kind) is not int or kind not in _KINDS:
        raise RemoteProtocolError(f"unknown message kind {kind!r}")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise RemoteProtocolError("bad sequence number")
    if not (is_name(sender) and type(target) is str and type(target_addr) is str):
        raise RemoteProtocolError("bad sender or target")
    if type(raw) is not tuple:
        raise RemoteProtocolError("entries are not an array")
    return Message(Kind(kind), seq, sender, target, target_addr, tuple(map(_entry, raw)))


def is_name(value: object) -> bool:
    """A non-empty string: what a peer id or an address must be."""
    return type(value) is str and value != ""


_KINDS = frozenset(int(k) for k in Kind)
_STATES = frozenset(int(s) for s in MemberState)


def _entry(raw: object) -> Entry:
    if type(raw) is not tuple or len(raw) < 5:
        raise RemoteProtocolError("entry is not a 5-field array")
    state, inc, peer, addr, origin = raw[:5]
    if (type(state) is not int or state not in _STATES or type(inc) is not int
            or not 0 <= inc <= MAX_INCARNATION or type(peer) is not str or not peer
            or type(addr) is not str or not addr or type(origin) is not str):
        raise RemoteProtocolError(f"bad entry {raw!r}")
    return Entry(state, inc, peer, addr, origin)
