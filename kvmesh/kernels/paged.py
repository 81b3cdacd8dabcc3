"""Gather a chunk out of paged KV into a uint8 slab, and scatter it back.

A slab holds one chunk layer-major: layer 0's bytes for the chunk's blocks,
then layer 1's, and so on; within a layer the bytes are the layer tensor with
only those blocks kept along its block dim (see `kvmesh.kernels.layouts`).

KV is moved as raw bytes (any dtype, fp8 included) through uint8 views of the
engine's own storage. The copy strategy is picked once, in `PagedKV.__init__`:

- fast path: when every layer is an equally strided view of one storage at
  evenly spaced offsets (vLLM allocates all layers in one buffer), one strided
  `[L, ...]` view spans all layers, so one copy call moves a run of blocks
  (or, on a GPU, any set of blocks) for every layer at once;
- fallback: the same, once per layer.

On CPU, each run of consecutive block ids is one numpy strided copy. Not
torch: a torch `copy_` splits across OpenMP threads, and when another process
(or the engine) keeps a core busy, its barrier stalls 5-16 ms per call
(measured here on 2 cores); numpy copies on the calling thread at memcpy
speed and releases the GIL. CPU `index_copy_` on bytes was 0.1-1 GB/s. On a
GPU, scattered ids take one `index_select` / `index_copy_` kernel.

Devices: layers and slab may sit on different devices (CUDA KV, pinned CPU
slab). The chunk is then staged in one device buffer and crosses in one copy,
non-blocking when the slab is pinned. With `sync=True` (the default) a call
returns only when the slab (gather) or the KV (scatter) holds the bytes; with
`sync=False` the caller must synchronize the current stream before reading the
slab or reusing it.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch

from kvmesh.kernels.layouts import KVLayout, get_layout

BlockIds = Sequence[int] | torch.Tensor


class PagedKV:
    """The paged KV caches of all layers of one engine, as byte views.

    Build once per engine (e.g. in `register_kv_caches`); the layer tensors
    must outlive this object. Calls may come from any thread; they do not
    order themselves against other writers of the same blocks or slab.
    """

    def __init__(self, layers: Sequence[torch.Tensor], layout: KVLayout | str = "vllm-cpu"):
        self.layout = get_layout(layout)
        _check_uniform(layers, self.layout)
        permuted = [t.permute(self.layout.physical_order) for t in layers]
        self.num_layers = len(layers)
        self.num_blocks = permuted[0].shape[self.layout.block_dim]
        self.device = layers[0].device
        self.dtype = layers[0].dtype
        self._layer_views = [_byte_view(t) for t in permuted]
        self.block_bytes = _block_bytes(self._layer_views[0], self.layout.block_dim)
        stacked = _stack(self._layer_views)
        if stacked is not None:
            self._views, self._block_dim = [stacked], self.layout.block_dim + 1
        else:
            self._views, self._block_dim = self._layer_views, self.layout.block_dim
        on_cpu = self.device.type == "cpu"
        self._gather_fn = _gather_cpu if on_cpu else _gather_device
        self._scatter_fn = _scatter_cpu if on_cpu else _scatter_device

    @property
    def fast_path(self) -> bool:
        """True when one copy call spans all layers (one strided view)."""
        return len(self._views) == 1

    def chunk_bytes(self, num_blocks: int) -> int:
        """Bytes of a chunk of `num_blocks` blocks of every layer."""
        return self.num_layers * num_blocks * self.block_bytes

    def gather(self, block_ids: BlockIds, out: torch.Tensor, *, sync: bool = True) -> None:
        """Copy the blocks `block_ids` of every layer into the slab `out`.

        `out` is a contiguous uint8 tensor of exactly `chunk_bytes(len(block_ids))`
        bytes; the caller owns it before and after. Raises ValueError on a bad
        slab or block id; KV is never modified.
        """
        ids = self._checked_ids(block_ids, unique=False)
        slab = self._checked_slab(out, len(ids))
        self._gather(slab, ids, self._views, self._block_dim, sync)

    def gather_layer(self, layer: int, block_ids: BlockIds, out: torch.Tensor, *,
                     sync: bool = True) -> None:
        """Copy only layer `layer`'s part of the chunk into the whole-chunk slab
        `out` (for saving layer by layer as the forward pass goes)."""
        ids = self._checked_ids(block_ids, unique=False)
        part = self._layer_part(self._checked_slab(out, len(ids)), layer, len(ids))
        self._gather(part, ids, [self._layer_views[layer]], self.layout.block_dim, sync)

    def scatter(self, slab: torch.Tensor, block_ids: BlockIds, *, offset: int = 0,
                chunk_blocks: int | None = None, sync: bool = True) -> None:
        """Write the chunk in `slab` into the blocks `block_ids` of every layer.

        By default the slab holds exactly `len(block_ids)` blocks. To write only
        part of a chunk (say, skip a head the engine already holds), pass the
        slab's block count as `chunk_blocks`: its blocks `offset ..
        offset + len(block_ids) - 1` go to `block_ids`. The slab is only read;
        other blocks are untouched. Raises ValueError on a bad slab, range, or a
        bad or repeated block id.
        """
        ids = self._checked_ids(block_ids, unique=True)
        total = self._checked_range(len(ids), offset, chunk_blocks)
        slab = self._checked_slab(slab, total)
        self._scatter(slab, ids, self._views, self._block_dim, offset, total, sync)

    def scatter_layer(self, slab: torch.Tensor, layer: int, block_ids: BlockIds, *,
                      offset: int = 0, chunk_blocks: int | None = None,
                      sync: bool = True) -> None:
        """`scatter`, but only layer `layer`'s part of the whole-chunk `slab`
        (for loading layer by layer as the engine reaches each layer)."""
        ids = self._checked_ids(block_ids, unique=True)
        total = self._checked_range(len(ids), offset, chunk_blocks)
        part = self._layer_part(self._checked_slab(slab, total), layer, total)
        self._scatter(part, ids, [self._layer_views[layer]], self.layout.block_dim, offset,
                      total, sync)

    def _gather(self, slab: torch.Tensor, ids: list[int], views: list[torch.Tensor],
                block_dim: int, sync: bool) -> None:
        staging = slab if slab.device == self.device else torch.empty(
            slab.numel(), dtype=torch.uint8, device=self.device)
        for view, seg in zip(views, _split(staging, views, block_dim, len(ids))):
            self._gather_fn(view, block_dim, ids, seg)
        if staging is not slab:
            slab.copy_(staging, non_blocking=slab.is_pinned())
            self._maybe_sync(sync)

    def _scatter(self, slab: torch.Tensor, ids: list[int], views: list[torch.Tensor],
                 block_dim: int, offset: int, total: int, sync: bool) -> None:
        non_blocking = slab.is_pinned() and self.device.type != "cpu"
        staging = slab if slab.device == self.device else slab.to(
            self.device, non_blocking=non_blocking)
        for view, seg in zip(views, _split(staging, views, block_dim, total)):
            self._scatter_fn(view, block_dim, ids, seg.narrow(block_dim, offset, len(ids)))
        if staging is not slab:
            self._maybe_sync(sync)

    def _checked_range(self, num_ids: int, offset: int, chunk_blocks: int | None) -> int:
        total = num_ids if chunk_blocks is None else chunk_blocks
        if offset < 0 or offset + num_ids > total:
            raise ValueError(f"blocks {offset}..{offset + num_ids - 1} are not all in a "
                             f"chunk of {total} blocks")
        return total

    def _layer_part(self, slab: torch.Tensor, layer: int, num_ids: int) -> torch.Tensor:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.num_layers})")
        size = num_ids * self.block_bytes
        return slab[layer * size:(layer + 1) * size]

    def _checked_ids(self, block_ids: BlockIds, unique: bool) -> list[int]:
        raw = block_ids.tolist() if isinstance(block_ids, torch.Tensor) else block_ids
        try:
            ids = [operator.index(i) for i in raw]
        except TypeError:
            raise ValueError("block ids must be integers") from None
        if not ids:
            raise ValueError("no block ids given")
        if min(ids) < 0 or max(ids) >= self.num_blocks:
            raise ValueError(f"block ids must lie in [0, {self.num_blocks}), got "
                             f"{min(ids)}..{max(ids)}")
        if unique and len(set(ids)) != len(ids):
            raise ValueError("repeated block ids in a scatter")
        return ids

    def _checked_slab(self, slab: torch.Tensor, num_ids: int) -> torch.Tensor:
        if slab.dtype != torch.uint8:
            raise ValueError(f"a slab must be uint8, got {slab.dtype}")
        if not slab.is_contiguous():
            raise ValueError("a slab must be contiguous")
        need = self.chunk_bytes(num_ids)
        if slab.numel() != need:
            raise ValueError(f"slab holds {slab.numel()} bytes but {num_ids} blocks of "
                             f"{self.num_layers} layers need {need}")
        return slab.view(-1)

    def _maybe_sync(self, sync: bool) -> None:
        if sync and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def gather_chunk(layers: Sequence[torch.Tensor], block_ids: BlockIds, out: torch.Tensor, *,
                 layout: KVLayout | str = "vllm-cpu") -> None:
    """One-shot `PagedKV(layers, layout).gather(block_ids, out)`.

    Prefer a long-lived `PagedKV` on hot paths: it checks the layers once.
    """
    PagedKV(layers, layout).gather(block_ids, out)


def scatter_chunk(slab: torch.Tensor, layers: Sequence[torch.Tensor], block_ids: BlockIds, *,
                  layout: KVLayout | str = "vllm-cpu") -> None:
    """One-shot `PagedKV(layers, layout).scatter(slab, block_ids)`."""
    PagedKV(layers, layout).scatter(slab, block_ids)


def _runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """(first block id, position in the chunk, length) of each consecutive run."""
    runs, start = [], 0
    for pos in range(1, len(ids) + 1):
        if pos == len(ids) or ids[pos] != ids[pos - 1] + 1:
            runs.append((ids[start], start, pos - start))
            start = pos
    return runs


def _along(dim: int, start: int, length: int) -> tuple[slice, ...]:
    return (slice(None),) * dim + (slice(start, start + length),)


def _gather_cpu(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    """One numpy strided copy per run of consecutive ids (no OpenMP, see top)."""
    src, dst = view.numpy(), seg.numpy()
    for first, pos, length in _runs(ids):
        dst[_along(dim, pos, length)] = src[_along(dim, first, length)]


def _scatter_cpu(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    dst, src = view.numpy(), seg.numpy()
    for first, pos, length in _runs(ids):
        dst[_along(dim, first, length)] = src[_along(dim, pos, length)]


def _gather_device(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    """One kernel whatever the ids (GPU)."""
    if len(_runs(ids)) == 1:
        seg.copy_(view.narrow(dim, ids[0], len(ids)))
    else:
        torch.index_select(view, dim, _index(ids, view.device), out=seg)


def _scatter_device(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    if len(_runs(ids)) == 1:
        view.narrow(dim, ids[0], len(ids)).copy_(seg)
    else:
        view.index_copy_(dim, _index(ids, view.device), seg)


def _index(ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _split(slab: torch.Tensor, views: list[torch.Tensor], dim: int,
           num_ids: int) -> list[torch.Tensor]:
    """`slab` cut into one contiguous piece per view, each shaped like it."""
    shape = list(views[0].shape)
    shape[dim] = num_ids
    size = slab.numel() // len(views)
    return [slab[i * size:(i + 1) * size].view(shape) for i in range(len(views))]


def _check_uniform(layers: Sequence[torch.Tensor], layout: KVLayout) -> None:
    if not layers:
        raise ValueError("no KV cache layers given")
    first = layers[0]
    if first.dim() != len(layout.physical_order):
        raise ValueError(f"layout {layout.name!r} needs {len(layout.physical_order)}-D "
                         f"layer tensors, got shape {tuple(first.shape)}")
    for t in layers[1:]:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError("KV cache layers differ in shape, dtype or device")


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    """`t` as uint8 over the same memory, the element bytes as the last dim."""
    size = t.element_size()
    storage = t.untyped_storage()
    flat = torch.empty(0, dtype=torch.uint8, device=t.device).set_(
        storage, 0, (storage.nbytes(),), (1,))
    shape, strides = list(t.shape), [s * size for s in t.stride()]
    if t.stride(-1) == 1 or t.shape[-1] == 1:
        shape[-1], strides[-1] = shape[-1] * size, 1
    else:
        shape, strides = shape + [size], strides + [1]
    return flat.as_strided(shape, strides, t.storage_offset() * size)


def _stack(views: list[torch.Tensor]) -> torch.Tensor | None:
    """One `[L, ...]` view over all layers, or None if their strides differ."""
    first = views[0]
    if len(views) == 1:
        return first.unsqueeze(0)
    ptr = first.untyped_storage().data_ptr()
    step = views[1].storage_offset() - first.storage_offset()
    if step <= 0:
        return None
    for i, v in enumerate(views):
        if (v.untyped_storage().data_ptr() != ptr or v.stride() != first.stride()
                or v.storage_offset() != first.storage_offset() + i * step):
            return None
    return first.as_strided((len(views), *first.shape), (step, *first.stride()),
                            first.storage_offset())


def _block_bytes(view: torch.Tensor, block_dim: int) -> int:
    return view.numel() // view.shape[block_dim]
