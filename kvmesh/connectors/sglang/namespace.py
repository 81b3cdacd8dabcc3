"""The key namespace of one SGLang scheduler rank's HiCache pages.

Built from what SGLang hands a storage backend: its `HiCacheStorageConfig`
(model name, TP/PP/CP ranks) and the host KV pool registered afterwards
(dtype, geometry, host layout, page size). A page's bytes are the pool's flat
page (`get_data_page(i, flat=True)`), whose element order depends on the host
layout, so the layout is part of the namespace: pools with different layouts
(or page sizes) never share pages. Reads only duck-typed attributes, so no
SGLang import is needed.
"""

from __future__ import annotations

from kvmesh.hashring.keys import KeyNamespace

LAYOUT_PREFIX = "sglang"


def layout_tag(pool, storage_config, nbytes: int) -> str:
    """`KeyNamespace.kv_layout`: pool class, host layout, page size and shard.

    e.g. "sglang/MHATokenToKVPoolHost/page_first/page16/65536B". Pipeline,
    attention context-parallel and decode context-parallel shards are appended
    when they are split, since each holds different bytes of the same page.
    """
    parts = [LAYOUT_PREFIX, type(pool).__name__, str(pool.layout), f"page{pool.page_size}",
             f"{nbytes}B"]
    c = storage_config
    for name, rank, size in (("pp", c.pp_rank, c.pp_size), ("cp", c.attn_cp_rank, c.attn_cp_size),
                             ("dcp", getattr(c, "dcp_rank", 0), getattr(c, "dcp_size", 1))):
        if size > 1:
            parts.append(f"{name}{rank}of{size}")
    return "/".join(parts)


def build_namespace(storage_config, pool, page_bytes: int, model: str | None = None) -> KeyNamespace:
    """The namespace of `pool`'s pages (`page_bytes` each) on this rank.

    `model` overrides SGLang's model name (by default the served model path,
    tagged with the pool's storage format) so that engines loading the same
    weights from different paths can share. MLA KV is the same on every TP
    rank, so MLA pools are keyed as rank 0 of 1 and all ranks share pages.
    """
    replicated = bool(storage_config.is_mla_model)
    return KeyNamespace(
        model=model or storage_config.model_name or "",
        dtype=str(pool.dtype).removeprefix("torch."),
        num_layers=int(getattr(pool, "layer_num", 0)),
        num_kv_heads=int(getattr(pool, "head_num", 1)),
        head_dim=int(getattr(pool, "head_dim", 0)),
        chunk_tokens=int(pool.page_size),
        kv_layout=layout_tag(pool, storage_config, page_bytes),
        tp_rank=0 if replicated else storage_config.tp_rank,
        tp_size=1 if replicated else storage_config.tp_size,
    )
