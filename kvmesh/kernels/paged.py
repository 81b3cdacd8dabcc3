"""Gather a chunk out of paged KV into a uint8 slab, and scatter it back.

A slab holds one chunk layer-major: layer 0's bytes for the chunk's blocks,
then layer 1's, and so on; within a layer the bytes are the layer tensor with
only those blocks kept along its block dim (see `kvmesh.kernels.layouts`).

KV is moved as raw bytes (any dtype, fp8 included) through uint8 views of the
engine's own storage. When every layer is an equally strided view of one
storage at evenly spaced offsets (vLLM allocates all layers in one buffer),
one strided `[L, ...]` view spans all layers (`fast_path`); otherwise each
layer is its own view. The copy kernel is picked once, in `PagedKV.__init__`
(see `kvmesh.kernels.copiers`): on CPU, one C call for the whole chunk
("native"), or numpy strided copies per run of consecutive ids when the C
extension is not built ("numpy"); on a GPU, `index_select` / `index_copy_`
("torch").

Devices: layers and slab may sit on different devices (CUDA KV, pinned CPU
slab). The chunk is then staged in one device buffer and crosses in one copy,
non-blocking when the slab is pinned. With `sync=True` (the default) a call
returns only when the slab (gather) or the KV (scatter) holds the bytes; with
`sync=False` the caller must synchronize the current stream before reading the
slab or reusing it.
"""

from __future__ import annotations

import contextlib
import operator
import threading
import warnings
from typing import Sequence

import torch

from kvmesh.errors import KernelError
from kvmesh.kernels.copiers import Copier, auto_kernel, make_copier
from kvmesh.kernels.layouts import KVLayout, get_layout

BlockIds = Sequence[int] | torch.Tensor


@contextlib.contextmanager
def _device_errors_as_kernel_errors():
    """Torch's RuntimeErrors from a copy (a device fault, out of memory) are a
    failed chunk to the caller, like any other refusal: KernelError."""
    try:
        yield
    except RuntimeError as exc:
        raise KernelError(f"copy failed on the device: {exc}") from exc


class PagedKV:
    """The paged KV caches of all layers of one engine, as byte views.

    Build once per engine (e.g. in `register_kv_caches`); the layer tensors
    must outlive this object. Calls may come from any thread; they do not
    order themselves against other writers of the same blocks or slab.

    `kernel` is "auto" (the fastest that fits) or one of
    `kvmesh.kernels.copiers.KERNELS` (for tests and benchmarks); the one in
    use is `self.kernel`. KernelError if the layers or the kernel do not fit.
    """

    def __init__(self, layers: Sequence[torch.Tensor], layout: KVLayout | str = "vllm-cpu", *,
                 kernel: str = "auto"):
        self.layout = get_layout(layout)
        _check_uniform(layers, self.layout)
        permuted = [t.permute(self.layout.physical_order) for t in layers]
        self.num_layers = len(layers)
        self.num_blocks = permuted[0].shape[self.layout.block_dim]
        self.device = layers[0].device
        self._kv_on_cpu = self.device.type == "cpu"
        self.dtype = layers[0].dtype
        layer_views = [_byte_view(t) for t in permuted]
        self.block_bytes = _block_bytes(layer_views[0], self.layout.block_dim)
        stacked = _stack(layer_views)
        if stacked is not None:
            views, block_dim = [stacked], self.layout.block_dim + 1
        else:
            views, block_dim = layer_views, self.layout.block_dim
        self.fast_path = stacked is not None  # one strided view spans all layers
        self.kernel = auto_kernel(views, block_dim) if kernel == "auto" else kernel
        self._all = make_copier(self.kernel, views, block_dim)
        self._by_layer = [make_copier(self.kernel, [v], self.layout.block_dim)
                          for v in layer_views]

    def chunk_bytes(self, num_blocks: int) -> int:
        """Bytes of a chunk of `num_blocks` blocks of every layer."""
        return self.num_layers * num_blocks * self.block_bytes

    def gather(self, block_ids: BlockIds, out: torch.Tensor, *, sync: bool = True) -> None:
        """Copy the blocks `block_ids` of every layer into the slab `out`.

        `out` is a contiguous uint8 tensor of exactly `chunk_bytes(len(block_ids))`
        bytes; the caller owns it before and after. Raises KernelError (a ValueError) on a bad
        slab or block id; KV is never modified.
        """
        ids = self._checked_ids(block_ids, unique=False)
        slab = self._checked_slab(out, len(ids))
        self._gather(self._all, slab, ids, sync)

    def gather_layer(self, layer: int, block_ids: BlockIds, out: torch.Tensor, *,
                     sync: bool = True) -> None:
        """Copy only layer `layer`'s part of the chunk into the whole-chunk slab
        `out` (for saving layer by layer as the forward pass goes)."""
        ids = self._checked_ids(block_ids, unique=False)
        part = self._layer_part(self._checked_slab(out, len(ids)), layer, len(ids))
        self._gather(self._by_layer[layer], part, ids, sync)

    def scatter(self, slab: torch.Tensor, block_ids: BlockIds, *, offset: int = 0,
                chunk_blocks: int | None = None, sync: bool = True) -> None:
        """Write the chunk in `slab` into the blocks `block_ids` of every layer.

        By default the slab holds exactly `len(block_ids)` blocks. To write only
        part of a chunk (say, skip a head the engine already holds), pass the
        slab's block count as `chunk_blocks`: its blocks `offset ..
        offset + len(block_ids) - 1` go to `block_ids`. The slab is only read;
        other blocks are untouched. Raises KernelError (a ValueError) on a bad slab, range, or a
        bad or repeated block id.
        """
        ids = self._checked_ids(block_ids, unique=True)
        total = self._checked_range(len(ids), offset, chunk_blocks)
        slab = self._checked_slab(slab, total)
        self._scatter(self._all, slab, ids, offset, total, sync)

    def scatter_layer(self, slab: torch.Tensor, layer: int, block_ids: BlockIds, *,
                      offset: int = 0, chunk_blocks: int | None = None,
                      sync: bool = True) -> None:
        """`scatter`, but only layer `layer`'s part of the whole-chunk `slab`
        (for loading layer by layer as the engine reaches each layer)."""
        ids = self._checked_ids(block_ids, unique=True)
        total = self._checked_range(len(ids), offset, chunk_blocks)
        part = self._layer_part(self._checked_slab(slab, total), layer, total)
        self._scatter(self._by_layer[layer], part, ids, offset, total, sync)

    def _gather(self, copier: Copier, slab: torch.Tensor, ids: list[int], sync: bool) -> None:
        with _device_errors_as_kernel_errors():
            self._gather_unchecked(copier, slab, ids, sync)

    def _gather_unchecked(self, copier: Copier, slab: torch.Tensor, ids: list[int],
                          sync: bool) -> None:
        if self._on_kv_device(slab):
            copier.gather(ids, slab)
            return
        staging = torch.empty(slab.numel(), dtype=torch.uint8, device=self.device)
        copier.gather(ids, staging)
        slab.view(-1).copy_(staging, non_blocking=slab.is_pinned())
        self._maybe_sync(sync)

    def _scatter(self, copier: Copier, slab: torch.Tensor, ids: list[int], offset: int,
                 total: int, sync: bool) -> None:
        with _device_errors_as_kernel_errors():
            self._scatter_unchecked(copier, slab, ids, offset, total, sync)

    def _scatter_unchecked(self, copier: Copier, slab: torch.Tensor, ids: list[int], offset: int,
                           total: int, sync: bool) -> None:
        if self._on_kv_device(slab):
            copier.scatter(slab, ids, offset, total)
            return
        non_blocking = self.device.type != "cpu" and slab.is_pinned()
        copier.scatter(slab.view(-1).to(self.device, non_blocking=non_blocking), ids, offset,
                       total)
        self._maybe_sync(sync)

    def _on_kv_device(self, slab: torch.Tensor) -> bool:
        # After a chunk copy has flushed the caches every torch call costs
        # 5-25 us; `is_cpu` is the cheapest test (the CPU has one device).
        return slab.is_cpu if self._kv_on_cpu else slab.device == self.device

    def _checked_range(self, num_ids: int, offset: int, chunk_blocks: int | None) -> int:
        total = num_ids if chunk_blocks is None else chunk_blocks
        if offset < 0 or offset + num_ids > total:
            raise KernelError(f"blocks {offset}..{offset + num_ids - 1} are not all in a "
                             f"chunk of {total} blocks")
        return total

    def _layer_part(self, slab: torch.Tensor, layer: int, num_ids: int) -> torch.Tensor:
        if not 0 <= layer < self.num_layers:
            raise KernelError(f"layer {layer} out of range [0, {self.num_layers})")
        size = num_ids * self.block_bytes
        return slab.view(-1)[layer * size:(layer + 1) * size]

    def _checked_ids(self, block_ids: BlockIds, unique: bool) -> list[int]:
        raw = block_ids.tolist() if isinstance(block_ids, torch.Tensor) else block_ids
        try:
            ids = list(map(operator.index, raw))
        except TypeError:
            raise KernelError("block ids must be integers") from None
        if not ids:
            raise KernelError("no block ids given")
        if min(ids) < 0 or max(ids) >= self.num_blocks:
            raise KernelError(f"block ids must lie in [0, {self.num_blocks}), got "
                             f"{min(ids)}..{max(ids)}")
        if unique and len(set(ids)) != len(ids):
            raise KernelError("repeated block ids in a scatter")
        return ids

    def _checked_slab(self, slab: torch.Tensor, num_ids: int) -> torch.Tensor:
        """`slab`, as given: copiers take any contiguous shape (no `view(-1)`
        on the hot path, see `_on_kv_device`)."""
        if slab.dtype is not torch.uint8:
            raise KernelError(f"a slab must be uint8, got {slab.dtype}")
        if not slab.is_contiguous():
            raise KernelError("a slab must be contiguous")
        need = self.chunk_bytes(num_ids)
        if slab.numel() != need:
            raise KernelError(f"slab holds {slab.numel()} bytes but {num_ids} blocks of "
                             f"{self.num_layers} layers need {need}")
        return slab

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


def _check_uniform(layers: Sequence[torch.Tensor], layout: KVLayout) -> None:
    if not layers:
        raise KernelError("no KV cache layers given")
    first = layers[0]
    if first.dim() != len(layout.physical_order):
        raise KernelError(f"layout {layout.name!r} needs {len(layout.physical_order)}-D "
                         f"layer tensors, got shape {tuple(first.shape)}")
    for t in layers[1:]:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise KernelError("KV cache layers differ in shape, dtype or device")


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


_readonly_lock = threading.Lock()


def readonly_bytes(buffer) -> torch.Tensor:
    """A uint8 tensor over a read-only buffer (another process's shared
    memory), to scatter from: it is only ever read. torch warns that such a
    tensor could be written; the warning says nothing the caller does not know."""
    with _readonly_lock, warnings.catch_warnings():  # the lock: catch_warnings is process-wide
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(buffer, dtype=torch.uint8)
