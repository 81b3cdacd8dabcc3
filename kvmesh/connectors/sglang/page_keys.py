"""SGLang page keys -> kvmesh chunk keys.

SGLang names each full page of KV by a hex sha256 chained over the page's
token ids (seeded by the request's cache salt / extra key). That string says
nothing about the model, TP rank, host layout or page size, so on its own two
different engines' pages would collide. Each page key is therefore hashed
together with the 16-byte digest of this engine's `KeyNamespace`:

    chunk_key = H(namespace_digest || page_key as UTF-8)

H is xxh3-128, or blake2b-128 keyed with the mesh secret when one is set (as
in `kvmesh.hashring.keys`). The digest has a fixed length, so the pair is
never ambiguous, and namespaces that differ in any field give disjoint keys.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import xxhash

from kvmesh.hashring.keys import KeyNamespace
from kvmesh.types import ChunkKey


def page_chunk_key(namespace_digest: bytes, page_key: str, secret: bytes | None = None) -> ChunkKey:
    """The kvmesh key of one SGLang page key within one namespace."""
    data = namespace_digest + page_key.encode("utf-8")
    if secret:
        mac_key = hashlib.sha256(secret).digest()
        return ChunkKey(hashlib.blake2b(data, digest_size=16, key=mac_key).digest())
    return ChunkKey(xxhash.xxh3_128_digest(data))


class PageKeyMap:
    """`page_chunk_key` bound to one namespace; pure and thread-safe."""

    def __init__(self, namespace: KeyNamespace, secret: bytes | None = None) -> None:
        self.namespace = namespace
        self._digest = namespace.digest()
        self._secret = secret

    def __call__(self, page_keys: Sequence[str]) -> list[ChunkKey]:
        return [page_chunk_key(self._digest, k, self._secret) for k in page_keys]
