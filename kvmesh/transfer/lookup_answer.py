"""Fitting a directory answer into one HOLDERS frame.

A LOOKUP may ask about MAX_KEYS_PER_REQUEST keys, and a key may have many
holders with long names: the whole answer could outgrow the frame's header
cap, and an answer the codec refuses to encode used to close the connection.
Instead the answer is trimmed until it fits: first to MAX_HOLDERS_PER_KEY
holders a key, then fewer, down to one, and past that, keys from the end of
the list lose their holders altogether (for the asker, the prefix ends
there: a shorter hit, never a wrong one). Pure.
"""

from __future__ import annotations

from typing import Sequence

import msgpack

from kvmesh.transfer import frames as f

MAX_HOLDERS_PER_KEY = 8  # a puller tries a few holders at most
HEADER_SLACK = 64  # the frame's other fields and msgpack's array headers

Holders = tuple[str, ...]


def fit_holders(answer: Sequence[Holders], budget: int = f.MAX_HEADER_BYTES - HEADER_SLACK
                ) -> tuple[Holders, ...]:
    """`answer` (one holder tuple per key) trimmed to encode within `budget` bytes."""
    per_key = MAX_HOLDERS_PER_KEY
    while True:
        trimmed = tuple(tuple(h[:per_key]) for h in answer)
        if _size(trimmed) <= budget:
            return trimmed
        if per_key == 1:
            break
        per_key = max(1, per_key // 2)
    keep = list(trimmed)
    size = _size(trimmed)
    while keep and size > budget:  # drop the tail's holders, cheapest first to compute
        last = keep.pop()
        size -= len(msgpack.packb(last)) - 1  # an empty tuple still takes one byte
    return tuple(keep) + ((),) * (len(answer) - len(keep))


def _size(answer: tuple[Holders, ...]) -> int:
    return len(msgpack.packb(answer))
