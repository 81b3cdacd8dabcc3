import pytest
import torch

from kvmesh.kernels.layouts import (
    FLASH, FLASHINFER, LAYOUTS, VLLM_CPU, VLLM_HND, VLLM_NHD, chunk_bytes, detect_layout,
    get_layout, layer_block_bytes,
)

PARAMS = dict(block_size=16, num_kv_heads=2, head_size=64)


def _layers(shape, n=3, device="cpu"):
    return [torch.empty(shape, device=device) for _ in range(n)]


@pytest.mark.parametrize("layout", [VLLM_CPU, FLASH, FLASHINFER])
def test_detect_registered_shape(layout):
    shape = layout.layer_shape(num_blocks=40, **PARAMS)
    assert detect_layout(_layers(shape), **PARAMS) is layout


def test_detect_gpu_views_by_strides():
    b, n, h, d = 40, 16, 2, 64
    hnd = torch.empty(3, b, h, n, 2 * d, device="meta")
    nhd = torch.empty(3, b, n, h, 2 * d, device="meta").transpose(2, 3)
    assert detect_layout(list(hnd.unbind(0)), **PARAMS) is VLLM_HND
    assert detect_layout(list(nhd.unbind(0)), **PARAMS) is VLLM_NHD


def test_detect_cross_layer_view_is_still_per_layer_layout():
    buf = torch.empty(40, 3, 2, 16, 128)  # [B, L, H, N, 2D]: blocks outermost
    assert detect_layout(list(buf.unbind(1)), **PARAMS) is VLLM_CPU


@pytest.mark.parametrize("shape", [(40, 2, 16, 64), (2, 40, 16, 2, 32), (40, 3, 16, 2, 64)])
def test_detect_rejects_unknown_shapes(shape):
    with pytest.raises(ValueError, match="unsupported"):
        detect_layout(_layers(shape), **PARAMS)


def test_detect_rejects_ambiguous_shape():
    with pytest.raises(ValueError, match="ambiguous"):
        detect_layout(_layers((2, 2, 16, 2, 64)), **PARAMS)


def test_detect_rejects_mixed_layers_and_empty():
    with pytest.raises(ValueError):
        detect_layout([torch.empty(4, 2, 16, 128), torch.empty(5, 2, 16, 128)], **PARAMS)
    with pytest.raises(ValueError):
        detect_layout([], **PARAMS)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_chunk_bytes_same_in_every_layout(name):
    size = chunk_bytes(name, 4, 8, block_size=32, num_kv_heads=2, head_size=64,
                       dtype=torch.bfloat16)
    assert size == 4 * 8 * 2 * 32 * 2 * 64 * 2
    assert size == 4 * 8 * layer_block_bytes(32, 2, 64, torch.bfloat16)


def test_chunk_bytes_matches_tensor_bytes():
    shape = VLLM_CPU.layer_shape(num_blocks=8, **PARAMS)
    expect = 3 * torch.empty(shape, dtype=torch.float16).nbytes
    assert chunk_bytes("vllm-cpu", 3, 8, dtype=torch.float16, **PARAMS) == expect


def test_chunk_bytes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown KV layout"):
        chunk_bytes("paged-nope", 4, 8, dtype=torch.float32, **PARAMS)
    with pytest.raises(ValueError, match="blocks_per_chunk"):
        chunk_bytes("flash", 4, 0, dtype=torch.float32, **PARAMS)


def test_get_layout_passes_layouts_through():
    assert get_layout("flash") is FLASH
    assert get_layout(FLASH) is FLASH

