"""Byte-level mutations shared by the fuzz surfaces: pure functions of a seeded `random.Random`.

Each takes bytes and returns new bytes; none keeps state, so a failing input
is reproduced from its bytes alone (the harness saves those, not the seed).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import pairwise

# Values that sit on the edges of the checks a parser makes.
INTERESTING_U8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_LENGTHS = (0, 1, 2, 15, 16, 17, 255, 256, 4095, 4096, 4097, 65535, 65536,
                       (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (1 << 30), (1 << 30) + 1,
                       (1 << 31) - 1, (1 << 32) - 1, (1 << 63) - 1, (1 << 64) - 1)
# msgpack heads that claim many items or bytes: array16/32, map16/32, bin32, str32.
OVERSIZED_HEADS = (b"\xdc\xff\xff", b"\xdd\x00\x01\x00\x00", b"\xdd\xff\xff\xff\xff",
                   b"\xde\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\xc6\x7f\xff\xff\xff",
                   b"\xdb\x00\x10\x00\x00", b"\xdc\x10\x01", b"\xdc\x00\x81")


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice(INTERESTING_U8 + (rng.randrange(256),))
    return bytes(out)


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def delete_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 16):]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randint(0, max(0, len(data) - 1))]


def duplicate_run(rng: random.Random, data: bytes) -> bytes:
    """A run of the input copied elsewhere into it (repeats a field or an item)."""
    if not data:
        return data
    start = rng.randrange(len(data))
    run = data[start:start + rng.randint(1, 64)]
    at = rng.randint(0, len(data))
    return data[:at] + run * rng.randint(1, 4) + data[at:]


def oversized_head(rng: random.Random, data: bytes) -> bytes:
    """A msgpack head claiming a huge count or length, written over or into the input."""
    head = rng.choice(OVERSIZED_HEADS)
    at = rng.randint(0, len(data))
    if rng.random() < 0.5:
        return data[:at] + head + data[at + len(head):]
    return data[:at] + head + data[at:]


def splice(rng: random.Random, a: bytes, b: bytes) -> bytes:
    """The start of `a` joined to the end of `b`."""
    return a[:rng.randint(0, len(a))] + b[rng.randint(0, len(b)):]


BYTE_MUTATIONS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    flip_bits, set_byte, insert_bytes, delete_bytes, truncate, duplicate_run, oversized_head)


def mutate(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    """`data` after 1-3 random byte mutations (or `rounds`)."""
    for _ in range(rounds if rounds is not None else rng.randint(1, 3)):
        data = rng.choice(BYTE_MUTATIONS)(rng, data)
    return data


def random_splits(rng: random.Random, size: int) -> list[int]:
    """Cut points splitting `size` bytes into pieces: one piece, single bytes, or random."""
    roll = rng.random()
    if size <= 1 or roll < 0.2:
        return []
    if roll < 0.3 and size <= 4096:
        return list(range(1, size))
    return sorted(rng.sample(range(1, size), min(size - 1, rng.randint(1, 8))))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in pairwise([0, *cuts, len(data)])]
