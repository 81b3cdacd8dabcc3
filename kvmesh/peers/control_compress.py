"""The control API's POST /compress: re-encode held chunks in place.

    POST /compress[?scope=mesh]   {"keys": [...] | "tokens": [...], "cache_salt"?, "codec": "fp8"}

Each chunk this peer holds raw is re-encoded with `codec` in every tier that
holds it (`ChunkStore.recode`): its CPU slot keeps its place with the
envelope's length and checksum, its disk file is rewritten. Skipped, with
the reason, and left as they were: chunks not held, already envelopes, in
flight ("busy": being stored, loaded, served, spilled or read back; never
torn), or that the codec would not shorten. Operator pins do not stop it:
they keep a chunk from eviction, and a recoded chunk stays held (and
pinned). A codec this peer must not write (unknown, a lossy one other than
its namespace's `lossy_codec`, any on a peer of opaque chunks) is a 400 and
changes nothing. `scope=mesh` asks every member the same (signed, as the
status fan-out is) and answers {"peers": {peer: answer or {"error"}}}.

The answer: totals, then per chunk (keys in hex)
    {"codec", "compressed": n, "skipped": n, "bytes_before", "bytes_after",
     "results": {key: {"result": "compressed"|"skipped", "reason"?, "bytes_before", "bytes_after"}}}
"""

from __future__ import annotations

from typing import Any, Sequence

from kvmesh.store.recode import RECODED, Recoded
from kvmesh.types import ChunkKey, key_hex

# A member's whole compress reply (64k keys' results); and the time a compress
# may take per chunk (one encode and copy; a file rewrite with a disk tier),
# on top of the transfer timeout, when members are asked.
MAX_REMOTE_COMPRESS_BYTES = 16 << 20
COMPRESS_S_PER_CHUNK = 0.05


def compress_answer(codec: str, keys: Sequence[ChunkKey], outcomes: Sequence[Recoded]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for key, done in zip(keys, outcomes):
        entry: dict[str, Any] = {"result": "compressed" if done.outcome == RECODED else "skipped"}
        if done.outcome != RECODED:
            entry["reason"] = done.outcome
        entry["bytes_before"], entry["bytes_after"] = done.bytes_before, done.bytes_after
        results[key_hex(key)] = entry
    compressed = sum(1 for r in results.values() if r["result"] == "compressed")
    return {"codec": codec, "compressed": compressed, "skipped": len(results) - compressed,
            "bytes_before": sum(r["bytes_before"] for r in results.values()),
            "bytes_after": sum(r["bytes_after"] for r in results.values()),
            "results": results}


def mesh_timeout_s(transfer_timeout_s: float, chunks: int) -> float:
    """How long members are given to answer a compress of `chunks` chunks."""
    return transfer_timeout_s + chunks * COMPRESS_S_PER_CHUNK
