import pytest

from kvmesh.bench.lmcache_side import COMMANDS, KV_BLOCK, kv_geometry


def test_two_mib_chunks_of_256_tokens():
    geo = kv_geometry(256 << 20, 2 << 20, 256)
    assert geo == {"head_size": 64, "tokens": 32768, "chunks": 128}


@pytest.mark.parametrize("total, chunk, tokens", [
    (256 << 20, (2 << 20) + 1, 256),   # chunk not a whole number of bytes per token
    (256 << 20, 3 << 20, 256),         # total not a whole number of chunks
    (256 << 20, 2 << 20, KV_BLOCK + 32),  # chunk not whole blocks
    (1 << 20, 1 << 20, 1 << 20),       # less than one head element per token
])
def test_impossible_geometry_raises(total, chunk, tokens):
    with pytest.raises(ValueError):
        kv_geometry(total, chunk, tokens)


def test_transfer_is_a_command():
    assert "transfer" in COMMANDS
