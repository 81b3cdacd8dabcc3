"""The scheduler half: matched-token math, load plans, save timing, finish."""

from __future__ import annotations

import pickle

import torch
from vllm_fakes import FakePeer, fake_blocks, fake_request, new_req, sched_output

from kvmesh.connectors.vllm.metadata import SKIP_BLOCK, ChunkSpec
from kvmesh.connectors.vllm.scheduler import MeshScheduler
from kvmesh.errors import KvmeshError
from kvmesh.hashring.keys import ChunkHasher, KeyNamespace

BLOCK = 32
CHUNK = 64  # two blocks per chunk
NS = KeyNamespace(model="m", dtype="float32", num_layers=2, num_kv_heads=2, head_dim=8,
                  chunk_tokens=CHUNK, kv_layout="vllm-cpu/block32")
PROMPT = list(range(100, 300))  # 200 tokens: chunks 0..2 full, 8 tokens left over


def keys_of(tokens, ns=NS):
    return ChunkHasher(ns).keys(tokens)


def peer_holding(n_chunks, tokens=PROMPT, ns=NS) -> FakePeer:
    peer = FakePeer(slot_bytes=16)
    for key in keys_of(tokens, ns)[:n_chunks]:
        peer.chunks[bytes(key)] = torch.zeros(16, dtype=torch.uint8)
    return peer


def make(peer=None, saves=True) -> MeshScheduler:
    return MeshScheduler(NS, BLOCK, peer, saves=saves)


class RecordingLookup:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def lookup_prefix(self, keys):
        self.calls.append(list(keys))
        return self.answer


# -- get_num_new_matched_tokens ---------------------------------------------

def test_matches_whole_chunks_held_by_the_mesh():
    s = make(peer_holding(2))
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 0) == (2 * CHUNK, True)


def test_miss_is_zero_and_synchronous():
    s = make(peer_holding(0))
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 0) == (0, False)


def test_asks_only_for_chunks_beyond_vllms_own_prefix_cache():
    lookup = RecordingLookup(answer=2)
    s = make(lookup)
    # vLLM holds one chunk itself: ask about chunks 1 and 2 only.
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), CHUNK) == (2 * CHUNK, True)
    assert lookup.calls == [keys_of(PROMPT)[1:]]


def test_local_hit_ending_inside_a_chunk_counts_from_there():
    s = make(peer_holding(3))
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 3 * BLOCK) == (3 * CHUNK - 3 * BLOCK, True)


def test_nothing_to_ask_when_vllm_already_has_every_full_chunk():
    lookup = RecordingLookup(answer=0)
    s = make(lookup)
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 3 * CHUNK) == (0, False)
    assert lookup.calls == []


def test_a_full_prompt_hit_leaves_the_last_token_to_compute():
    prompt = PROMPT[:3 * CHUNK]  # exactly three chunks
    s = make(peer_holding(3, prompt))
    assert s.get_num_new_matched_tokens(fake_request("r", prompt), 0) == (3 * CHUNK - 1, True)


def test_a_prompt_shorter_than_a_chunk_matches_only_its_own_tail():
    s = make(peer_holding(3))  # PROMPT's first chunk is held, not the short prompt's tail
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT[:CHUNK - 1]), 0) == (0, False)


def test_cache_salt_separates_tenants():
    s = make(peer_holding(3))
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT, cache_salt="tenant-b"), 0) == (0, False)
    salted = NS.with_salt("tenant-b")
    s = make(peer_holding(3, ns=salted))
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT, cache_salt="tenant-b"), 0) == (3 * CHUNK, True)


def test_a_failed_lookup_is_a_miss():
    class Broken:
        def lookup_prefix(self, keys):
            raise KvmeshError("ring unreachable")

    s = make(Broken())
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 0) == (0, False)


def admit_and_load(s, req, block_ids):
    """Match, allocate and plan a request's load; its live block ids."""
    matched, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks(block_ids), matched)
    (plan,) = s.build_connector_meta(sched_output()).requests
    return {b for spec in plan.loads for b in spec.live_block_ids()}


def test_a_request_whose_load_failed_is_not_loaded_again():
    """vLLM asks again, as for a new request, once every loaded block failed:
    the same chunk would fail again, so the answer is a miss, and recompute."""
    s = make(peer_holding(3))
    req = fake_request("r", PROMPT)
    loaded = admit_and_load(s, req, [10, 11, 12, 13, 14, 15, 16])
    assert loaded == {10, 11, 12, 13, 14, 15}
    s.loads_finished({"r"}, {10, 11, 12, 13, 14, 15})
    assert s.get_num_new_matched_tokens(req, 0) == (0, False)
    assert s.get_num_new_matched_tokens(fake_request("other", PROMPT), 0) == (3 * CHUNK, True)


def test_a_load_that_succeeded_or_failed_elsewhere_keeps_the_request_loading():
    s = make(peer_holding(3))
    req = fake_request("r", PROMPT)
    admit_and_load(s, req, [10, 11, 12, 13, 14, 15, 16])
    s.loads_finished({"r"}, {40, 41})  # another request's blocks
    s.loads_finished({"gone"}, {10})  # a request this scheduler no longer tracks
    # Preempted after a good load: vLLM asks again, and the mesh may serve it again.
    assert s.get_num_new_matched_tokens(req, 0) == (3 * CHUNK, True)
    # The load's blocks were forgotten when it ended: a later report of them is not this load's.
    s.loads_finished({"r"}, {10})
    assert s.get_num_new_matched_tokens(req, 0) == (3 * CHUNK, True)


def test_producer_role_never_matches():
    s = make(None)
    assert s.get_num_new_matched_tokens(fake_request("r", PROMPT), 0) == (0, False)


def test_repeated_calls_give_the_same_answer():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    assert s.get_num_new_matched_tokens(req, 0) == s.get_num_new_matched_tokens(req, 0)


# -- load plans ---------------------------------------------------------------

def test_load_plan_maps_chunks_to_the_allocated_blocks():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    n, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([7, 3, 9, 4]), n)
    plan = s.build_connector_meta(sched_output())
    keys = keys_of(PROMPT)
    assert [(p.req_id, p.loads, p.saves) for p in plan.requests] == [
        ("r", [ChunkSpec(keys[0], [7, 3]), ChunkSpec(keys[1], [9, 4])], [])]
    assert s.build_connector_meta(sched_output()).requests == []  # drained


def test_load_plan_skips_blocks_of_vllms_own_prefix_cache():
    s = make(peer_holding(3))
    req = fake_request("r", PROMPT)
    n, _ = s.get_num_new_matched_tokens(req, 3 * BLOCK)
    s.update_state_after_alloc(req, fake_blocks([10, 11, 12, 13, 14, 15]), n)
    (plan,) = s.build_connector_meta(sched_output()).requests
    keys = keys_of(PROMPT)
    assert plan.loads == [ChunkSpec(keys[1], [SKIP_BLOCK, 13]), ChunkSpec(keys[2], [14, 15])]


def test_load_plan_of_a_full_prompt_hit_covers_every_block():
    prompt = PROMPT[:2 * CHUNK]
    s = make(peer_holding(2, prompt))
    req = fake_request("r", prompt)
    n, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4]), n)
    (plan,) = s.build_connector_meta(sched_output()).requests
    assert [c.block_ids for c in plan.loads] == [[1, 2], [3, 4]]


def test_no_load_when_vllm_allocates_no_external_tokens():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4]), 0)
    assert s.build_connector_meta(sched_output()).requests == []


def test_plans_pickle():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    n, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4]), n)
    plan = s.build_connector_meta(sched_output(preempted=["x"]))
    assert pickle.loads(pickle.dumps(plan)) == plan


# -- saves --------------------------------------------------------------------

def saves_of(plan):
    return {p.req_id: p.saves for p in plan.requests if p.saves}


def test_chunked_prefill_saves_each_chunk_once_all_its_tokens_are_computed():
    s = make(peer_holding(0))
    req = fake_request("r", PROMPT)
    s.get_num_new_matched_tokens(req, 0)
    keys = keys_of(PROMPT)
    # Step 1 computes tokens 0..99: only chunk 0 (0..63) is complete.
    step1 = s.build_connector_meta(sched_output(new=[new_req("r", [1, 2, 3, 4], 0)],
                                                scheduled={"r": 100}))
    assert saves_of(step1) == {"r": [ChunkSpec(keys[0], [1, 2])]}
    # Step 2 computes 100..199 with three new blocks: chunks 1 and 2 complete.
    step2 = s.build_connector_meta(sched_output(cached=[("r", [5, 6, 7], 100)],
                                                scheduled={"r": 100}))
    assert saves_of(step2) == {"r": [ChunkSpec(keys[1], [3, 4]), ChunkSpec(keys[2], [5, 6])]}
    # Decode steps never save (generated tokens are not cached).
    for computed in (200, 201, 250):
        assert saves_of(s.build_connector_meta(sched_output(cached=[("r", None, computed)],
                                                            scheduled={"r": 1}))) == {}
    assert s.request_finished(req, [1, 2, 3, 4, 5, 6, 7]) == (True, None)


def test_chunks_loaded_from_the_mesh_are_not_saved_back():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    n, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4]), n)
    s.build_connector_meta(sched_output())
    plan = s.build_connector_meta(sched_output(new=[new_req("r", [1, 2, 3, 4, 5, 6, 7], n)],
                                               scheduled={"r": 200 - n}))
    assert saves_of(plan) == {"r": [ChunkSpec(keys_of(PROMPT)[2], [5, 6])]}


def test_a_preempted_request_is_not_saved_twice():
    s = make(peer_holding(0))
    req = fake_request("r", PROMPT)
    s.get_num_new_matched_tokens(req, 0)
    s.build_connector_meta(sched_output(new=[new_req("r", [1, 2, 3, 4, 5, 6, 7], 0)],
                                        scheduled={"r": 200}))
    preempt = s.build_connector_meta(sched_output(preempted=["r"]))
    assert preempt.preempted_req_ids == ["r"] and saves_of(preempt) == {}
    s.get_num_new_matched_tokens(req, 0)
    again = s.build_connector_meta(sched_output(cached=[("r", [8, 9, 10, 11, 12, 13, 14], 0)],
                                                scheduled={"r": 200}, resumed=["r"]))
    assert saves_of(again) == {}


def test_consumer_role_plans_no_saves_and_frees_at_once():
    s = make(peer_holding(0), saves=False)
    req = fake_request("r", PROMPT)
    s.get_num_new_matched_tokens(req, 0)
    plan = s.build_connector_meta(sched_output(new=[new_req("r", [1, 2, 3, 4, 5, 6, 7], 0)],
                                               scheduled={"r": 200}))
    assert saves_of(plan) == {}
    assert s.request_finished(req, [1, 2, 3]) == (False, None)


def test_a_request_without_saves_is_freed_at_once():
    s = make(peer_holding(0))
    req = fake_request("r", PROMPT[:BLOCK - 1])  # not one whole block: nothing to save
    s.get_num_new_matched_tokens(req, 0)
    s.build_connector_meta(sched_output(new=[new_req("r", [1], 0)], scheduled={"r": BLOCK - 1}))
    assert s.request_finished(req, [1]) == (False, None)


def test_a_request_finished_before_its_load_was_planned_is_dropped():
    s = make(peer_holding(2))
    req = fake_request("r", PROMPT)
    n, _ = s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4]), n)
    assert s.request_finished(req, [1, 2, 3, 4]) == (False, None)
    assert s.build_connector_meta(sched_output()).requests == []


def test_unknown_requests_are_ignored():
    s = make(peer_holding(0))
    plan = s.build_connector_meta(sched_output(new=[new_req("ghost", [1, 2], 0)],
                                               scheduled={"ghost": 64}))
    assert plan.requests == []
    assert s.request_finished(fake_request("ghost", PROMPT), [1, 2]) == (False, None)


# -- prefill/decode hand-off --------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_prefill_request_announces_its_saved_chunks():
    s = make(peer_holding(0))
    req = fake_request("p", PROMPT, kv_transfer_params={"kvmesh_role": "prefill"})
    s.get_num_new_matched_tokens(req, 0)
    s.build_connector_meta(sched_output(new=[new_req("p", list(range(1, 8)), 0)],
                                        scheduled={"p": 200}))
    assert s.request_finished(req, []) == (True, {"kvmesh_chunks": 3})


def test_other_requests_return_no_params():
    s = make(peer_holding(0))
    req = fake_request("r", PROMPT)
    s.get_num_new_matched_tokens(req, 0)
    assert s.request_finished(req, []) == (False, None)


def test_a_decode_request_waits_for_the_announced_chunks():
    peer, clock = peer_holding(2), Clock()
    s = MeshScheduler(NS, BLOCK, peer, saves=False, handoff_wait_s=5.0, clock=clock)
    req = fake_request("d", PROMPT, kv_transfer_params={"kvmesh_chunks": 3})
    assert s.get_num_new_matched_tokens(req, 0) == (None, False)  # the last save is in flight
    lookups = peer.lookups
    assert s.get_num_new_matched_tokens(req, 0) == (None, False)
    assert peer.lookups == lookups  # polls are throttled
    clock.now += 1.0
    peer.chunks.update({bytes(k): torch.zeros(16, dtype=torch.uint8) for k in keys_of(PROMPT)})
    assert s.get_num_new_matched_tokens(req, 0) == (3 * CHUNK, True)


def test_a_decode_request_stops_waiting_at_the_deadline():
    clock = Clock()
    s = MeshScheduler(NS, BLOCK, peer_holding(2), saves=False, handoff_wait_s=5.0, clock=clock)
    req = fake_request("d", PROMPT, kv_transfer_params={"kvmesh_chunks": 3})
    assert s.get_num_new_matched_tokens(req, 0) == (None, False)
    clock.now += 5.0
    assert s.get_num_new_matched_tokens(req, 0) == (2 * CHUNK, True)


def test_a_step_that_computes_nothing_is_marked_idle():
    s = make()
    assert s.build_connector_meta(sched_output()).idle is True
    assert s.build_connector_meta(sched_output(scheduled={"r": 3})).idle is False


# -- the tail: a prompt's last, partial chunk in whole blocks ------------------

TAILED = list(range(100, 330))  # 230 tokens: chunks 0..2, then a 38-token rest = 1 block + 6


def tail_keys(tokens=TAILED):
    return ChunkHasher(NS).keys(tokens, tail_multiple=BLOCK)


def test_the_tail_is_saved_in_whole_blocks_once_the_prompt_is_computed():
    s = make(peer_holding(0))
    req = fake_request("r", TAILED)
    s.get_num_new_matched_tokens(req, 0)
    keys = tail_keys()
    assert len(keys) == 4
    step1 = s.build_connector_meta(sched_output(new=[new_req("r", [1, 2, 3, 4, 5, 6], 0)],
                                                scheduled={"r": 200}))
    assert saves_of(step1) == {"r": [ChunkSpec(k, ids) for k, ids in
                                     zip(keys, [[1, 2], [3, 4], [5, 6]])]}
    step2 = s.build_connector_meta(sched_output(cached=[("r", [7, 8], 200)], scheduled={"r": 30}))
    assert saves_of(step2) == {"r": [ChunkSpec(keys[3], [7])]}  # the tail's one whole block
    assert s.request_finished(req, list(range(1, 9))) == (True, None)


def test_a_held_tail_is_loaded_up_to_the_last_token():
    peer = FakePeer(slot_bytes=16)
    for key in tail_keys():
        peer.chunks[bytes(key)] = torch.zeros(16, dtype=torch.uint8)
    s = make(peer)
    req = fake_request("r", TAILED)
    n, is_async = s.get_num_new_matched_tokens(req, 0)
    assert (n, is_async) == (3 * CHUNK + BLOCK, True)  # 6 tokens past the tail's block remain
    s.update_state_after_alloc(req, fake_blocks([1, 2, 3, 4, 5, 6, 7, 8]), n)
    (plan,) = s.build_connector_meta(sched_output()).requests
    assert [c.block_ids for c in plan.loads] == [[1, 2], [3, 4], [5, 6], [7]]
    assert plan.loads[3].key == tail_keys()[3]


def test_a_prompt_ending_on_its_tail_leaves_the_last_token_to_compute():
    prompt = TAILED[:3 * CHUNK + BLOCK]
    peer = FakePeer(slot_bytes=16)
    for key in tail_keys(prompt):
        peer.chunks[bytes(key)] = torch.zeros(16, dtype=torch.uint8)
    s = make(peer)
    assert s.get_num_new_matched_tokens(fake_request("r", prompt), 0) == (len(prompt) - 1, True)


def test_without_the_tail_only_whole_chunks_match():
    s = make(peer_holding(3, TAILED))  # full chunks only
    assert s.get_num_new_matched_tokens(fake_request("r", TAILED), 0) == (3 * CHUNK, True)


def test_a_tail_is_not_a_prefix_of_a_longer_prompt():
    peer = FakePeer(slot_bytes=16)
    for key in tail_keys(TAILED[:3 * CHUNK + BLOCK]):
        peer.chunks[bytes(key)] = torch.zeros(16, dtype=torch.uint8)
    s = make(peer)  # a longer prompt's chunk 3 is a whole chunk, with another key
    assert s.get_num_new_matched_tokens(fake_request("r", TAILED + [1] * 40), 0) == (3 * CHUNK, True)
