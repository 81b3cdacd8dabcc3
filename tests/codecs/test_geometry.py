import pytest
import torch

from kvmesh.codecs import ChunkGeometry, kv_views
from kvmesh.errors import CodecError
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.kernels.layouts import LAYOUTS, chunk_bytes

from tests.codecs.kv import DTYPES, LAYOUT_NAMES, geometry, paged_chunk


def _ns(**over):
    fields = dict(model="m", dtype="bfloat16", num_layers=4, num_kv_heads=2, head_dim=64,
                  chunk_tokens=256, kv_layout="vllm-cpu/block32")
    return KeyNamespace(**{**fields, **over})


def test_every_kernel_layout_has_views():
    assert sorted(LAYOUT_NAMES) == sorted(LAYOUTS)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_bytes_match_the_kernels(layout, dtype):
    g = geometry(layout, dtype)
    expect = chunk_bytes(layout, g.num_layers, 3, block_size=g.block_size,
                         num_kv_heads=g.num_kv_heads, head_size=g.head_dim, dtype=dtype)
    assert g.raw_bytes(3) == 3 * g.block_bytes == expect
    assert g.raw_bytes(1) % 2 == 0


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_views_see_the_gathered_blocks(layout, dtype):
    g = geometry(layout, dtype)
    ids = [4, 1, 3]
    raw, k, v = paged_chunk(g, ids)
    kview, vview = kv_views(raw, g, len(ids))
    assert kview.shape == (g.num_layers, 3, g.num_kv_heads, g.block_size, g.head_dim)
    assert torch.equal(kview, k) and torch.equal(vview, v)
    assert kview.data_ptr() >= raw.data_ptr()  # a view, not a copy
    kview.zero_()
    assert torch.count_nonzero(raw.view(dtype)) <= raw.numel() // dtype.itemsize // 2


def test_kv_views_refuse_wrong_sizes_and_types():
    g = geometry()
    raw, _, _ = paged_chunk(g, [0, 1])
    with pytest.raises(CodecError):
        kv_views(raw[:-2], g, 2)
    with pytest.raises(CodecError):
        kv_views(raw, g, 1)
    with pytest.raises(CodecError):
        kv_views(raw.view(torch.float32), g, 2)


@pytest.mark.parametrize("ns, expect", [
    (_ns(), dict(layout="vllm-cpu", dtype=torch.bfloat16, num_layers=4, block_size=32,
                 num_kv_heads=2, head_dim=64, max_blocks=8)),
    (_ns(dtype="float32", kv_layout="flash/block16", chunk_tokens=64),
     dict(layout="flash", dtype=torch.float32, num_layers=4, block_size=16, num_kv_heads=2,
          head_dim=64, max_blocks=4)),
])
def test_from_namespace_reads_layout_block_and_dtype(ns, expect):
    assert ChunkGeometry.from_namespace(ns) == ChunkGeometry(**expect)


@pytest.mark.parametrize("over", [
    dict(kv_layout="opaque"), dict(kv_layout="sglang/MHATokenToKVPoolHost/page_first/page16/65536B"),
    dict(kv_layout="paged-nope/block16"), dict(kv_layout="vllm-cpu/block0"),
    dict(kv_layout="vllm-cpu/block48"), dict(dtype="fp8_e4m3"), dict(dtype="int8"),
])
def test_from_namespace_is_none_for_what_codecs_cannot_read(over):
    assert ChunkGeometry.from_namespace(_ns(**over)) is None


@pytest.mark.parametrize("over", [dict(layout="nope"), dict(dtype=torch.int8),
                                  dict(num_layers=0), dict(head_dim=-1), dict(max_blocks=0)])
def test_geometry_refuses_bad_fields(over):
    fields = dict(layout="vllm-cpu", dtype=torch.float32, num_layers=2, block_size=4,
                  num_kv_heads=2, head_dim=8)
    with pytest.raises(CodecError):
        ChunkGeometry(**{**fields, **over})
