"""Gather/scatter round trips against a reference built from plain indexing."""

import pytest
import torch

from kvmesh.kernels.layouts import get_layout
from kvmesh.kernels.paged import PagedKV, gather_chunk, scatter_chunk

L, H, D, NUM_BLOCKS = 4, 2, 64, 24
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUT_BLOCK = [("vllm-cpu", 32), ("flash", 16), ("flashinfer", 16), ("vllm-hnd", 16),
                ("vllm-nhd", 16)]
# Every kernel runs on CPU (torch's is the GPU one, plain torch ops); on CUDA only torch's.
DEVICE_KERNEL = [("cpu", k) for k in ("native", "numpy", "torch")] + [
    pytest.param("cuda", "torch", marks=CUDA)]
IDS = [[3, 4, 5, 6], [9, 2, 17, 3], [23], [0, 1, 7, 8, 9, 20]]


def make_cache(layout, block_size, dtype, device, shared=True, fill=True):
    """Per-layer KV tensors: views of one buffer (as vLLM) or separate tensors."""
    if layout == "vllm-nhd":  # physical [B, N, H, 2D], registered as [B, H, N, 2D]
        phys = (NUM_BLOCKS, block_size, H, 2 * D)
        make = lambda t: t.transpose(1, 2)  # noqa: E731
    else:
        phys = get_layout(layout).layer_shape(NUM_BLOCKS, block_size, H, D)
        make = lambda t: t  # noqa: E731
    init = torch.randn if fill else torch.zeros
    if shared:
        buf = init((L, *phys), device=device).to(dtype)
        return [make(t) for t in buf.unbind(0)]
    return [make(init(phys, device=device).to(dtype)) for _ in range(L)]


def reference_chunk(layers, layout, ids):
    """The slab, built independently: per layer, index the physical view."""
    spec = get_layout(layout)
    parts = []
    for t in layers:
        phys = t.permute(spec.physical_order)
        picked = phys.index_select(spec.block_dim, torch.tensor(ids, device=t.device))
        parts.append(picked.contiguous().view(-1).view(torch.uint8))
    return torch.cat(parts).cpu()


def blocks_equal(a_layers, b_layers, layout, ids):
    spec = get_layout(layout)
    for a, b in zip(a_layers, b_layers):
        index = torch.tensor(ids, device=a.device)
        pa = a.permute(spec.physical_order).index_select(spec.block_dim, index)
        pb = b.permute(spec.physical_order).index_select(spec.block_dim, index)
        if not torch.equal(pa.contiguous().view(torch.uint8), pb.contiguous().view(torch.uint8)):
            return False
    return True


def new_slab(kv, n, device):
    slab = torch.empty(kv.chunk_bytes(n), dtype=torch.uint8, device=device)
    return slab.pin_memory() if device == "pinned" else slab


def paged_kv(layers, layout, kernels):
    kv = PagedKV(layers, layout, kernel=kernels)
    assert kv.kernel == kernels
    return kv


@pytest.mark.parametrize("device,kernels", DEVICE_KERNEL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False], ids=["fast", "fallback"])
@pytest.mark.parametrize("layout,block_size", LAYOUT_BLOCK)
def test_gather_matches_reference_and_round_trips(layout, block_size, shared, kernels, dtype,
                                                  device):
    src = make_cache(layout, block_size, dtype, device, shared)
    kv = paged_kv(src, layout, kernels)
    assert kv.fast_path is shared
    dst = make_cache(layout, block_size, dtype, device, shared, fill=False)
    untouched = [t.clone() for t in dst]
    for ids in IDS:
        slab = new_slab(kv, len(ids), "pinned" if device == "cuda" else device)
        kv.gather(ids, slab)
        assert torch.equal(slab.cpu(), reference_chunk(src, layout, ids))
        paged_kv(dst, layout, kernels).scatter(slab, ids)
        assert blocks_equal(src, dst, layout, ids)
    rest = sorted(set(range(NUM_BLOCKS)) - {i for ids in IDS for i in ids})
    assert blocks_equal(untouched, dst, layout, rest)


@pytest.mark.parametrize("layout,block_size", LAYOUT_BLOCK)
def test_scatter_into_other_blocks_moves_whole_blocks(layout, block_size):
    src = make_cache(layout, block_size, torch.float16, "cpu")
    dst = make_cache(layout, block_size, torch.float16, "cpu", fill=False)
    slab = torch.empty(PagedKV(src, layout).chunk_bytes(3), dtype=torch.uint8)
    gather_chunk(src, torch.tensor([5, 6, 7]), slab, layout=layout)
    scatter_chunk(slab, dst, [11, 1, 12], layout=layout)
    spec = get_layout(layout)
    for s, d in zip(src, dst):
        ps, pd = s.permute(spec.physical_order), d.permute(spec.physical_order)
        for a, b in [(5, 11), (6, 1), (7, 12)]:
            assert torch.equal(ps.select(spec.block_dim, a), pd.select(spec.block_dim, b))


@pytest.mark.parametrize("kernels", ["native", "numpy", "torch"])
@pytest.mark.parametrize("layout,block_size", LAYOUT_BLOCK)
def test_scatter_part_of_a_chunk(layout, block_size, kernels):
    src = make_cache(layout, block_size, torch.float32, "cpu")
    dst = make_cache(layout, block_size, torch.float32, "cpu", fill=False)
    kv, kv_dst = paged_kv(src, layout, kernels), paged_kv(dst, layout, kernels)
    slab = torch.empty(kv.chunk_bytes(4), dtype=torch.uint8)
    kv.gather([10, 11, 12, 13], slab)
    kv_dst.scatter(slab, [2, 3], offset=1, chunk_blocks=4)  # blocks 11, 12 of the chunk
    kv_dst.scatter_layer(slab, 0, [20], offset=3, chunk_blocks=4)  # block 13, layer 0 only
    spec = get_layout(layout)
    for layer, (s, d) in enumerate(zip(src, dst)):
        ps, pd = s.permute(spec.physical_order), d.permute(spec.physical_order)
        pairs = [(11, 2), (12, 3)] + ([(13, 20)] if layer == 0 else [])
        for a, b in pairs:
            assert torch.equal(ps.select(spec.block_dim, a), pd.select(spec.block_dim, b))
        written = {b for _, b in pairs}
        for b in set(range(NUM_BLOCKS)) - written:
            assert not pd.select(spec.block_dim, b).any()


def test_cross_layer_buffer_takes_fast_path():
    """Blocks outermost ([B, L, H, N, 2D]) still stacks into one view."""
    buf = torch.randn(NUM_BLOCKS, L, H, 32, 2 * D)
    layers = list(buf.unbind(1))
    kv = PagedKV(layers)
    assert kv.fast_path
    slab = torch.empty(kv.chunk_bytes(3), dtype=torch.uint8)
    kv.gather([4, 9, 10], slab)
    assert torch.equal(slab, reference_chunk(layers, "vllm-cpu", [4, 9, 10]))


def test_fp8_moves_as_bytes():
    layers = [t.to(torch.float8_e4m3fn) for t in make_cache("flash", 16, torch.float32, "cpu")]
    kv = PagedKV(layers, "flash")
    slab = torch.empty(kv.chunk_bytes(2), dtype=torch.uint8)
    kv.gather([8, 3], slab)
    assert torch.equal(slab, reference_chunk(layers, "flash", [8, 3]))


@pytest.mark.parametrize("kernels", ["native", "numpy", "torch"])
def test_layer_by_layer_matches_whole_chunk(kernels):
    src = make_cache("vllm-cpu", 32, torch.float32, "cpu")
    dst = make_cache("vllm-cpu", 32, torch.float32, "cpu", fill=False)
    kv, kv_dst = paged_kv(src, "vllm-cpu", kernels), paged_kv(dst, "vllm-cpu", kernels)
    whole = torch.empty(kv.chunk_bytes(2), dtype=torch.uint8)
    kv.gather([1, 7], whole)
    by_layer = torch.zeros_like(whole)
    for layer in range(L):
        kv.gather_layer(layer, [1, 7], by_layer)
    assert torch.equal(by_layer, whole)
    kv_dst.scatter_layer(whole, 2, [1, 7])
    assert torch.equal(dst[2][[1, 7]], src[2][[1, 7]])
    assert all(not t.any() for i, t in enumerate(dst) if i != 2)


def test_layout_mismatch_in_reordered_layers_falls_back():
    layers = make_cache("vllm-cpu", 32, torch.float32, "cpu")[::-1]
    kv = PagedKV(layers)
    assert not kv.fast_path
    slab = torch.empty(kv.chunk_bytes(2), dtype=torch.uint8)
    kv.gather([0, 5], slab)
    assert torch.equal(slab, reference_chunk(layers, "vllm-cpu", [0, 5]))


@pytest.mark.parametrize("size_delta", [-1, 1, -4096])
def test_wrong_slab_size_raises(size_delta):
    kv = PagedKV(make_cache("vllm-cpu", 32, torch.float32, "cpu"))
    slab = torch.empty(kv.chunk_bytes(2) + size_delta, dtype=torch.uint8)
    with pytest.raises(ValueError, match="slab holds"):
        kv.gather([1, 2], slab)
    with pytest.raises(ValueError, match="slab holds"):
        kv.scatter(slab, [1, 2])


def test_bad_slabs_and_ids_raise():
    kv = PagedKV(make_cache("vllm-cpu", 32, torch.float32, "cpu"))
    good = torch.empty(kv.chunk_bytes(2), dtype=torch.uint8)
    bad_cases = [
        (lambda: kv.gather([1, 2], good.view(torch.float32)), "uint8"),
        (lambda: kv.gather([1, 2], torch.empty(2, good.numel(), dtype=torch.uint8)[:, 0]),
         "contiguous"),
        (lambda: kv.gather([1, NUM_BLOCKS], good), "block ids must lie"),
        (lambda: kv.gather([-1, 2], good), "block ids must lie"),
        (lambda: kv.gather([], good[:0]), "no block ids"),
        (lambda: kv.gather([1.5, 2], good), "integers"),
        (lambda: kv.scatter(good, [3, 3]), "repeated"),
        (lambda: kv.scatter_layer(good, L, [1, 2]), "layer 4 out of range"),
        (lambda: kv.gather_layer(-1, [1, 2], good), "layer -1 out of range"),
        (lambda: kv.scatter(good, [1], offset=2, chunk_blocks=2), "not all in a chunk"),
        (lambda: kv.scatter(good, [1], offset=-1, chunk_blocks=2), "not all in a chunk"),
        (lambda: kv.scatter(good, [1, 2], chunk_blocks=3), "slab holds"),
    ]
    for call, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_layers_raise():
    with pytest.raises(ValueError, match="no KV cache layers"):
        PagedKV([])
    with pytest.raises(ValueError, match="differ"):
        PagedKV([torch.zeros(4, 2, 32, 128), torch.zeros(5, 2, 32, 128)])
    with pytest.raises(ValueError, match="5-D"):
        PagedKV([torch.zeros(4, 2, 32, 128)], "flash")
    with pytest.raises(ValueError, match="unknown KV layout"):
        PagedKV([torch.zeros(4, 2, 32, 128)], "paged-nope")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_cuda_slab_on_device_and_async_gather(device):
    src = make_cache("flash", 16, torch.bfloat16, device)
    kv = PagedKV(src, "flash")
    on_device = torch.empty(kv.chunk_bytes(3), dtype=torch.uint8, device=device)
    kv.gather([2, 9, 4], on_device)
    pinned = torch.empty(kv.chunk_bytes(3), dtype=torch.uint8).pin_memory()
    kv.gather([2, 9, 4], pinned, sync=False)
    torch.cuda.current_stream().synchronize()
    assert torch.equal(pinned, on_device.cpu())
