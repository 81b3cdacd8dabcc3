"""The worker half against real paged-KV tensors and a fake peer."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from vllm_fakes import FakePeer

from kvmesh.config import KvmeshConfig, TransferConfig
from kvmesh.connectors.vllm import peer_factory
from kvmesh.connectors.vllm.metadata import SKIP_BLOCK, ChunkSpec, RequestPlan, StepPlan
from kvmesh.connectors.vllm.worker import MeshWorker, _InPlaceReader
from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import KeyNamespace

LAYERS, BLOCKS, HEADS, BLOCK, HEAD_DIM = 2, 16, 2, 32, 8
CHUNK = 2 * BLOCK
NS = KeyNamespace(model="m", dtype="float32", num_layers=LAYERS, num_kv_heads=HEADS,
                  head_dim=HEAD_DIM, chunk_tokens=CHUNK, kv_layout="vllm-cpu/block32")
CHUNK_BYTES = LAYERS * 2 * (HEADS * BLOCK * 2 * HEAD_DIM * 4)


def key(i: int) -> bytes:
    return bytes([i]) * 16


@pytest.fixture
def kv():
    """vLLM's CPU layout: per layer [B, H, N, 2D], all layers views of one buffer."""
    torch.manual_seed(0)
    buf = torch.randn(LAYERS, BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM)
    return [buf[i] for i in range(LAYERS)]


@pytest.fixture
def peer():
    return FakePeer(slot_bytes=CHUNK_BYTES)


@pytest.fixture
def worker(kv, peer):
    opened = []

    def open_peer(config, namespace, slot_bytes, engine_id):
        opened.append((namespace, slot_bytes, engine_id))
        return peer

    peer_factory.set_factories(open_peer=open_peer)
    config = KvmeshConfig(enabled=True, chunk_tokens=CHUNK, transfer=TransferConfig(timeout_s=0.1))
    w = MeshWorker(config, "engine-1", BLOCK)
    try:
        w.register_kv_caches(kv, NS)
        assert opened == [(NS, CHUNK_BYTES, "engine-1")]
        yield w
    finally:
        w.shutdown()
        peer_factory.set_factories()


def step(loads=None, saves=None, req="r", preempted=(), idle=False):
    return StepPlan([RequestPlan(req, loads or [], saves or [])], list(preempted), idle)


def poll(worker, finished=frozenset(), want_send=None, want_recv=None, timeout=5.0):
    """Call get_finished until the wanted request shows up; return everything seen."""
    sent, recvd, failed = set(), set(), set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s, r = worker.get_finished(set(finished))
        sent |= s
        recvd |= r
        failed |= worker.get_block_ids_with_load_errors()
        if (want_send is None or want_send in sent) and (want_recv is None or want_recv in recvd):
            return sent, recvd, failed
        time.sleep(0.01)
    raise AssertionError(f"timed out: sent={sent} recvd={recvd}")


def blocks(kv, ids):
    return torch.stack([layer[ids] for layer in kv])


def test_register_refuses_a_layout_the_keys_were_not_hashed_for(kv, peer):
    peer_factory.set_factories(open_peer=lambda *a: peer)
    try:
        w = MeshWorker(KvmeshConfig(enabled=True, chunk_tokens=CHUNK), "e", BLOCK)
        with pytest.raises(ConfigError):
            w.register_kv_caches(kv, KeyNamespace(**{**_fields(NS), "kv_layout": "vllm-cpu/block128"}))
        w.shutdown()
    finally:
        peer_factory.set_factories()


def _fields(ns):
    return {f: getattr(ns, f) for f in ns.__dataclass_fields__}


def test_save_then_load_round_trips_the_blocks(worker, kv, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    poll(worker, finished={"r"}, want_send="r")
    assert peer.saves_committed == 1
    expected = blocks(kv, [3, 4]).clone()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    _, _, failed = poll(worker, want_recv="b")
    assert failed == set()
    assert torch.equal(blocks(kv, [9, 10]), expected)
    assert peer.pinned == 0


@pytest.mark.parametrize("in_place", [False, True])
def test_a_tail_chunk_of_fewer_blocks_round_trips(worker, kv, peer, in_place):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [5])]))  # a one-block tail
    poll(worker, finished={"r"}, want_send="r")
    assert peer.chunks[key(1)].numel() == CHUNK_BYTES // 2  # only its block is stored
    peer.in_place = in_place
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [12])], req="b"))
    _, _, failed = poll(worker, want_recv="b")
    assert failed == set() and torch.equal(blocks(kv, [12]), blocks(kv, [5]))


def test_a_chunk_of_the_wrong_size_for_its_blocks_is_a_failure(worker, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)  # a whole chunk
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [12])], req="b"))  # read as a tail
    _, _, failed = poll(worker, want_recv="b")
    assert failed == {12}


def test_a_load_skips_blocks_marked_skip(worker, kv, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    poll(worker, finished={"r"}, want_send="r")
    before = blocks(kv, [8]).clone()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [SKIP_BLOCK, 9])], req="b"))
    poll(worker, want_recv="b")
    assert torch.equal(blocks(kv, [8]), before)
    assert torch.equal(blocks(kv, [9]), blocks(kv, [4]))


def test_a_same_host_chunk_is_scattered_in_place_from_the_holders_bytes(worker, kv, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    poll(worker, finished={"r"}, want_send="r")
    peer.in_place = True  # results come back consumed, data None: only the reader writes
    before = blocks(kv, [8]).clone()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [SKIP_BLOCK, 9])], req="b"))
    _, _, failed = poll(worker, want_recv="b")
    assert failed == set()
    assert torch.equal(blocks(kv, [8]), before) and torch.equal(blocks(kv, [9]), blocks(kv, [4]))
    assert peer.pinned == 0 and peer.read_in_place == 1


def test_no_read_writes_into_blocks_once_their_load_is_reported(worker, kv, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    peer.gate = threading.Event()  # never set: the load ends at its deadline
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    _, _, failed = poll(worker, want_recv="b", timeout=3.0)
    assert failed == {9, 10}  # vLLM will recompute into them
    before = blocks(kv, [9, 10]).clone()
    late = peer.last_reader(0, memoryview(bytes(CHUNK_BYTES)))  # the copy thread, too late
    assert late is False and torch.equal(blocks(kv, [9, 10]), before)


def test_a_chunk_the_reader_cannot_scatter_fails_with_all_after_it(worker, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES - 4, dtype=torch.uint8)  # not a chunk's size
    peer.chunks[key(2)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    peer.in_place = True
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10]), ChunkSpec(key(2), [11, 12])],
                              req="b"))
    _, _, failed = poll(worker, want_recv="b")
    assert failed == {9, 10, 11, 12}


def test_a_failed_chunk_fails_itself_and_everything_after_it(worker, kv, peer):
    peer.reverse_order = True  # results land out of order
    worker.wait_for_save(step(saves=[ChunkSpec(key(i), [2 * i, 2 * i + 1]) for i in range(3)]))
    poll(worker, finished={"r"}, want_send="r")
    peer.fail_keys.add(key(1))
    worker.start_load_kv(step(loads=[ChunkSpec(key(0), [SKIP_BLOCK, 9]), ChunkSpec(key(1), [10, 11]),
                                     ChunkSpec(key(2), [12, 13])], req="b"))
    _, recvd, failed = poll(worker, want_recv="b")
    assert recvd == {"b"} and failed == {10, 11, 12, 13}
    assert peer.pinned == 0
    assert worker.get_block_ids_with_load_errors() == set()  # reported once


def test_a_chunk_missing_everywhere_is_a_failure(worker):
    worker.start_load_kv(step(loads=[ChunkSpec(key(7), [1, 2])], req="b"))
    _, _, failed = poll(worker, want_recv="b")
    assert failed == {1, 2}


def test_loads_do_not_block_and_finish_when_chunks_land(worker, kv, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    poll(worker, finished={"r"}, want_send="r")
    peer.gate = threading.Event()
    t0 = time.monotonic()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    assert worker.get_finished(set()) == (set(), set())
    assert time.monotonic() - t0 < 0.2
    peer.gate.set()
    _, _, failed = poll(worker, want_recv="b")
    assert failed == set() and torch.equal(blocks(kv, [9, 10]), blocks(kv, [3, 4]))


def test_a_load_past_its_deadline_fails_instead_of_hanging(worker, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    peer.gate = threading.Event()  # never set: deadline is 5 x 0.1 s
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    _, _, failed = poll(worker, want_recv="b", timeout=3.0)
    assert failed == {9, 10}


def test_an_aborted_load_is_cancelled_and_reported(worker, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    peer.gate = threading.Event()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    worker.get_finished({"b"})
    peer.gate.set()
    _, recvd, _ = poll(worker, want_recv="b")
    assert recvd == {"b"}


def test_saves_are_reported_only_once_vllm_has_finished_the_request(worker, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    time.sleep(0.1)
    assert worker.get_finished(set()) == (set(), set())
    assert worker.get_finished({"r", "other"}) == ({"r"}, set())
    assert worker.get_finished({"r"}) == (set(), set())  # reported once


def test_an_already_stored_chunk_is_skipped_but_still_reported(worker, peer):
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    sent, _, _ = poll(worker, finished={"r"}, want_send="r")
    assert sent == {"r"} and peer.saves_prepared == 0


def test_a_failed_gather_commits_nothing(worker, peer):
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, BLOCKS + 5])]))  # bad block id
    poll(worker, finished={"r"}, want_send="r")
    assert peer.saves_prepared == 1 and peer.saves_committed == 0 and key(1) not in peer.chunks


def test_preemption_waits_for_saves_reading_the_blocks(worker, peer):
    release = threading.Event()
    prepare = peer.prepare_save

    def slow_prepare(k):
        release.wait(5)
        return prepare(k)

    peer.prepare_save = slow_prepare
    worker.wait_for_save(step(saves=[ChunkSpec(key(1), [3, 4])]))
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    worker.handle_preemptions(StepPlan([], ["r"]))
    assert time.monotonic() - t0 >= 0.15
    assert peer.saves_committed == 1


def test_shutdown_does_not_hang_on_an_outstanding_load(kv, peer):
    peer_factory.set_factories(open_peer=lambda *a: peer)
    try:
        w = MeshWorker(KvmeshConfig(enabled=True, chunk_tokens=CHUNK), "e", BLOCK)
        w.register_kv_caches(kv, NS)
        peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
        peer.gate = threading.Event()
        w.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
        t0 = time.monotonic()
        threading.Timer(0.3, peer.gate.set).start()  # a real job unblocks on cancel
        w.shutdown()
        assert time.monotonic() - t0 < 5
    finally:
        peer_factory.set_factories()


def test_a_step_with_nothing_to_compute_waits_briefly_for_a_load(worker, peer, monkeypatch):
    # An engine that only waits for loads must not spin: its busy loop holds the
    # GIL the load threads need. A step that computes waits for nothing.
    from kvmesh.connectors.vllm import worker as worker_module
    waits = []
    real_wait = worker_module.wait

    def recording_wait(futures, timeout=None, **kw):
        waits.append((len(futures), timeout))
        return real_wait(futures, timeout=timeout, **kw)

    monkeypatch.setattr(worker_module, "wait", recording_wait)
    peer.chunks[key(1)] = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    peer.gate = threading.Event()
    worker.start_load_kv(step(loads=[ChunkSpec(key(1), [9, 10])], req="b"))
    assert worker.get_finished(set()) == (set(), set())
    assert waits == []  # the step computed: no wait
    worker.start_load_kv(step(idle=True))
    t0 = time.monotonic()
    assert worker.get_finished(set()) == (set(), set())
    assert waits == [(1, worker_module.IDLE_LOAD_WAIT_S)]
    assert time.monotonic() - t0 < 1.0  # bounded
    peer.gate.set()
    _, recvd, _ = poll(worker, want_recv="b")
    assert recvd == {"b"}


def test_closing_a_reader_waits_for_every_scatter_in_flight_and_refuses_later_ones():
    started, release, done = threading.Barrier(3), threading.Event(), []

    def slow_scatter(data, specs, index):  # two copy threads, two chunks at once
        started.wait(5)
        release.wait(5)
        done.append(index)
        return True

    reader = _InPlaceReader(slow_scatter, specs=[])
    copiers = [threading.Thread(target=reader, args=(i, memoryview(b""))) for i in (0, 1)]
    for t in copiers:
        t.start()
    started.wait(5)  # both scatters are running
    closer = threading.Thread(target=reader.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and done == []  # close waits for them
    release.set()
    closer.join(5)
    assert not closer.is_alive() and sorted(done) == [0, 1]
    assert reader(2, memoryview(b"")) is False and sorted(done) == [0, 1]  # too late: refused
    for t in copiers:
        t.join(5)
