"""Chained, namespaced chunk keys.

    k_0 = H(namespace bytes)
    k_i = H(k_{i-1} || tokens of chunk i as int32 little-endian)

H is xxh3-128 by default, or blake2b-128 keyed with the mesh secret for
deployments whose tenants must not be able to forge each other's keys. Keys are
the same on every process, host and Python version: never `hash()`, never a
random seed. Full chunks get keys; a prompt's trailing partial chunk gets one
only when the caller asks (`tail_multiple`: whole engine blocks of it), chained
like the others, so it never equals a full chunk's key.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import msgpack
import numpy as np
import xxhash

from kvmesh import native
from kvmesh.types import ChunkKey

KV_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class KeyNamespace:
    """Everything that makes two engines' KV incompatible.

    Two namespaces that differ in any field give disjoint key spaces.
    """

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    chunk_tokens: int
    kv_layout: str
    tp_rank: int = 0
    tp_size: int = 1
    format_version: int = KV_FORMAT_VERSION
    cache_salt: str = ""
    # The lossy codec this engine's KV may be kept in ("fp8", ...; see
    # kvmesh.codecs), "" for exact KV. Lossy and exact engines so never share
    # a key, and a decoder accepts a lossy envelope only if it names this codec.
    lossy_codec: str = ""

    def encode(self) -> bytes:
        """A canonical byte string: msgpack of the fields in sorted order.

        `lossy_codec` is left out when empty, so exact namespaces keep the
        keys they had before the field existed.
        """
        fields = asdict(self)
        if not self.lossy_codec:
            del fields["lossy_codec"]
        return msgpack.packb(sorted(fields.items()), use_bin_type=True)

    def digest(self) -> bytes:
        return xxhash.xxh3_128_digest(self.encode())

    def with_salt(self, cache_salt: str) -> "KeyNamespace":
        fields = asdict(self)
        fields["cache_salt"] = cache_salt
        return KeyNamespace(**fields)


def _keyed_blake2b(secret: bytes) -> Callable[[bytes], bytes]:
    key = hashlib.sha256(secret).digest()  # blake2b keys are at most 64 bytes

    def digest(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=16, key=key).digest()

    return digest


# chain(root, int32 buffer, chunk_bytes, n) -> n chained keys, as native.chain_keys.
ChainFn = Callable[[bytes, np.ndarray, int, int], list]


def _python_chain(digest: Callable[[bytes], bytes]) -> ChainFn:
    """The chain for any digest (the keyed one has no C version: it is the rare case)."""

    def chain(root: bytes, buf: np.ndarray, chunk_bytes: int, n: int) -> list[bytes]:
        view = memoryview(buf).cast("B")
        prev, out = root, []
        for i in range(n):
            prev = digest(prev + view[i * chunk_bytes:(i + 1) * chunk_bytes])
            out.append(prev)
        return out

    return chain


class ChunkHasher:
    """Turns token ids into chained chunk keys for one namespace."""

    def __init__(self, namespace: KeyNamespace, secret: bytes | None = None) -> None:
        self.namespace = namespace
        self.chunk_tokens = namespace.chunk_tokens
        digest = _keyed_blake2b(secret) if secret else xxhash.xxh3_128_digest
        self._root = digest(namespace.encode())
        # xxh3 chains run in C (~0.1 us a chunk instead of ~1 us of Python per chunk).
        self._chain: ChainFn = _python_chain(digest) if secret else native.chain_keys

    @property
    def root(self) -> bytes:
        return self._root

    def tail_tokens(self, n_tokens: int, multiple: int) -> int:
        """Tokens of an `n_tokens` prompt's tail chunk (see `keys` and the
        module's `tail_tokens`)."""
        return tail_tokens(n_tokens, self.chunk_tokens, multiple)

    def keys(self, tokens: Sequence[int] | np.ndarray, max_chunks: int | None = None,
             tail_multiple: int = 0) -> list[ChunkKey]:
        """Keys of every full chunk of `tokens` (at most `max_chunks`).

        With `tail_multiple`, the list ends with the key of the tokens after
        the last full chunk, cut down to a multiple of `tail_multiple` (an
        engine's block size), when that leaves any: a shorter chunk, chained
        like the others, so it can never equal a full chunk's key.

        The tokens are converted once into one int32 buffer; each chunk is then
        a slice of it, so no per-token Python work happens.
        """
        buf = as_int32_le(tokens)
        n = len(buf) // self.chunk_tokens
        if max_chunks is not None:
            n = min(n, max_chunks)
        keys = self._chain(self._root, buf, self.chunk_tokens * 4, n)
        tail = self.tail_tokens(len(buf), tail_multiple) if n == len(buf) // self.chunk_tokens else 0
        if tail:
            start = n * self.chunk_tokens
            prev = keys[-1] if keys else self._root
            keys += self._chain(prev, buf[start:start + tail], tail * 4, 1)
        return keys


def tail_tokens(n_tokens: int, chunk_tokens: int, multiple: int) -> int:
    """Tokens of an `n_tokens` prompt's tail chunk: those after its last full
    chunk of `chunk_tokens`, cut down to a multiple of `multiple` (an engine's
    block size); 0 for none."""
    return n_tokens % chunk_tokens // multiple * multiple if multiple > 0 else 0


def as_int32_le(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids as a contiguous little-endian int32 array (no copy if already one)."""
    if (type(tokens) is np.ndarray and tokens.dtype == _INT32_LE and tokens.ndim == 1
            and tokens.flags.c_contiguous):
        return tokens  # already one: the checks below cost ~0.5 us, 5% of a 128-chunk prompt's keys
    if isinstance(tokens, (list, tuple)):  # what engines pass: C reads the ints (~5x numpy)
        try:
            return np.frombuffer(native.pack_int32(tokens), dtype="<i4")
        except TypeError as exc:
            raise ValueError(f"token ids must be integers: {exc}") from None
        except OverflowError:
            raise ValueError("token ids must fit in int32") from None
    if hasattr(tokens, "numpy") and not isinstance(tokens, np.ndarray):  # torch tensor
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got {arr.dtype}")
    # The range scan costs more than hashing: skip it when the dtype cannot overflow.
    if arr.size and not _fits_int32(arr.dtype) and (
            arr.min() < -(1 << 31) or arr.max() >= (1 << 31)):
        raise ValueError("token ids must fit in int32")
    return np.ascontiguousarray(arr, dtype=_INT32_LE)


_INT32_LE = np.dtype("<i4")  # parsing "<i4" on every call costs ~0.1 us


@functools.cache
def _fits_int32(dtype: np.dtype) -> bool:
    """np.can_cast to int32, memoized: it takes ~1 us a call, as long as hashing 16 chunks."""
    return np.can_cast(dtype, np.int32)
