"""The kernels that move a chunk's blocks between KV byte views and a slab.

`PagedKV` builds one copier per set of views (all layers; each layer alone)
in its `__init__`, so calls never re-decide. A copier works on one device:
the slab it is given is a contiguous uint8 tensor (any shape) on the views'
device holding exactly the chunk's bytes of those views, view after view (see
`kvmesh.kernels.paged` for the slab layout). Block ids are already checked:
in range, and unique for a scatter. The caller owns the slab before and
after each call.

- "native" (CPU): one C call (`kvmesh.native.gather_blocks` /
  `scatter_blocks`) for the whole chunk: each view is rows of contiguous
  block bytes (one row per index of the dims before the block dim, the
  layer dim included), copied with plain memcpys with the GIL released.
  Needs the bytes inside a block to be contiguous.
- "numpy" (CPU): one numpy strided copy per run of consecutive block ids per
  view; the fallback when the C extension is not built or a block's bytes
  are not contiguous. Not torch on CPU: a torch `copy_` splits across
  OpenMP threads, and when another process (or the engine) keeps a core
  busy, its barrier stalls 5-16 ms per call (measured on 2 cores); CPU
  `index_copy_` on bytes was 0.1-1 GB/s.
- "torch" (any device; the one for GPUs): one `index_select` /
  `index_copy_` kernel per view whatever the ids, a plain `copy_` for one
  run.

All three write the same bytes (tests/kernels checks them against each other).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Protocol

import numpy as np
import torch

from kvmesh import native
from kvmesh.errors import KernelError

KERNELS = ("native", "numpy", "torch")


class Copier(Protocol):
    def gather(self, ids: list[int], slab: torch.Tensor) -> None:
        """slab <- blocks `ids` of every view; the slab holds `len(ids)` blocks."""

    def scatter(self, slab: torch.Tensor, ids: list[int], offset: int, total: int) -> None:
        """blocks `ids` <- slab positions `offset ..`; the slab holds `total` blocks."""


def auto_kernel(views: list[torch.Tensor], block_dim: int) -> str:
    """The fastest kernel that can move blocks of `views`."""
    if views[0].device.type != "cpu":
        return "torch"
    if native.NATIVE and _block_rows(views, block_dim) is not None:
        return "native"
    return "numpy"


def make_copier(kernel: str, views: list[torch.Tensor], block_dim: int) -> Copier:
    """A copier for `views` (uint8 views of the KV, blocks along `block_dim`).

    Raises ValueError for an unknown kernel or one that cannot serve these
    views. "native" without the C extension built uses its Python twin: the
    same bytes, slowly.
    """
    if kernel not in KERNELS:
        raise KernelError(f"unknown copy kernel {kernel!r}; known: {list(KERNELS)}")
    if kernel != "torch" and views[0].device.type != "cpu":
        raise KernelError(f"the {kernel!r} kernel runs on CPU only, the KV is on "
                         f"{views[0].device}")
    if kernel == "native":
        rows = _block_rows(views, block_dim)
        if rows is None:
            raise KernelError("the 'native' kernel needs each block's bytes to be contiguous")
        return RowCopier(*rows)
    if kernel == "numpy":
        return ViewCopier(views, block_dim, _gather_numpy, _scatter_numpy)
    return ViewCopier(views, block_dim, _gather_torch, _scatter_torch)


class RowCopier:
    """The "native" kernel: the whole chunk in one C call."""

    def __init__(self, buffers: tuple[np.ndarray, ...], rows: np.ndarray, row_bytes: int):
        self._buffers, self._rows, self._row_bytes = buffers, rows, row_bytes

    def gather(self, ids: list[int], slab: torch.Tensor) -> None:
        native.gather_blocks(self._buffers, self._rows, self._row_bytes, ids, slab.numpy(), 0,
                             len(ids))

    def scatter(self, slab: torch.Tensor, ids: list[int], offset: int, total: int) -> None:
        native.scatter_blocks(self._buffers, self._rows, self._row_bytes, ids, slab.numpy(),
                              offset, total)


class ViewCopier:
    """The "numpy" and "torch" kernels: one call per view, each on its slab piece."""

    def __init__(self, views: list[torch.Tensor], block_dim: int,
                 gather_fn: Callable, scatter_fn: Callable):
        self._views, self._dim = views, block_dim
        self._gather_fn, self._scatter_fn = gather_fn, scatter_fn

    def gather(self, ids: list[int], slab: torch.Tensor) -> None:
        for view, seg in zip(self._views, _split(slab, self._views, self._dim, len(ids))):
            self._gather_fn(view, self._dim, ids, seg)

    def scatter(self, slab: torch.Tensor, ids: list[int], offset: int, total: int) -> None:
        for view, seg in zip(self._views, _split(slab, self._views, self._dim, total)):
            self._scatter_fn(view, self._dim, ids, seg.narrow(self._dim, offset, len(ids)))


def _block_rows(views: list[torch.Tensor], block_dim: int
                ) -> tuple[tuple[np.ndarray, ...], np.ndarray, int] | None:
    """(KV buffers, int64 (buffer, offset, stride) rows, row bytes) for
    `kvmesh.native.gather_blocks`, in slab order; None when the dims after
    `block_dim` are not contiguous in some view."""
    row_bytes = math.prod(views[0].shape[block_dim + 1:])
    buffers, rows = [], []
    for index, view in enumerate(views):
        if not _contiguous_after(view, block_dim):
            return None
        buffers.append(_storage_bytes(view))
        outer = itertools.product(*(range(n) for n in view.shape[:block_dim]))
        for at in outer:
            offset = view.storage_offset() + sum(i * s for i, s in zip(at, view.stride()))
            rows.append((index, offset, view.stride(block_dim)))
    return tuple(buffers), np.array(rows, dtype=np.int64), row_bytes


def _contiguous_after(view: torch.Tensor, dim: int) -> bool:
    expected = 1
    for size, stride in zip(reversed(view.shape[dim + 1:]), reversed(view.stride()[dim + 1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _storage_bytes(view: torch.Tensor) -> np.ndarray:
    """The whole storage under `view` as a uint8 array (shares memory, keeps it alive)."""
    storage = view.untyped_storage()
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
    return flat.numpy()


def _split(slab: torch.Tensor, views: list[torch.Tensor], dim: int,
           num_ids: int) -> list[torch.Tensor]:
    """`slab` cut into one contiguous piece per view, each shaped like it."""
    shape = list(views[0].shape)
    shape[dim] = num_ids
    flat = slab.view(-1)
    size = flat.numel() // len(views)
    return [flat[i * size:(i + 1) * size].view(shape) for i in range(len(views))]


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


def _gather_numpy(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    src, dst = view.numpy(), seg.numpy()
    for first, pos, length in _runs(ids):
        dst[_along(dim, pos, length)] = src[_along(dim, first, length)]


def _scatter_numpy(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    dst, src = view.numpy(), seg.numpy()
    for first, pos, length in _runs(ids):
        dst[_along(dim, first, length)] = src[_along(dim, pos, length)]


def _gather_torch(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    if len(_runs(ids)) == 1:
        seg.copy_(view.narrow(dim, ids[0], len(ids)))
    else:
        torch.index_select(view, dim, _index(ids, view.device), out=seg)


def _scatter_torch(view: torch.Tensor, dim: int, ids: list[int], seg: torch.Tensor) -> None:
    if len(_runs(ids)) == 1:
        view.narrow(dim, ids[0], len(ids)).copy_(seg)
    else:
        view.index_copy_(dim, _index(ids, view.device), seg)


def _index(ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64, device=device)
