"""The worker half with codecs: envelopes saved into smaller slots, any odd-length
chunk decoded before its scatter, and every envelope that cannot be decoded a miss."""

from __future__ import annotations

import time

import pytest
import torch
from vllm_fakes import FakePeer

from kvmesh.codecs import (CODECS, HEADER_BYTES, ChunkGeometry, decode_chunk, encode_chunk,
                           encoded_bound, read_header)
from kvmesh.config import CodecConfig, KvmeshConfig, TransferConfig
from kvmesh.connectors.vllm import peer_factory
from kvmesh.connectors.vllm.metadata import SKIP_BLOCK, ChunkSpec, RequestPlan, StepPlan
from kvmesh.connectors.vllm.slot_codec import SLOT_ALIGN, SlotCodec
from kvmesh.connectors.vllm.worker import MeshWorker
from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.kernels.paged import PagedKV

LAYERS, BLOCKS, HEADS, BLOCK, HEAD_DIM = 2, 16, 2, 32, 64
CHUNK = 2 * BLOCK
EXACT = KeyNamespace(model="m", dtype="float32", num_layers=LAYERS, num_kv_heads=HEADS,
                     head_dim=HEAD_DIM, chunk_tokens=CHUNK, kv_layout="vllm-cpu/block32")
LOSSY = KeyNamespace(**{**{f: getattr(EXACT, f) for f in EXACT.__dataclass_fields__},
                        "lossy_codec": "fp8"})
CHUNK_BYTES = LAYERS * 2 * (HEADS * BLOCK * 2 * HEAD_DIM * 4)


def key(i: int) -> bytes:
    return bytes([i]) * 16


def make_kv(dtype=torch.float32):
    """vLLM's CPU layout: per layer [B, H, N, 2D], all layers views of one buffer."""
    torch.manual_seed(0)
    buf = torch.randn(LAYERS, BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM).to(dtype)
    return [buf[i] for i in range(LAYERS)]


def blocks(kv, ids):
    return torch.stack([layer[ids] for layer in kv])


def start_worker(kv, namespace, cpu="none"):
    """A worker on a FakePeer with slots of the size the worker asks for."""
    opened = {}

    def open_peer(config, ns, slot_bytes, engine_id):
        opened["peer"] = FakePeer(slot_bytes=slot_bytes, namespace=ns)
        return opened["peer"]

    peer_factory.set_factories(open_peer=open_peer)
    config = KvmeshConfig(enabled=True, chunk_tokens=CHUNK, transfer=TransferConfig(timeout_s=0.1),
                          codecs=CodecConfig(cpu=cpu))
    worker = MeshWorker(config, "engine-1", BLOCK)
    worker.register_kv_caches(kv, namespace)
    return worker, opened["peer"]


@pytest.fixture
def kv():
    return make_kv()


@pytest.fixture
def lossy(kv):
    worker, peer = start_worker(kv, LOSSY, cpu="fp8")
    yield worker, peer
    worker.shutdown()
    peer_factory.set_factories()


@pytest.fixture
def exact(kv):
    worker, peer = start_worker(kv, EXACT)
    yield worker, peer
    worker.shutdown()
    peer_factory.set_factories()


def step(loads=None, saves=None, req="r"):
    return StepPlan([RequestPlan(req, loads or [], saves or [])], [], False)


def poll(worker, finished=frozenset(), want_send=None, want_recv=None, timeout=5.0):
    """Call get_finished until the wanted request shows up; return the failed blocks."""
    sent, recvd, failed = set(), set(), set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s, r = worker.get_finished(set(finished))
        sent |= s
        recvd |= r
        failed |= worker.get_block_ids_with_load_errors()
        if (want_send is None or want_send in sent) and (want_recv is None or want_recv in recvd):
            return failed
        time.sleep(0.01)
    raise AssertionError(f"timed out: sent={sent} recvd={recvd}")


def save(worker, k, ids):
    worker.wait_for_save(step(saves=[ChunkSpec(key(k), ids)]))
    poll(worker, finished={"r"}, want_send="r")


def load(worker, specs, req="b"):
    worker.start_load_kv(step(loads=specs, req=req))
    return poll(worker, want_recv=req)


def round_trip(kv, ids, namespace=LOSSY):
    """What the namespace's lossy codec makes of blocks `ids`, as raw chunk
    bytes in the KV's dtype."""
    paged, geometry = PagedKV(kv), ChunkGeometry.from_namespace(namespace)
    raw = torch.empty(paged.chunk_bytes(len(ids)), dtype=torch.uint8)
    paged.gather(ids, raw)
    codec = namespace.lossy_codec
    return decode_chunk(encode_chunk(raw, codec, geometry, len(ids)), geometry, codec)


def as_blocks(raw, n, dtype=torch.float32):
    return raw.view(dtype).view(LAYERS, n, HEADS, BLOCK, 2 * HEAD_DIM)


def test_slots_hold_the_longest_envelope_of_a_full_chunk(lossy, exact):
    (_, lossy_peer), (_, exact_peer) = lossy, exact
    bound = encoded_bound("fp8", ChunkGeometry.from_namespace(LOSSY), 2)
    assert lossy_peer.slot_bytes == -(-bound // SLOT_ALIGN) * SLOT_ALIGN
    assert exact_peer.slot_bytes == CHUNK_BYTES
    ratio = CHUNK_BYTES / lossy_peer.slot_bytes
    print(f"fp32 KV: raw chunk {CHUNK_BYTES} B, fp8 slot {lossy_peer.slot_bytes} B, {ratio:.2f}x")
    assert 3.8 < ratio < 4  # 1 byte a value plus a bf16 scale per 64 values, for 4


def test_bf16_kv_gets_slots_at_least_1_9x_smaller():
    kv = make_kv(torch.bfloat16)
    namespace = KeyNamespace(**{**{f: getattr(LOSSY, f) for f in LOSSY.__dataclass_fields__},
                                "dtype": "bfloat16"})
    worker, peer = start_worker(kv, namespace, cpu="fp8")
    try:
        raw = CHUNK_BYTES // 2
        print(f"bf16 KV: raw chunk {raw} B, fp8 slot {peer.slot_bytes} B, "
              f"{raw / peer.slot_bytes:.2f}x")
        assert raw / peer.slot_bytes >= 1.9
        save(worker, 1, [3, 4])
        assert load(worker, [ChunkSpec(key(1), [9, 10])]) == set()
        want = as_blocks(round_trip(kv, [3, 4], namespace), 2, torch.bfloat16)
        assert torch.equal(blocks(kv, [9, 10]), want)
    finally:
        worker.shutdown()
        peer_factory.set_factories()


@pytest.mark.parametrize("in_place", [False, True])
def test_a_saved_envelope_loads_back_as_the_codecs_round_trip(lossy, kv, in_place):
    worker, peer = lossy
    original = blocks(kv, [3, 4]).clone()
    save(worker, 1, [3, 4])
    stored = peer.chunks[key(1)]
    header = read_header(stored)
    assert stored.numel() % 2 == 1 and header.blocks == 2 and header.raw_len == CHUNK_BYTES
    peer.in_place = in_place  # as a same-host holder's bytes, or a landed slot
    assert load(worker, [ChunkSpec(key(1), [9, 10])]) == set()
    assert torch.equal(blocks(kv, [9, 10]), as_blocks(round_trip(kv, [3, 4]), 2))
    err = (blocks(kv, [9, 10]) - original).abs().max().item()
    assert 0 < err <= original.abs().max().item() / 16  # lossy, within e4m3's half step
    assert torch.equal(blocks(kv, [3, 4]), original)  # the save only read
    assert peer.pinned == 0


@pytest.mark.parametrize("codec", sorted(n for n, c in CODECS.items() if not c.lossless))
def test_every_lossy_codec_saves_and_loads_through_the_worker(kv, codec):
    namespace = KeyNamespace(**{**{f: getattr(LOSSY, f) for f in LOSSY.__dataclass_fields__},
                                "lossy_codec": codec})
    worker, peer = start_worker(kv, namespace, cpu=codec)
    try:
        assert peer.slot_bytes < CHUNK_BYTES
        save(worker, 1, [3, 4])
        save(worker, 2, [5])
        assert [read_header(peer.chunks[key(k)]).blocks for k in (1, 2)] == [2, 1]
        peer.in_place = True
        assert load(worker, [ChunkSpec(key(1), [9, 10]), ChunkSpec(key(2), [11])]) == set()
        assert torch.equal(blocks(kv, [9, 10]), as_blocks(round_trip(kv, [3, 4], namespace), 2))
        assert torch.equal(blocks(kv, [11]), as_blocks(round_trip(kv, [5], namespace), 1))
        assert not torch.equal(blocks(kv, [9, 10]), blocks(kv, [3, 4]))
    finally:
        worker.shutdown()
        peer_factory.set_factories()


@pytest.mark.parametrize("in_place", [False, True])
def test_a_tail_chunk_of_one_block_is_encoded_for_one_block(lossy, kv, in_place):
    worker, peer = lossy
    save(worker, 1, [5])
    assert read_header(peer.chunks[key(1)]).blocks == 1
    assert peer.chunks[key(1)].numel() < peer.slot_bytes // 2 + SLOT_ALIGN
    peer.in_place = in_place
    before = blocks(kv, [11]).clone()
    assert load(worker, [ChunkSpec(key(1), [12])]) == set()
    assert torch.equal(blocks(kv, [12]), as_blocks(round_trip(kv, [5]), 1))
    assert torch.equal(blocks(kv, [11]), before)


def test_a_load_skipping_a_head_block_writes_only_the_live_one(lossy, kv):
    worker, peer = lossy
    save(worker, 1, [3, 4])
    before = blocks(kv, [8]).clone()
    assert load(worker, [ChunkSpec(key(1), [SKIP_BLOCK, 9])]) == set()
    assert torch.equal(blocks(kv, [8]), before)
    assert torch.equal(blocks(kv, [9]), as_blocks(round_trip(kv, [3, 4]), 2)[:, 1:])


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("where", [0, 4, 5, 6, 8, 16])  # magic, codec, flags, blocks, raw, payload
def test_a_corrupt_envelope_header_is_a_miss_that_writes_nothing(lossy, kv, in_place, where):
    worker, peer = lossy
    save(worker, 1, [3, 4])
    save(worker, 2, [5, 6])
    peer.chunks[key(1)][where] ^= 0x41
    peer.in_place = in_place
    before = blocks(kv, [9, 10, 11, 12]).clone()
    failed = load(worker, [ChunkSpec(key(1), [9, 10]), ChunkSpec(key(2), [11, 12])])
    assert failed == {9, 10, 11, 12}  # the chunk and every one after it: recomputed
    assert torch.equal(blocks(kv, [9, 10]), before[:, :2])


def test_an_envelope_with_a_nan_scale_is_a_miss(lossy, kv):
    worker, peer = lossy
    save(worker, 1, [3, 4])
    first_scale = HEADER_BYTES + 2 * LAYERS * 2 * HEADS * BLOCK * HEAD_DIM  # after the codes
    peer.chunks[key(1)][first_scale:first_scale + 2] = torch.tensor([0xC0, 0x7F])  # bf16 NaN
    before = blocks(kv, [9, 10]).clone()
    assert load(worker, [ChunkSpec(key(1), [9, 10])]) == {9, 10}
    assert torch.equal(blocks(kv, [9, 10]), before)


@pytest.mark.parametrize("cut", [1, 2, 1000])
def test_a_truncated_envelope_is_a_miss(lossy, cut):
    worker, peer = lossy
    save(worker, 1, [3, 4])
    peer.chunks[key(1)] = peer.chunks[key(1)][:-cut].clone()
    assert load(worker, [ChunkSpec(key(1), [9, 10])]) == {9, 10}


def test_an_exact_engine_refuses_a_lossy_envelope(exact, kv):
    """Lossy chunks live under lossy keys; should one reach an exact engine
    under its keys all the same, it is a miss, never lossy KV."""
    worker, peer = exact
    paged = PagedKV(kv)
    raw = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
    paged.gather([3, 4], raw)
    peer.chunks[key(1)] = encode_chunk(raw, "fp8", ChunkGeometry.from_namespace(EXACT), 2)
    before = blocks(kv, [9, 10]).clone()
    assert load(worker, [ChunkSpec(key(1), [9, 10])]) == {9, 10}
    assert torch.equal(blocks(kv, [9, 10]), before)


@pytest.mark.parametrize("in_place", [False, True])
def test_a_lossy_engine_loads_a_raw_chunk_as_it_is(lossy, kv, in_place):
    """A raw chunk under lossy keys (a peer of this namespace without the CPU
    codec) is exact KV: scattered as it is."""
    worker, peer = lossy
    raw = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
    PagedKV(kv).gather([3, 4], raw)
    peer.chunks[key(1)] = raw
    peer.in_place = in_place
    assert load(worker, [ChunkSpec(key(1), [9, 10])]) == set()
    assert torch.equal(blocks(kv, [9, 10]), blocks(kv, [3, 4]))


def test_the_exact_path_stores_raw_chunks_straight_from_the_gather(exact, kv):
    worker, peer = exact
    save(worker, 1, [3, 4])
    assert peer.chunks[key(1)].numel() == CHUNK_BYTES
    assert torch.equal(as_blocks(peer.chunks[key(1)], 2), blocks(kv, [3, 4]))


def test_a_codec_the_kv_cannot_take_is_refused_at_register():
    opaque = KeyNamespace(**{**{f: getattr(LOSSY, f) for f in LOSSY.__dataclass_fields__},
                             "dtype": "fp8_e4m3"})
    with pytest.raises(ConfigError, match="KVMESH_CODEC_CPU=fp8: the codecs cannot read"):
        SlotCodec(opaque, lambda n: n * 4096, 2, "fp8")
    assert SlotCodec(opaque, lambda n: n * 4096, 2).slot_bytes == 8192  # raw: no codec needed


def test_kv_the_codec_refuses_is_not_saved(lossy, kv):
    """An encoder refuses KV holding inf or NaN: that chunk is not stored at all."""
    worker, peer = lossy
    kv[0][3, 0, 0, 0] = float("inf")
    save(worker, 1, [3, 4])
    save(worker, 2, [5, 6])
    assert peer.saves_prepared == 2 and peer.saves_committed == 1
    assert key(1) not in peer.chunks and key(2) in peer.chunks
