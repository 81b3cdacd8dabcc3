"""Page keys and namespaces: pure code, runs without SGLang."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from kvmesh.connectors.sglang.namespace import build_namespace, layout_tag
from kvmesh.connectors.sglang.page_keys import PageKeyMap, page_chunk_key
from kvmesh.hashring.keys import KeyNamespace

NS = KeyNamespace(model="m", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_dim=8,
                  chunk_tokens=16, kv_layout="sglang/MHATokenToKVPoolHost/page_first/page16/2048B")
PAGE_KEY = "9f" * 32  # SGLang keys are 64 hex chars


def test_page_key_is_pinned_across_versions_and_processes():
    # A fixed value: a change here means every existing mesh stops sharing.
    digest = bytes(range(16))
    assert page_chunk_key(digest, PAGE_KEY).hex() == "79ab7454308890808ad1b37e67f714ea"
    assert len(page_chunk_key(digest, PAGE_KEY)) == 16


@pytest.mark.parametrize("field, value", [
    ("model", "other"), ("dtype", "float16"), ("num_layers", 3), ("num_kv_heads", 4),
    ("head_dim", 16), ("chunk_tokens", 32), ("kv_layout", "sglang/x/layer_first/page16/2048B"),
    ("tp_rank", 1), ("tp_size", 2),
])
def test_every_namespace_field_separates_key_spaces(field, value):
    other = dataclasses.replace(NS, **{field: value})
    assert PageKeyMap(NS)([PAGE_KEY]) != PageKeyMap(other)([PAGE_KEY])


def test_map_is_per_key_and_deterministic():
    keys = [PAGE_KEY, "00" * 32, "not-hex: a sidecar key.mamba"]
    mapped = PageKeyMap(NS)(keys)
    assert mapped == PageKeyMap(NS)(keys)
    assert len(set(mapped)) == 3
    assert PageKeyMap(NS)(keys[1:]) == mapped[1:]  # no chaining here: SGLang's keys chain


def test_mesh_secret_gives_a_different_keyed_space():
    plain = PageKeyMap(NS)([PAGE_KEY])
    keyed = PageKeyMap(NS, secret=b"s3cret")([PAGE_KEY])
    assert keyed != plain
    assert keyed == PageKeyMap(NS, secret=b"s3cret")([PAGE_KEY])
    assert keyed != PageKeyMap(NS, secret=b"other")([PAGE_KEY])


def fake_pool(layout="page_first", page_size=16, dtype=torch.bfloat16):
    return SimpleNamespace(layout=layout, page_size=page_size, dtype=dtype, layer_num=2,
                           head_num=2, head_dim=8)


def storage_config(**kw):
    base = dict(tp_rank=1, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                is_mla_model=False, model_name="org/model", dcp_rank=0, dcp_size=1)
    return SimpleNamespace(**{**base, **kw})


def test_namespace_binds_model_rank_page_layout_and_dtype():
    ns = build_namespace(storage_config(), fake_pool(), 2048)
    assert (ns.model, ns.dtype, ns.chunk_tokens, ns.tp_rank, ns.tp_size) == \
        ("org/model", "bfloat16", 16, 1, 2)
    assert ns.kv_layout == "sglang/SimpleNamespace/page_first/page16/2048B"
    for pool in (fake_pool(layout="page_head"), fake_pool(page_size=32),
                 fake_pool(dtype=torch.float16)):
        assert build_namespace(storage_config(), pool, 2048) != ns
    assert build_namespace(storage_config(), fake_pool(), 2048, model="shared-id").model == "shared-id"


def test_mla_kv_is_shared_by_all_ranks_but_shards_are_not():
    ns = build_namespace(storage_config(is_mla_model=True), fake_pool(), 2048)
    assert (ns.tp_rank, ns.tp_size) == (0, 1)
    tag = layout_tag(fake_pool(), storage_config(pp_rank=1, pp_size=2, attn_cp_rank=0,
                                                 attn_cp_size=2), 2048)
    assert tag.endswith("/pp1of2/cp0of2")
