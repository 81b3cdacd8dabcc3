"""The Python twins of blocks.c: paged KV block-rows to and from a slab.

The byte layout: a chunk's KV is rows; row r lives in `kv[rows[r][0]]`, its
block b at byte `rows[r][1] + b * rows[r][2]`, each block-row `row_bytes`
long. The slab holds `slab_blocks` block-rows per row, row after row; block
id `ids[p]` of row r pairs with slab position `first + p` of that row, at
byte `(r * slab_blocks + first + p) * row_bytes`.

Both twins check every bound before the first byte moves and raise the same
exception types as the C functions: ValueError for a bad id, row, offset or
slab size, OverflowError for an id past int64, TypeError for a buffer that
must be writable and is not (or for an argument of the wrong kind). The KV
and the slab must not overlap.
"""

from __future__ import annotations

import operator
import struct

_ROW = struct.Struct("=qqq")  # buffer index, byte offset of block 0, block stride


def py_gather_blocks(kv, rows, row_bytes: int, ids, slab, first: int, slab_blocks: int) -> None:
    """Copy block-row `ids[p]` of every row into slab position `first + p`."""
    _copy_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks, to_slab=True)


def py_scatter_blocks(kv, rows, row_bytes: int, ids, slab, first: int, slab_blocks: int) -> None:
    """Copy slab position `first + p` of every row into its block-row `ids[p]`."""
    _copy_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks, to_slab=False)


def _copy_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks, to_slab):
    if row_bytes <= 0:
        raise ValueError("row_bytes must be > 0")
    bufs = [_bytes(b, not to_slab, "a kv buffer") for b in kv]
    ids = [operator.index(i) for i in ids]
    if any(not -(1 << 63) <= i < 1 << 63 for i in ids):
        raise OverflowError("block ids must fit in int64")
    if any(i < 0 for i in ids):
        raise ValueError("block ids must be >= 0")
    table = _rows(bufs, _bytes(rows, False, "rows"), row_bytes, max(ids, default=0), bool(ids))
    slab = _bytes(slab, to_slab, "the slab")
    if first < 0 or slab_blocks - first < len(ids):
        raise ValueError("ids do not fit in the slab's blocks from `first`")
    if len(slab) != len(table) * slab_blocks * row_bytes:
        raise ValueError("the slab must hold exactly len(rows) * slab_blocks * row_bytes bytes")
    for r, (buf, offset, stride) in enumerate(table):
        for p, block in enumerate(ids):
            at = (r * slab_blocks + first + p) * row_bytes
            kv_at = offset + block * stride
            if to_slab:
                slab[at:at + row_bytes] = buf[kv_at:kv_at + row_bytes]
            else:
                buf[kv_at:kv_at + row_bytes] = slab[at:at + row_bytes]


def _rows(bufs, table, row_bytes, max_id, any_ids):
    """(buffer, offset, stride) per row, each checked to hold every block-row."""
    if not len(table) or len(table) % _ROW.size:
        raise ValueError("rows must be a non-empty int64 buffer of (buffer, offset, stride) "
                         "triples")
    out = []
    for index, offset, stride in _ROW.iter_unpack(table):
        if not 0 <= index < len(bufs) or offset < 0 or stride < 0:
            raise ValueError("a row names no kv buffer, or has a negative offset or stride")
        if offset + (max_id * stride if any_ids else 0) + row_bytes > len(bufs[index]):
            raise ValueError("a block id reaches past the end of its kv buffer")
        out.append((bufs[index], offset, stride))
    return out


def _bytes(obj, writable: bool, what: str) -> memoryview:
    view = memoryview(obj).cast("B")
    if writable and view.readonly:
        raise TypeError(f"{what} must be a writable buffer")
    return view
