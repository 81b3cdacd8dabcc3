"""Envelopes with random bytes changed, cut or added: each decodes or is a
CodecError, never another exception (and `out` keeps its size)."""

import random

import pytest
import torch

from kvmesh.codecs import HEADER_BYTES, decode_chunk, encode_chunk
from kvmesh.errors import CodecError

from tests.codecs.kv import geometry, paged_chunk

G = geometry(dtype=torch.bfloat16, block_size=16, head_dim=32)


def _mutants(env: bytes, rng: random.Random, n: int):
    for _ in range(n):
        data = bytearray(env)
        kind = rng.randrange(4)
        if kind == 0:  # a byte anywhere
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # a header byte
            data[rng.randrange(HEADER_BYTES)] ^= 1 << rng.randrange(8)
        elif kind == 2:  # cut
            del data[rng.randrange(len(data)):]
        else:  # grown
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        yield bytes(data)


@pytest.mark.parametrize("codec", ["fp8", "int8", "zstd"])
def test_mutated_envelopes_decode_or_are_refused(codec):
    raw, _, _ = paged_chunk(G, [0, 1, 2])
    env = encode_chunk(raw, codec, G, 3).numpy().tobytes()
    rng = random.Random(codec)
    refused = 0
    for data in _mutants(env, rng, 300):
        out = torch.empty(G.raw_bytes(G.max_blocks), dtype=torch.uint8)
        try:
            got = decode_chunk(data, G, accept_lossy=codec, out=out)
        except CodecError:
            refused += 1
        else:
            assert got.numel() == G.raw_bytes(3)
    assert refused > 50  # most mutations of the header and of lengths are caught
