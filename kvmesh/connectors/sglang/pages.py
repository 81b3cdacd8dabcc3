"""Copies between SGLang's host KV pool and kvmesh store slots.

A slot holds one page as the bytes of the pool's flat page
(`get_data_page(i, flat=True)`). Both directions go through the pool's own
page accessors, so every host layout SGLang offers works unchanged:

    save  slot <- get_data_page(i, flat=False)       one strided copy
    load  set_from_flat_data_page(i, slot as dtype)  one strided copy

`index` is a token index into the pool, the first token of the page (what
SGLang's `host_indices[k * page_size]` holds). Thread-safety: callers copy
disjoint pages; the pool's own lock is not needed for that.
"""

from __future__ import annotations

import torch


class HostPages:
    def __init__(self, pool) -> None:
        self.pool = pool
        self.page_size = int(pool.page_size)
        self.dtype = pool.dtype
        self.page_bytes = self._flat_page_bytes()

    def _flat_page_bytes(self) -> int:
        page = self.pool.get_dummy_flat_data_page()
        return page.numel() * page.element_size()

    def page_index(self, host_indices: torch.Tensor, k: int) -> int:
        """Token index of the k-th page of a batch's `host_indices`."""
        return int(host_indices[k * self.page_size])

    def save_into(self, index: int, slot: torch.Tensor) -> None:
        """Copy the page starting at token `index` into `slot` (uint8, page_bytes)."""
        page = self.pool.get_data_page(index, flat=False)
        self._typed(slot).view(page.shape).copy_(page)

    def load_from(self, index: int, slot: torch.Tensor) -> None:
        """Write `slot` (uint8, page_bytes) into the page starting at token `index`."""
        self.pool.set_from_flat_data_page(index, self._typed(slot))

    def flat_to_slot(self, flat_page: torch.Tensor, slot: torch.Tensor) -> None:
        """Copy a flat page tensor (legacy interface) into `slot`, byte for byte."""
        self._check_page(flat_page)
        self._bytes(slot).copy_(flat_page.contiguous().view(-1).view(torch.uint8))

    def slot_to_flat(self, slot: torch.Tensor, flat_page: torch.Tensor | None) -> torch.Tensor:
        """Copy `slot` into `flat_page` (or a new flat page) and return it."""
        out = flat_page if flat_page is not None else self.pool.get_dummy_flat_data_page()
        self._check_page(out)
        if out.is_contiguous():
            out.view(-1).view(torch.uint8).copy_(self._bytes(slot))
        else:
            out.copy_(self._typed(slot).view(out.shape))
        return out

    def _bytes(self, slot: torch.Tensor) -> torch.Tensor:
        if slot.numel() < self.page_bytes:
            raise ValueError(f"a {slot.numel()}-byte slot cannot hold a {self.page_bytes}-byte page")
        return slot[:self.page_bytes]

    def _typed(self, slot: torch.Tensor) -> torch.Tensor:
        return self._bytes(slot).view(self.dtype)

    def _check_page(self, page: torch.Tensor) -> None:
        nbytes = page.numel() * page.element_size()
        if nbytes != self.page_bytes:
            raise ValueError(f"a flat page of {nbytes} bytes, expected {self.page_bytes}")
