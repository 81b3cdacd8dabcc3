"""Test-only shims that let SGLang 0.5.23's HiCache run on CPU; never shipped.

Put on PYTHONPATH only for the engine test's processes (SGLang starts its
scheduler in a fresh interpreter, which runs this file at start-up). Each
patch is applied right after its SGLang module is first imported, so
processes that never import SGLang are untouched. Pinned to sglang 0.5.23:
`check_version` refuses any other version rather than patch blindly.

What is patched, and why (see shared/SGLANG.md):
  pool_host.base.HostKVCache            host pools pin memory (cudaHostRegister,
                                        pinned page buffers): built unpinned
  pool_host.mha.transfer_kv_direct      host<->device copies use a CUDA-only
                                        kernel: an index copy does the same
  torch.cpu.Stream                      transfers wait on device streams and
                                        events: on CPU work is already done
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

PINNED_VERSION = "0.5.23"


def check_version() -> None:
    from importlib.metadata import version

    found = version("sglang")
    if found != PINNED_VERSION:
        raise RuntimeError(f"kvmesh's CPU test shims are for sglang {PINNED_VERSION}, "
                           f"found {found}: update tests/connectors/sglang/shims")


def transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size):
    """The semantics of sgl_kernel's transfer_kv_direct, as a CPU index copy."""
    for src, dst in zip(src_layers, dst_layers, strict=True):
        dst[dst_indices] = src[src_indices]


def _patch_base(module) -> None:
    check_version()
    init = module.HostKVCache.__init__

    def unpinned_init(self, *args, **kwargs):
        kwargs["pin_memory"] = False
        init(self, *args, **kwargs)

    module.HostKVCache.__init__ = unpinned_init


def _patch_mha(module) -> None:
    module.transfer_kv_direct = transfer_kv_direct


def _patch_torch_cpu_streams() -> None:
    import torch

    stream = torch.cpu.Stream
    for name in ("synchronize", "wait_stream", "wait_event", "record_event", "query"):
        if not hasattr(stream, name):
            setattr(stream, name, lambda self, *args, **kwargs: True)


PATCHES = {
    "sglang.srt.mem_cache.pool_host.base": _patch_base,
    "sglang.srt.mem_cache.pool_host.mha": _patch_mha,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _PatchAfterImport())
    if "torch" in sys.modules:
        _patch_torch_cpu_streams()
    else:
        PATCHES["sglang.srt.utils"] = lambda module: _patch_torch_cpu_streams()
