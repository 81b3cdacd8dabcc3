"""The copy kernels against each other: the same bytes whatever the kernel."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kvmesh import native
from kvmesh.kernels.copiers import KERNELS
from kvmesh.kernels.layouts import LAYOUTS, get_layout
from kvmesh.kernels.paged import PagedKV

L, H, D, NUM_BLOCKS, BLOCK = 3, 2, 16, 20, 8
# "native" twice: the C extension, and its Python twin in its place.
KERNEL_CASES = ["native", "native-py", "numpy", "torch"]


def make_layers(layout, shared, dtype=torch.float16, seed=0, zero=False):
    """CPU KV in `layout`: views of one buffer (as vLLM) or separate tensors."""
    gen = torch.Generator().manual_seed(seed)
    phys = get_layout(layout).layer_shape(NUM_BLOCKS, BLOCK, H, D)
    if layout == "vllm-nhd":  # stored [B, N, H, 2D], registered as [B, H, N, 2D]
        phys = (NUM_BLOCKS, BLOCK, H, 2 * D)
    fill = (lambda s: torch.zeros(s)) if zero else (lambda s: torch.randn(s, generator=gen))
    if shared:
        layers = list(fill((L, *phys)).to(dtype).unbind(0))
    else:
        layers = [fill(phys).to(dtype) for _ in range(L)]
    return [t.transpose(1, 2) for t in layers] if layout == "vllm-nhd" else layers


def paged(layers, layout, case, monkeypatch):
    if case == "native-py":
        monkeypatch.setattr(native, "gather_blocks", native.py_gather_blocks)
        monkeypatch.setattr(native, "scatter_blocks", native.py_scatter_blocks)
    return PagedKV(layers, layout, kernel=case.removesuffix("-py"))


def kv_bytes(layers):
    return [t.contiguous().view(torch.uint8).clone() for t in layers]


ids_strategy = st.lists(st.integers(0, NUM_BLOCKS - 1), min_size=1, max_size=NUM_BLOCKS)


@settings(max_examples=40, deadline=None)
@given(ids=ids_strategy, data=st.data())
@pytest.mark.parametrize("shared", [True, False], ids=["fast", "fallback"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_kernel_gathers_and_scatters_the_same_bytes(layout, shared, ids, data):
    """Gather (repeated ids allowed), then scatter part of the chunk into other
    blocks: the slab and the written KV are identical for every kernel."""
    targets = data.draw(st.permutations(range(NUM_BLOCKS)))[:len(ids)]
    offset = data.draw(st.integers(0, len(ids) - 1))
    src = make_layers(layout, shared)
    slabs, written = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        for case in KERNEL_CASES:
            kv = paged(src, layout, case, mp)
            slab = torch.full((kv.chunk_bytes(len(ids)),), 0xA5, dtype=torch.uint8)
            kv.gather(ids, slab)
            slabs[case] = slab
            dst = make_layers(layout, shared, zero=True)
            paged(dst, layout, case, mp).scatter(slab, targets[offset:], offset=offset,
                                                 chunk_blocks=len(ids))
            written[case] = kv_bytes(dst)
            mp.undo()
    for case in KERNEL_CASES[1:]:
        assert torch.equal(slabs[case], slabs["numpy"]), case
        assert all(torch.equal(a, b) for a, b in zip(written[case], written["numpy"])), case


def blocks_of(layers, layout, ids):
    """The bytes of blocks `ids` of every layer, read by plain indexing."""
    spec = get_layout(layout)
    return [t.permute(spec.physical_order).index_select(spec.block_dim, torch.tensor(ids))
            .contiguous().view(torch.uint8) for t in layers]


@pytest.mark.parametrize("case", KERNEL_CASES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_restores_the_blocks(layout, case, monkeypatch):
    src = make_layers(layout, shared=True, dtype=torch.bfloat16)
    kv = paged(src, layout, case, monkeypatch)
    ids, rest = [17, 2, 3, 4, 11, 0, 19], [1, 5, 6, 18]
    slab = torch.empty(kv.chunk_bytes(len(ids)), dtype=torch.uint8)
    kv.gather(ids, slab)
    before = blocks_of(src, layout, ids)
    for t in src:
        t.zero_()
    kv.scatter(slab, ids)
    assert all(torch.equal(a, b) for a, b in zip(before, blocks_of(src, layout, ids)))
    assert not any(b.any() for b in blocks_of(src, layout, rest))


@pytest.mark.skipif(not native.NATIVE, reason="the C extension is not built")
def test_auto_picks_native_on_cpu_and_numpy_without_the_extension(monkeypatch):
    layers = make_layers("flash", shared=True)
    assert PagedKV(layers, "flash").kernel == "native"
    monkeypatch.setattr(native, "NATIVE", False)
    assert PagedKV(layers, "flash").kernel == "numpy"


def test_blocks_with_scattered_bytes_take_numpy():
    """A layer whose bytes inside a block are not contiguous: no rows for C."""
    buf = torch.randn(L, NUM_BLOCKS, BLOCK, H, 2 * D)  # stored [B, N, H, 2D] ...
    layers = [t.transpose(1, 2) for t in buf.unbind(0)]  # ... read as "vllm-cpu" [B, H, N, 2D]
    kv = PagedKV(layers, "vllm-cpu")
    assert kv.kernel == "numpy"
    with pytest.raises(ValueError, match="contiguous"):
        PagedKV(layers, "vllm-cpu", kernel="native")
    slab = torch.empty(kv.chunk_bytes(2), dtype=torch.uint8)
    kv.gather([7, 1], slab)
    want = torch.cat([t[[7, 1]].contiguous().view(-1).view(torch.uint8) for t in layers])
    assert torch.equal(slab, want)


def test_unknown_or_misplaced_kernels_raise():
    layers = make_layers("vllm-cpu", shared=True)
    with pytest.raises(ValueError, match="unknown copy kernel"):
        PagedKV(layers, kernel="memcpy")
    meta = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in layers]
    for kernel in ("native", "numpy"):
        with pytest.raises(ValueError, match="CPU only"):
            PagedKV(meta, kernel=kernel)
    assert set(KERNELS) == {"native", "numpy", "torch"}
