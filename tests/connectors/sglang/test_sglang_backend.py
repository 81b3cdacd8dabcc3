"""The backend against a fake peer and SGLang's real host pool, one process."""

from __future__ import annotations

import dataclasses
import time

import pytest

pytest.importorskip("sglang", reason="needs SGLang: make sglang-setup, then make test-sglang")

import torch  # noqa: E402
from sglang_fakes import FakeMeshPeer, fake_opener  # noqa: E402

import sglang_pools as sp  # noqa: E402
from kvmesh.config import KvmeshConfig, TransferConfig  # noqa: E402
from kvmesh.connectors.sglang.backend import KvmeshHiCacheStorage  # noqa: E402
from kvmesh.errors import ConfigError, TransferError  # noqa: E402

ON = KvmeshConfig(enabled=True, transfer=TransferConfig(timeout_s=0.3))
KEYS = sp.page_keys(sp.prompt(1, 6))


def make(pool=None, config=ON, peers=None, **fake):
    pool = pool if pool is not None else sp.host_pool("page_first")
    peers = peers if peers is not None else []
    backend = KvmeshHiCacheStorage(sp.storage_config(), {}, config=config,
                                   open_peer=fake_opener(peers, **fake))
    backend.register_mem_pool_host(pool)
    return backend, pool


def pages_at(pool, n=len(KEYS)):
    return pool.alloc(n * pool.page_size)


def saved_pages(backend, pool, seed=1, n=len(KEYS)):
    """Fill n host pages, store them through v1; returns their host indices."""
    idx = pages_at(pool, n)
    sp.fill_pages(pool, idx, seed)
    assert backend.batch_set_v1(KEYS[:n], idx) == [True] * n
    return idx


def test_disabled_reports_misses_and_stores_nothing():
    peers = []
    backend, pool = make(config=KvmeshConfig(enabled=False), peers=peers)
    idx = pages_at(pool)
    assert peers == [] and backend.peer is None
    assert backend.batch_exists(KEYS) == 0 and not backend.exists(KEYS[0])
    assert backend.batch_set_v1(KEYS, idx) == [False] * len(KEYS)
    assert backend.batch_get_v1(KEYS, idx) == [False] * len(KEYS)
    assert backend.batch_set(KEYS, [pool.get_data_page(0)] * len(KEYS)) is False
    assert backend.get(KEYS[0]) is None and backend.batch_get(KEYS) == [None] * len(KEYS)
    assert backend.clear() is True
    backend.close()


@pytest.mark.parametrize("layout", sp.LAYOUTS)
def test_v1_round_trip_between_two_engines(layout):
    shared = {}
    a, pool_a = make(sp.host_pool(layout), chunks=shared)
    b, pool_b = make(sp.host_pool(layout), chunks=shared)
    saved_pages(a, pool_a, seed=3)
    assert b.batch_exists(KEYS) == len(KEYS)
    idx = pages_at(pool_b)
    assert b.batch_get_v1(KEYS, idx) == [True] * len(KEYS)
    assert all(sp.pages_equal(pool_b, idx, 3, len(KEYS)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pages_are_bit_exact(dtype):
    shared = {}
    a, pool_a = make(sp.host_pool("layer_first", dtype=dtype), chunks=shared)
    b, pool_b = make(sp.host_pool("layer_first", dtype=dtype), chunks=shared)
    saved_pages(a, pool_a, seed=4)
    idx = pages_at(pool_b)
    assert b.batch_get_v1(KEYS, idx) == [True] * len(KEYS)
    assert all(sp.pages_equal(pool_b, idx, 4, len(KEYS)))


def test_legacy_and_v1_store_the_same_bytes():
    shared = {}
    a, pool = make(chunks=shared)
    idx = pages_at(pool)
    sp.fill_pages(pool, idx, 5)
    flat = [pool.get_data_page(int(idx[i * pool.page_size])) for i in range(len(KEYS))]
    assert a.batch_set(KEYS, flat) is True
    b, pool_b = make(chunks=shared)
    dest = pages_at(pool_b)
    assert b.batch_get_v1(KEYS, dest) == [True] * len(KEYS)
    assert all(sp.pages_equal(pool_b, dest, 5, len(KEYS)))
    targets = [pool_b.get_dummy_flat_data_page() for _ in KEYS]
    got = b.batch_get(KEYS, targets)
    assert all(g is t and torch.equal(g, f) for g, t, f in zip(got, targets, flat, strict=True))
    assert torch.equal(b.get(KEYS[2]), flat[2])  # no target: a new flat page


def test_a_failed_page_is_reported_and_the_rest_still_load():
    """A dead holder or a checksum mismatch is a failed result: that page is False."""
    backend, pool = make()
    saved_pages(backend, pool, seed=6)
    peer = backend.peer
    peer.fail_keys.add(bytes(backend._chunk_keys([KEYS[2]])[0]))
    dest = pages_at(pool)
    assert backend.batch_get_v1(KEYS, dest) == [True, True, False, True, True, True]
    assert sp.pages_equal(pool, dest, 6, len(KEYS)) == [True, True, False, True, True, True]
    assert backend.batch_get(KEYS)[2] is None
    assert peer.pins == 0


def test_a_stalled_page_fails_at_the_deadline_and_nothing_stays_pinned():
    backend, pool = make()
    saved_pages(backend, pool)
    backend.peer.stall_keys.add(bytes(backend._chunk_keys([KEYS[0]])[0]))
    start = time.monotonic()
    got = backend.batch_get_v1(KEYS, pages_at(pool))
    assert time.monotonic() - start < ON.transfer.timeout_s + 0.5
    assert got == [False] + [True] * (len(KEYS) - 1)
    assert backend.peer.pins == 0


def test_batch_exists_counts_leading_hits_only():
    backend, pool = make()
    saved_pages(backend, pool)
    assert backend.batch_exists(KEYS) == len(KEYS)
    assert backend.batch_exists(KEYS[:3] + ["ab" * 32] + KEYS[3:]) == 3
    assert backend.batch_exists(["ab" * 32] + KEYS) == 0
    assert backend.batch_exists([]) == 0


def test_a_failing_lookup_reads_as_no_hit(monkeypatch):
    backend, pool = make()
    saved_pages(backend, pool)

    def broken(keys):
        raise TransferError("owner unreachable")

    monkeypatch.setattr(backend.peer, "lookup_prefix", broken)
    assert backend.batch_exists(KEYS) == 0


def test_saving_a_held_page_succeeds_without_rewriting_it():
    backend, pool = make()
    saved_pages(backend, pool, seed=1)
    before = dict(backend.peer.chunks)
    idx = pages_at(pool)
    sp.fill_pages(pool, idx, 2)  # same keys, other bytes: the stored page stays
    assert backend.batch_set_v1(KEYS, idx) == [True] * len(KEYS)
    assert all(torch.equal(backend.peer.chunks[k], v) for k, v in before.items())


def test_a_full_store_saves_nothing_and_says_so():
    backend, pool = make(full=True)
    idx = pages_at(pool)
    assert backend.batch_set_v1(KEYS, idx) == [False] * len(KEYS)
    assert backend.set(KEYS[0], pool.get_data_page(0)) is False
    assert backend.metrics.as_dict()["pages_not_saved"] == len(KEYS) + 1


def test_a_wrong_sized_legacy_page_is_refused():
    backend, pool = make()
    assert backend.set(KEYS[0], torch.zeros(3)) is False
    assert backend.set(KEYS[0], None) is False
    assert backend.batch_set(KEYS, None) is False
    assert backend.peer.chunks == {}


def test_a_peer_with_small_slots_is_refused_at_registration():
    peers = []

    def small(config, namespace, slot_bytes, engine_id, tp_rank):
        peers.append(FakeMeshPeer(slot_bytes=slot_bytes - 1))
        return peers[-1]

    backend = KvmeshHiCacheStorage(sp.storage_config(), {}, config=ON, open_peer=small)
    with pytest.raises(ConfigError):
        backend.register_mem_pool_host(sp.host_pool("page_first"))
    assert peers[0].closed


def test_register_opens_one_peer_with_the_pool_namespace():
    peers = []
    backend, pool = make(peers=peers)
    backend.register_mem_pool_host(pool)
    assert len(peers) == 1
    ns = peers[0].namespace
    assert (ns.model, ns.chunk_tokens, ns.num_layers, ns.dtype) == ("tiny-llama", sp.PAGE,
                                                                    sp.LAYERS, "float32")
    assert peers[0].slot_bytes == 2 * sp.LAYERS * sp.PAGE * sp.HEADS * sp.HEAD_DIM * 4
    assert "/page_first/" in ns.kv_layout


def test_model_option_lets_differently_named_engines_share():
    shared = {}
    a = KvmeshHiCacheStorage(sp.storage_config(model="/models/a", kvmesh_model="llama-3-8b"), {},
                             config=ON, open_peer=fake_opener([], chunks=shared))
    a.register_mem_pool_host(pool_a := sp.host_pool("page_first"))
    saved_pages(a, pool_a)
    b = KvmeshHiCacheStorage(sp.storage_config(model="/mnt/b", kvmesh_model="llama-3-8b"), {},
                             config=ON, open_peer=fake_opener([], chunks=shared))
    b.register_mem_pool_host(sp.host_pool("page_first"))
    assert b.batch_exists(KEYS) == len(KEYS)
    c, _ = make(chunks=shared)  # model "tiny-llama": another key space
    assert c.batch_exists(KEYS) == 0


def test_stats_report_batches_then_reset():
    backend, pool = make()
    saved_pages(backend, pool)
    backend.batch_get_v1(KEYS, pages_at(pool))
    stats = backend.get_stats()
    assert stats.backup_pgs == [len(KEYS)] and stats.prefetch_pgs == [len(KEYS)]
    assert len(stats.prefetch_bandwidth) == 1 and stats.prefetch_bandwidth[0] > 0
    assert backend.get_stats().prefetch_pgs == []
    assert backend.metrics.as_dict()["pages_loaded"] == len(KEYS)


def test_clear_and_close():
    backend, pool = make()
    saved_pages(backend, pool)
    peer = backend.peer
    assert backend.clear() is True and peer.chunks == {}
    backend.close()
    backend.close()
    assert peer.closed and backend.peer is None
    assert backend.batch_exists(KEYS) == 0
    assert backend.batch_get_v1(KEYS, pages_at(pool)) == [False] * len(KEYS)


def test_a_crash_while_copying_releases_every_pin(monkeypatch):
    backend, pool = make()
    saved_pages(backend, pool)

    def crash(index, slot):
        raise RuntimeError("bug")

    monkeypatch.setattr(backend._pages, "load_from", crash)
    with pytest.raises(RuntimeError):
        backend.batch_get_v1(KEYS, pages_at(pool))
    assert backend.peer.pins == 0


@pytest.mark.parametrize("mla", [False, True])
def test_the_peer_is_opened_for_the_scheduler_rank_even_when_the_namespace_is_rank_zero(mla):
    opened = []

    def opener(config, namespace, slot_bytes, engine_id, tp_rank):
        opened.append((namespace.tp_rank, tp_rank))
        return FakeMeshPeer(slot_bytes=slot_bytes, namespace=namespace)

    storage = dataclasses.replace(sp.storage_config(tp_rank=1, tp_size=2), is_mla_model=mla)
    backend = KvmeshHiCacheStorage(storage, {}, config=ON, open_peer=opener)
    backend.register_mem_pool_host(sp.host_pool("page_first"))
    assert opened == [(0 if mla else 1, 1)]  # MLA KV is keyed as rank 0 on every rank


@pytest.mark.parametrize("variable", ["KVMESH_CODEC_CPU", "KVMESH_CODEC_DISK", "KVMESH_CODEC_WIRE"])
def test_a_lossy_codec_setting_is_refused_when_the_backend_is_built(variable):
    config = KvmeshConfig.from_env({"KVMESH_ENABLE": "1", variable: "fp8"})
    peers = []
    with pytest.raises(ConfigError, match=f"{variable}=fp8: kvmesh keeps SGLang pages exact"):
        KvmeshHiCacheStorage(sp.storage_config(), {}, config=config, open_peer=fake_opener(peers))
    assert peers == []
    off = KvmeshConfig.from_env({variable: "fp8"})  # disabled: nothing to refuse
    KvmeshHiCacheStorage(sp.storage_config(), {}, config=off, open_peer=fake_opener(peers))


def test_a_page_that_arrives_encoded_is_a_miss():
    backend, pool = make()
    saved_pages(backend, pool, seed=7)
    key = bytes(backend._chunk_keys([KEYS[1]])[0])
    backend.peer.chunks[key] = backend.peer.chunks[key][:-1].clone()  # odd length: an envelope
    dest = pages_at(pool)
    assert backend.batch_get_v1(KEYS, dest) == [True, False, True, True, True, True]
    assert sp.pages_equal(pool, dest, 7, len(KEYS)) == [True, False, True, True, True, True]
    assert backend.batch_get([KEYS[1]]) == [None]
    assert backend.peer.pins == 0
