"""The vLLM worker's chunks in store slots: raw bytes, or envelopes of the CPU codec.

Saves. Without `KVMESH_CODEC_CPU` a chunk is gathered straight into its slot,
as ever. With it (a fixed-ratio codec), the chunk is gathered into a scratch
buffer and its envelope (`kvmesh.codecs`) written into the slot: the peer's
slots are sized for the longest envelope of a full chunk, so its pool holds
more chunks.

Loads. A raw chunk is always even long and an envelope odd, so a chunk whose
length is odd is decoded, whatever this engine's own setting, into a scratch
buffer of the loading thread, then scattered from there; an even one is
scattered as it is (no copy, no check beyond its length). The namespace's
lossy codec is the only lossy one accepted. An envelope that fails any check
is a CodecError, which the worker turns into a miss like any KvmeshError.

Scratch buffers are per thread (loads run on the worker's load threads and
on the peer's copy threads, several chunks at once; saves on the save
thread), one full raw chunk each, made on first use and kept: a fresh
multi-MiB buffer per chunk would fault its pages in every time.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from kvmesh.codecs import (ChunkGeometry, codec_for_setting, decode_chunk, encode_chunk,
                           encoded_bound)
from kvmesh.errors import CodecError, ConfigError
from kvmesh.hashring.keys import KeyNamespace

# Envelopes are odd-long: a slot sized to one would start the next slot off
# alignment, and decoding views the payload's scales as bf16/fp32.
SLOT_ALIGN = 64


class SlotCodec:
    """How one worker's chunks go into slots and come out of loads.

    `chunk_bytes(blocks)` is the raw size of a chunk of that many blocks in
    the engine's KV (PagedKV.chunk_bytes), `full_blocks` the blocks of a full
    chunk, `cpu_codec` the KVMESH_CODEC_CPU value. ConfigError when a codec
    is asked for but the KV's layout or dtype is one the codecs cannot read,
    or when the namespace's shape is not the KV's.
    """

    def __init__(self, namespace: KeyNamespace, chunk_bytes: Callable[[int], int],
                 full_blocks: int, cpu_codec: str = "none") -> None:
        self._geometry = ChunkGeometry.from_namespace(namespace)
        self._accept_lossy = namespace.lossy_codec
        self._codec = codec_for_setting(cpu_codec)
        self._chunk_bytes = chunk_bytes
        self._full_raw = chunk_bytes(full_blocks)
        self._scratch = threading.local()
        g = self._geometry
        if g is not None and g.raw_bytes(full_blocks) != self._full_raw:
            raise ConfigError(f"kvmesh: namespace {namespace.kv_layout} {namespace.dtype} gives "
                              f"{g.raw_bytes(full_blocks)}-byte chunks, the KV cache "
                              f"{self._full_raw}")
        if self._codec is None:
            self.slot_bytes = self._full_raw
            return
        if g is None:
            raise ConfigError(f"KVMESH_CODEC_CPU={cpu_codec}: the codecs cannot read this "
                              f"engine's KV ({namespace.kv_layout}, {namespace.dtype})")
        self.slot_bytes = _aligned(encoded_bound(self._codec, g, full_blocks))

    @property
    def codec_name(self) -> str:
        return self._codec.name if self._codec is not None else "none"

    def save_into(self, slot: torch.Tensor, blocks: int,
                  gather: Callable[[torch.Tensor], None]) -> int:
        """Fill `slot` with the chunk of `blocks` blocks that `gather(out)` writes
        into `out` (exactly its raw size); return the chunk's stored length.

        Without a codec `gather` writes into the slot itself. CodecError if
        the chunk cannot be stored (it is then not committed)."""
        raw_len = self._chunk_bytes(blocks)
        if self._codec is None:
            gather(slot[:raw_len])
            return raw_len
        raw = self._scratch_bytes(raw_len)
        gather(raw)
        envelope = encode_chunk(raw, self._codec, self._geometry, blocks)
        if envelope is None:  # not shorter encoded: keep it raw, if a slot holds that
            envelope = raw
        if envelope.numel() > slot.numel():
            raise CodecError(f"a {envelope.numel()}-byte chunk does not fit a "
                             f"{slot.numel()}-byte slot")
        slot[:envelope.numel()].copy_(envelope)
        return envelope.numel()

    def raw_chunk(self, data: torch.Tensor) -> torch.Tensor:
        """The raw bytes of a loaded chunk: `data` itself when even long, else
        its envelope decoded into this thread's scratch buffer (valid until the
        thread's next call). CodecError when it cannot be decoded here."""
        if not data.numel() % 2:
            return data
        if self._geometry is None:
            raise CodecError("an encoded chunk, but the codecs cannot read this engine's KV")
        return decode_chunk(data, self._geometry, self._accept_lossy,
                            out=self._scratch_bytes(self._full_raw))

    def _scratch_bytes(self, length: int) -> torch.Tensor:
        buf = getattr(self._scratch, "buf", None)
        if buf is None:
            buf = self._scratch.buf = torch.empty(self._full_raw, dtype=torch.uint8)
        if length > buf.numel():
            raise CodecError(f"a {length}-byte chunk is longer than a full chunk "
                             f"({buf.numel()} bytes)")
        return buf[:length]


def _aligned(n: int) -> int:
    return -(-n // SLOT_ALIGN) * SLOT_ALIGN
