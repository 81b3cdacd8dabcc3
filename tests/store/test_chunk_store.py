import random
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import xxhash
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvmesh.config import StoreConfig
from kvmesh.errors import ChunkMissingError, StoreError, StoreFullError
from kvmesh.store.disk_tier import HEADER
from kvmesh.store.chunk_store import ChunkStore
from kvmesh.store.events import StoreEvent
from kvmesh.types import ChunkKey

SLOT = 64


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "big"))


def data(i: int, n: int = SLOT) -> bytes:
    return bytes((7 * i + j) % 256 for j in range(n))


def put(store: ChunkStore, i: int, n: int = SLOT) -> bool:
    ticket = store.prepare_store(key(i))
    assert ticket is not None
    ticket.view[:n] = data(i, n)
    return store.commit_store(ticket, length=n)


def get(store: ChunkStore, i: int) -> bytes:
    ticket = store.prepare_load(key(i))
    try:
        return bytes(ticket.view)
    finally:
        store.complete_load(ticket)


def kinds(events: list[StoreEvent]) -> dict[ChunkKey, str]:
    return {k: e.kind for e in events for k in e.keys}


@pytest.fixture
def store():
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 4), SLOT)
    yield s
    s.close()


@pytest.fixture
def disk_store(tmp_path):
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 2, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 4), SLOT)
    yield s
    s.close()


def test_only_committed_chunks_are_visible(store):
    ticket = store.prepare_store(key(1))
    ticket.view[:] = data(1)
    assert not store.contains(key(1)) and store.keys() == []
    assert store.leading_hits([key(1)]) == 0
    assert store.prepare_store(key(1)) is None  # already being stored
    with pytest.raises(ChunkMissingError):
        store.prepare_load(key(1))
    assert store.commit_store(ticket)
    assert store.contains(key(1)) and store.keys() == [key(1)]
    assert store.prepare_store(key(1)) is None  # already committed
    assert get(store, 1) == data(1)
    assert store.checksum(key(1)) is not None and store.tier_of(key(1)) == "cpu"


def test_abandoned_store_frees_the_slot(store):
    ticket = store.prepare_store(key(1))
    assert store.stats().cpu_slots_used == 1
    assert store.commit_store(ticket, ok=False) is False
    assert store.stats().cpu_slots_used == 0 and not store.contains(key(1))
    with pytest.raises(StoreError, match="already committed or abandoned"):
        store.commit_store(ticket)
    assert store.prepare_store(key(1)) is not None


def test_double_commit_raises_and_view_is_released(store):
    ticket = store.prepare_store(key(1))
    store.commit_store(ticket)
    with pytest.raises(StoreError, match="already committed"):
        store.commit_store(ticket)
    with pytest.raises(ValueError):
        ticket.view[0]  # the ticket's view ended with it


def test_load_ticket_carries_length_checksum_and_tier(store):
    put(store, 1, n=10)
    ticket = store.prepare_load(key(1))
    assert (ticket.length, ticket.tier, bytes(ticket.view)) == (10, "cpu", data(1, 10))
    assert ticket.checksum == store.checksum(key(1))
    store.complete_load(ticket)
    with pytest.raises(StoreError, match="twice"):
        store.complete_load(ticket)
    assert store.stats().pinned == 0


def test_hits_and_misses_are_counted(store):
    put(store, 1)
    get(store, 1)
    with pytest.raises(ChunkMissingError):
        store.prepare_load(key(2))
    stats = store.stats()
    assert (stats.hits, stats.misses) == (1, 1)


def test_lru_evicts_least_recently_used_and_reports_it(store):
    for i in range(4):
        put(store, i)
    get(store, 0)  # 0 is now the most recently used
    store.take_events()
    put(store, 4)
    assert not store.contains(key(1))
    assert all(store.contains(key(i)) for i in (0, 2, 3, 4))
    assert kinds(store.take_events()) == {key(1): "evicted", key(4): "stored"}
    assert store.stats().evictions == 1


def test_full_pool_of_pinned_chunks_raises_and_changes_nothing(store):
    for i in range(4):
        put(store, i)
    tickets = [store.prepare_load(key(0)), store.prepare_load(key(1))]
    assert store.pin(key(2)) and store.pin(key(3))
    store.take_events()
    before = (sorted(store.keys()), store.stats())
    with pytest.raises(StoreFullError, match="all 4 CPU slots are pinned or in flight"):
        store.prepare_store(key(9))
    assert (sorted(store.keys()), store.stats()) == before
    assert store.take_events() == []
    store.complete_load(tickets[0])
    assert store.prepare_store(key(10)) is not None  # now chunk 0 can go
    assert not store.contains(key(0)) and store.contains(key(1))


def test_in_flight_stores_count_against_the_pool(store):
    tickets = [store.prepare_store(key(i)) for i in range(4)]
    with pytest.raises(StoreFullError):
        store.prepare_store(key(9))
    for t in tickets:
        store.commit_store(t)
    assert store.prepare_store(key(9)) is not None


def test_operator_pins_are_refcounts(store):
    put(store, 1)
    assert not store.pin(key(7)) and not store.unpin(key(1))
    assert store.pin(key(1)) and store.pin(key(1))
    assert not store.remove(key(1))
    assert store.unpin(key(1)) and not store.remove(key(1))
    assert store.unpin(key(1)) and not store.unpin(key(1))
    assert store.remove(key(1)) and not store.contains(key(1))
    assert kinds(store.take_events())[key(1)] == "removed"


def test_an_event_listener_hears_each_event_as_it_is_queued(store):
    heard = []
    store.set_event_listener(heard.append)
    for i in range(5):  # four slots: the fifth evicts key 0
        put(store, i)
    assert store.remove(key(4))
    assert heard == ["stored"] * 4 + ["evicted", "stored", "removed"]
    store.set_event_listener(None)
    put(store, 6)
    assert len(heard) == 7
    assert kinds(store.take_events())[key(0)] == "evicted"  # still queued as before


def test_leading_hits_stops_at_the_first_gap(store):
    for i in (0, 1, 3):
        put(store, i)
    assert store.leading_hits([key(0), key(1), key(2), key(3)]) == 2
    assert store.leading_hits([]) == 0
    assert store.leading_hits(key(i) for i in (0, 1)) == 2


def test_clear_skips_pinned_and_in_flight(store):
    for i in range(3):
        put(store, i)
    store.pin(key(0))
    ticket = store.prepare_load(key(1))
    pending = store.prepare_store(key(5))
    assert store.clear() == [key(2)]
    assert sorted(store.keys()) == [key(0), key(1)]
    store.complete_load(ticket)
    store.commit_store(pending)
    assert sorted(store.clear("cpu")) == [key(1), key(5)]
    with pytest.raises(ValueError):
        store.clear("gpu")


def test_events_are_taken_once_and_batched(store):
    for i in range(3):
        put(store, i)
    store.remove(key(1))
    # one pending kind per key, in order of each key's latest change, batched
    assert store.take_events() == [StoreEvent("stored", (key(0), key(2))), StoreEvent("removed", (key(1),))]
    assert store.take_events() == []


def test_event_queue_is_bounded(tmp_path):
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 4), SLOT, max_pending_events=3)
    for i in range(6):
        put(s, i)
    assert sum(len(e.keys) for e in s.take_events()) == 3
    assert s.stats().events_dropped > 0
    s.close()


def test_spill_to_disk_on_eviction_and_back_on_hit(disk_store):
    for i in range(3):
        put(disk_store, i)
    assert disk_store.tier_of(key(0)) == "disk"
    assert disk_store.tier_of(key(2)) == "cpu"
    events = kinds(disk_store.take_events())
    assert events[key(0)] == "stored"  # spilled before it was taken: still an advertisement
    ticket = disk_store.prepare_load(key(0))
    assert ticket.tier == "disk" and bytes(ticket.view) == data(0)
    disk_store.complete_load(ticket)
    assert disk_store.tier_of(key(0)) == "cpu"
    stats = disk_store.stats()
    assert stats.spills >= 1 and stats.evictions == 0 and stats.hits == 1
    assert sorted(disk_store.keys()) == [key(0), key(1), key(2)]


def test_disk_tier_eviction_is_reported_as_evicted(disk_store):
    for i in range(7):  # 2 in CPU, 4 on disk at most
        put(disk_store, i)
    # CPU holds 5 and 6; spilled chunks 1..4 fill the disk; 0 left the disk for 4
    assert [disk_store.tier_of(key(i)) for i in range(7)] == [None] + ["disk"] * 4 + ["cpu"] * 2
    assert kinds(disk_store.take_events())[key(0)] == "evicted"
    stats = disk_store.stats()
    assert stats.disk_bytes_used == stats.disk_bytes_cap
    assert (stats.chunks_cpu, stats.chunks_disk, stats.spills, stats.evictions) == (2, 4, 5, 1)


def test_restart_keeps_disk_chunks_and_hides_temp_files(tmp_path):
    cfg = StoreConfig(cpu_bytes=SLOT * 2, disk_dir=tmp_path, disk_bytes=1 << 20)
    s = ChunkStore(cfg, SLOT)
    for i in range(4):
        put(s, i)
    for i in range(2, 4):
        assert s.move(key(i), "disk")
    s.close()
    (tmp_path / f".{key(9).hex()}.abcd.tmp").write_bytes(b"torn write")

    s = ChunkStore(cfg, SLOT)
    assert sorted(s.keys()) == [key(i) for i in range(4)]
    assert not s.contains(key(9))
    assert not list(tmp_path.glob("*.tmp"))
    assert [get(s, i) for i in range(4)] == [data(i) for i in range(4)]
    assert kinds(s.take_events()) == {key(i): "stored" for i in range(4)}
    s.close()


def test_corrupt_disk_file_is_a_miss(disk_store, tmp_path):
    put(disk_store, 0)
    assert disk_store.move(key(0), "disk")
    path = tmp_path / (key(0).hex() + ".kvc")
    raw = bytearray(path.read_bytes())
    raw[HEADER.size] ^= 1
    path.write_bytes(bytes(raw))
    disk_store.take_events()
    with pytest.raises(ChunkMissingError, match="corrupt"):
        disk_store.prepare_load(key(0))
    assert not disk_store.contains(key(0)) and not path.exists()
    assert kinds(disk_store.take_events()) == {key(0): "evicted"}
    stats = disk_store.stats()
    assert (stats.misses, stats.pinned, stats.cpu_slots_used) == (1, 0, 0)


def test_move_between_tiers(disk_store):
    put(disk_store, 0)
    assert disk_store.move(key(0), "disk") and disk_store.tier_of(key(0)) == "disk"
    assert disk_store.stats().cpu_slots_used == 0
    assert disk_store.move(key(0), "cpu") and disk_store.tier_of(key(0)) == "cpu"
    assert disk_store.stats().hits == 0  # moves are not hits
    ticket = disk_store.prepare_load(key(0))
    assert not disk_store.move(key(0), "disk")  # in flight
    disk_store.complete_load(ticket)
    assert not disk_store.move(key(5), "cpu")


def test_move_to_disk_without_a_disk_tier_is_refused(store):
    put(store, 0)
    assert not store.move(key(0), "disk") and store.tier_of(key(0)) == "cpu"


def test_pinned_disk_chunk_survives_disk_pressure(disk_store):
    put(disk_store, 0)
    disk_store.move(key(0), "disk")
    assert disk_store.pin(key(0))
    for i in range(1, 12):
        put(disk_store, i)
    assert disk_store.contains(key(0)) and get(disk_store, 0) == data(0)


def test_concurrent_loads_of_a_disk_chunk_read_it_back_once(disk_store):
    put(disk_store, 0)
    disk_store.move(key(0), "disk")
    barrier, tickets = threading.Barrier(4), []

    def load() -> None:
        barrier.wait()
        tickets.append(disk_store.prepare_load(key(0)))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({t.slot for t in tickets}) == 1 and disk_store.stats().cpu_slots_used == 1
    assert all(bytes(t.view) == data(0) for t in tickets)
    for t in tickets:
        disk_store.complete_load(t)
    assert disk_store.stats().pinned == 0


def test_disk_chunk_with_no_free_slot_raises_store_full_and_stays_on_disk(disk_store):
    put(disk_store, 0)
    disk_store.move(key(0), "disk")
    put(disk_store, 1)
    put(disk_store, 2)
    tickets = [disk_store.prepare_load(key(1)), disk_store.prepare_load(key(2))]
    with pytest.raises(StoreFullError):
        disk_store.prepare_load(key(0))
    stats = disk_store.stats()
    assert disk_store.tier_of(key(0)) == "disk" and (stats.pinned, stats.misses) == (2, 1)
    for ticket in tickets:
        disk_store.complete_load(ticket)
    assert get(disk_store, 0) == data(0)


def test_clear_one_tier_keeps_copies_in_the_other(disk_store):
    put(disk_store, 0)
    disk_store.move(key(0), "disk")
    disk_store.move(key(0), "cpu")  # now in both tiers
    assert disk_store.clear("disk") == [key(0)]
    assert disk_store.tier_of(key(0)) == "cpu" and disk_store.stats().chunks_disk == 0
    assert disk_store.clear("cpu") == [key(0)] and not disk_store.contains(key(0))


def test_same_host_process_reads_a_committed_chunk(store):
    put(store, 3)
    ticket = store.prepare_load(key(3))
    script = (  # a bare interpreter: no torch import, so the test stays fast
        "import mmap, sys\n"
        "m = mmap.mmap(int(sys.argv[1]), 0, access=mmap.ACCESS_READ)\n"
        "off, n = int(sys.argv[2]), int(sys.argv[3])\n"
        "sys.stdout.write(m[off:off + n].hex())\n"
    )
    fd, size = store.pool.share_fd()
    try:
        args = [str(fd), str(store.pool.offset(ticket.slot)), str(ticket.length)]
        out = subprocess.run([sys.executable, "-c", script, *args], pass_fds=(fd,),
                             capture_output=True, text=True, check=True, timeout=60)
    finally:
        os.close(fd)
    store.complete_load(ticket)
    assert bytes.fromhex(out.stdout) == data(3)


def test_closed_store_refuses_work(store):
    put(store, 1)
    ticket = store.prepare_load(key(1))
    store.close()
    store.close()
    store.complete_load(ticket)  # a no-op after close
    with pytest.raises(StoreError, match="closed"):
        store.prepare_store(key(2))


def test_metadata_cost_is_measured(store):
    per_chunk = store.stats().metadata_bytes_per_chunk
    assert 100 < per_chunk < 1000


def test_concurrent_stores_and_loads_keep_bytes_intact(tmp_path):
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 8, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 16), SLOT)
    errors = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            i = rng.randrange(40)
            try:
                if rng.random() < 0.5:
                    ticket = s.prepare_store(key(i))
                    if ticket is not None:
                        ticket.view[:] = data(i)
                        s.commit_store(ticket)
                elif get(s, i) != data(i):
                    errors.append(i)
            except (ChunkMissingError, StoreFullError):
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to interleave inside store calls
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    stats = s.stats()
    assert errors == []
    assert stats.spills > 0 and stats.hits > 0 and stats.evictions > 0  # every path was exercised
    assert stats.pinned == 0 and stats.cpu_slots_used <= stats.cpu_slots_total
    assert stats.chunks_cpu == stats.cpu_slots_used  # no slot leaked
    assert stats.disk_bytes_used <= stats.disk_bytes_cap
    s.close()


# -- property test: random operation sequences against a model -------------

KEYS = st.integers(0, 7)
NUM_SLOTS = 3


class StoreMachine(RuleBasedStateMachine):
    with_disk = True

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        disk = Path(self.tmp.name) if self.with_disk else None
        cfg = StoreConfig(cpu_bytes=SLOT * NUM_SLOTS, disk_dir=disk, disk_bytes=(HEADER.size + SLOT) * 3)
        self.store = ChunkStore(cfg, SLOT)
        self.committed: dict[ChunkKey, bytes] = {}  # last bytes committed per key
        self.pending: dict[ChunkKey, tuple] = {}  # key -> (ticket, payload)
        self.loads: list = []
        self.pins: Counter = Counter()
        self.directory: set[ChunkKey] = set()  # what a peer replaying events believes
        self.version = 0

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def slots_all_pinned(self) -> bool:
        held = {k for k in self.pins if self.pins[k]} | {t.key for t in self.loads}
        in_cpu = {k for k in held if self.store.tier_of(k) == "cpu"}
        return len(self.pending) + len(in_cpu) == NUM_SLOTS

    @rule(i=KEYS, n=st.integers(0, SLOT))
    def prepare_store(self, i, n):
        k = key(i)
        try:
            ticket = self.store.prepare_store(k)
        except StoreFullError:
            assert self.slots_all_pinned()
            assert k not in self.pending
            return
        if ticket is None:
            assert k in self.pending or self.store.contains(k)
            return
        assert k not in self.pending and not self.store.contains(k)
        self.version += 1
        payload = bytes((self.version + j) % 256 for j in range(n))
        ticket.view[:n] = payload
        self.pending[k] = (ticket, payload)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), ok=st.booleans())
    def commit_store(self, data, ok):
        k = data.draw(st.sampled_from(sorted(self.pending)))
        ticket, payload = self.pending.pop(k)
        assert self.store.commit_store(ticket, ok=ok, length=len(payload)) is ok
        if ok:
            self.committed[k] = payload
            assert self.store.checksum(k) == xxhash.xxh3_64_intdigest(payload)
        assert self.store.contains(k) is ok

    @rule(i=KEYS)
    def prepare_load(self, i):
        k = key(i)
        visible = self.store.contains(k)
        try:
            ticket = self.store.prepare_load(k)
        except ChunkMissingError:
            assert not visible  # no file is corrupted here, so a visible chunk must load
            return
        except StoreFullError:
            assert self.slots_all_pinned()
            return
        assert visible and bytes(ticket.view) == self.committed[k]
        self.loads.append(ticket)

    @precondition(lambda self: self.loads)
    @rule(data=st.data())
    def complete_load(self, data):
        ticket = self.loads.pop(data.draw(st.integers(0, len(self.loads) - 1)))
        self.store.complete_load(ticket)

    @rule(i=KEYS)
    def pin(self, i):
        k = key(i)
        if self.store.pin(k):
            self.pins[k] += 1
        else:
            assert not self.store.contains(k)

    @rule(i=KEYS)
    def unpin(self, i):
        k = key(i)
        assert self.store.unpin(k) is (self.pins[k] > 0)
        if self.pins[k]:
            self.pins[k] -= 1

    @rule(i=KEYS)
    def remove(self, i):
        k = key(i)
        busy = self.pins[k] > 0 or any(t.key == k for t in self.loads)
        visible = self.store.contains(k)
        assert self.store.remove(k) is (visible and not busy)

    @rule(i=KEYS, tier=st.sampled_from(["cpu", "disk"]))
    def move(self, i, tier):
        k = key(i)
        if self.store.move(k, tier):
            assert self.store.tier_of(k) == tier

    @rule(tier=st.sampled_from([None, "cpu", "disk"]))
    def clear(self, tier):
        self.store.clear(tier)

    @invariant()
    def pool_never_exceeds_its_slots(self):
        stats = self.store.stats()
        assert stats.cpu_slots_used <= stats.cpu_slots_total == NUM_SLOTS
        assert stats.cpu_slots_used == stats.chunks_cpu + len(self.pending)  # no slot leaks
        assert stats.disk_bytes_used <= stats.disk_bytes_cap

    @invariant()
    def pinned_chunks_are_never_evicted(self):
        for k, n in self.pins.items():
            assert not n or self.store.contains(k)
        for ticket in self.loads:
            assert self.store.tier_of(ticket.key) == "cpu"

    @invariant()
    def only_committed_chunks_are_visible(self):
        keys = set(self.store.keys())
        assert keys <= set(self.committed)
        assert not keys & set(self.pending)
        for k in keys:
            assert self.store.checksum(k) == xxhash.xxh3_64_intdigest(self.committed[k])

    @invariant()
    def disk_only_chunks_have_their_file(self):
        for k in self.store.keys():
            if self.store.tier_of(k) == "disk":
                assert (Path(self.tmp.name) / f"{k.hex()}.kvc").is_file()

    @invariant()
    def events_replay_to_the_held_set(self):
        for event in self.store.take_events():
            if event.kind == "stored":
                self.directory.update(event.keys)
            elif event.kind == "spilled":
                assert self.directory.issuperset(event.keys)  # still held, already advertised
            else:
                self.directory.difference_update(event.keys)
        assert self.directory == set(self.store.keys())


class MemoryOnlyMachine(StoreMachine):
    with_disk = False


TestStoreProperties = StoreMachine.TestCase
TestStoreProperties.settings = settings(max_examples=40, stateful_step_count=40, deadline=None, database=None)
TestMemoryOnlyStoreProperties = MemoryOnlyMachine.TestCase
TestMemoryOnlyStoreProperties.settings = settings(max_examples=30, stateful_step_count=40, deadline=None, database=None)


def test_prepare_load_in_cpu_never_touches_the_disk(store, disk_store, monkeypatch):
    assert disk_store.has_disk_tier and not store.has_disk_tier
    put(disk_store, 0)
    put(disk_store, 1)
    assert disk_store.move(key(0), "disk")
    monkeypatch.setattr("kvmesh.store.disk_tier.DiskTier.read_into",
                        lambda *a: pytest.fail("read the disk"))
    before = disk_store.stats()
    assert disk_store.prepare_load_in_cpu(key(0)) is None  # on disk only
    after = disk_store.stats()
    assert (after.hits, after.misses, after.pinned) == (before.hits, before.misses, before.pinned)
    ticket = disk_store.prepare_load_in_cpu(key(1))
    assert bytes(ticket.view) == data(1) and disk_store.stats().hits == before.hits + 1
    disk_store.complete_load(ticket)
    with pytest.raises(ChunkMissingError):
        disk_store.prepare_load_in_cpu(key(9))
