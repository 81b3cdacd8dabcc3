"""The chunk store with encoded chunks: encoded spills, read backs and recodes.

The store never decodes, so an encoder here is a stand-in (`HalfEncoder`:
the first half of a raw chunk plus one byte, an odd length as an envelope
has); the peer tests run the real codecs.
"""

from __future__ import annotations

import threading
import time

import pytest
import xxhash

from kvmesh.config import StoreConfig
from kvmesh.store import recode as r
from kvmesh.store.chunk_codec import Encoded
from kvmesh.store.chunk_store import ChunkStore
from kvmesh.store.disk_tier import HEADER, DiskTier
from kvmesh.types import ChunkKey

SLOT = 64


class HalfEncoder:
    name = "half"

    def __init__(self, during=None) -> None:
        self.calls = 0
        self.during = during  # run inside encode (a load racing the recode)

    def encode(self, raw: memoryview) -> Encoded | None:
        self.calls += 1
        if self.during is not None:
            self.during()
        if len(raw) % 2:
            return None
        out = memoryview(bytearray(bytes(raw[:len(raw) // 2]) + b"\x01"))
        return Encoded(out, xxhash.xxh3_64_intdigest(out))


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "big"))


def data(i: int, n: int = SLOT) -> bytes:
    return bytes((7 * i + j) % 256 for j in range(n))


def envelope(i: int, n: int = SLOT) -> bytes:
    return data(i, n)[:n // 2] + b"\x01"


def put(store: ChunkStore, i: int, payload: bytes | None = None) -> None:
    payload = data(i) if payload is None else payload
    ticket = store.prepare_store(key(i))
    ticket.view[:len(payload)] = payload
    assert store.commit_store(ticket, length=len(payload))


def get(store: ChunkStore, i: int) -> tuple[bytes, str]:
    ticket = store.prepare_load(key(i))
    try:
        assert ticket.checksum == xxhash.xxh3_64_intdigest(ticket.view)
        return bytes(ticket.view), ticket.tier
    finally:
        store.complete_load(ticket)


def file_size(tmp_path, i: int) -> int:
    return (tmp_path / f"{key(i).hex()}.kvc").stat().st_size


@pytest.fixture
def disk_store(tmp_path):
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 2, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 8),
                   SLOT, disk_codec=HalfEncoder())
    yield s
    s.close()


@pytest.fixture
def plain_store(tmp_path):
    s = ChunkStore(StoreConfig(cpu_bytes=SLOT * 4, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 8),
                   SLOT)
    yield s
    s.close()


# ---- encoded spills ----------------------------------------------------------------

def test_a_spill_writes_the_envelope_and_the_read_back_keeps_it(disk_store, tmp_path):
    for i in range(3):
        put(disk_store, i)  # the third evicts chunk 0 to disk
    assert disk_store.tier_of(key(0)) == "disk"
    assert file_size(tmp_path, 0) == HEADER.size + SLOT // 2 + 1
    stats = disk_store.stats()
    assert stats.disk_bytes_saved == {"half": SLOT - (SLOT // 2 + 1)}
    assert stats.disk_bytes_used == HEADER.size + SLOT // 2 + 1
    # the record now stands for the file: its checksum is the envelope's
    assert disk_store.checksum(key(0)) == xxhash.xxh3_64_intdigest(envelope(0))
    assert get(disk_store, 0) == (envelope(0), "disk")  # read back: still the envelope
    assert get(disk_store, 0) == (envelope(0), "cpu")
    # chunks that stayed in CPU are raw, as saved
    assert get(disk_store, 2) == (data(2), "cpu")


def test_an_envelope_spills_as_it_is(disk_store, tmp_path):
    odd = data(0, 33)
    put(disk_store, 0, odd)
    for i in (1, 2):
        put(disk_store, i)
    assert file_size(tmp_path, 0) == HEADER.size + 33
    assert disk_store.stats().disk_bytes_saved == {}
    assert get(disk_store, 0) == (odd, "disk")


def test_an_envelope_read_back_spills_again_without_a_write(disk_store, tmp_path, monkeypatch):
    for i in range(3):
        put(disk_store, i)
    assert get(disk_store, 0)[1] == "disk"  # back in CPU, its file kept (the tier is inclusive)
    writes = []
    monkeypatch.setattr(DiskTier, "write_reserved", lambda *a, **k: writes.append(a))
    disk_store.move(key(0), "disk")
    assert writes == [] and disk_store.tier_of(key(0)) == "disk"
    assert get(disk_store, 0) == (envelope(0), "disk")


def test_a_chunk_loaded_during_its_spill_stays_raw_in_cpu_until_it_leaves(tmp_path):
    loads = []
    codec = HalfEncoder()
    store = ChunkStore(StoreConfig(cpu_bytes=SLOT * 2, disk_dir=tmp_path,
                                   disk_bytes=(HEADER.size + SLOT) * 8), SLOT, disk_codec=codec)
    try:
        for i in range(2):
            put(store, i)
        codec.during = lambda: loads.append(store.prepare_load(key(0)))  # pinned mid-spill
        assert store.move(key(0), "disk") is False  # written, but a load keeps it in CPU
        codec.during = None
        assert bytes(loads[0].view) == data(0)
        store.complete_load(loads[0])
        assert store.checksum(key(0)) == xxhash.xxh3_64_intdigest(data(0))
        assert get(store, 0) == (data(0), "cpu")  # the slot is still the raw chunk
        assert file_size(tmp_path, 0) == HEADER.size + SLOT // 2 + 1
        assert store.move(key(0), "disk")  # no write: the file is there; the record takes it
        assert store.checksum(key(0)) == xxhash.xxh3_64_intdigest(envelope(0))
        assert get(store, 0) == (envelope(0), "disk")
    finally:
        store.close()


def test_a_restart_adopts_encoded_files(tmp_path):
    config = StoreConfig(cpu_bytes=SLOT * 2, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 8)
    store = ChunkStore(config, SLOT, disk_codec=HalfEncoder())
    for i in range(3):
        put(store, i)
    store.close()
    again = ChunkStore(config, SLOT)
    try:
        assert get(again, 0) == (envelope(0), "disk")
    finally:
        again.close()


# ---- recode ------------------------------------------------------------------------

def test_recode_rewrites_a_cpu_chunk_in_its_own_slot(plain_store):
    put(plain_store, 1)
    ticket = plain_store.prepare_load(key(1))
    slot = ticket.slot
    plain_store.complete_load(ticket)
    assert plain_store.recode(key(1), HalfEncoder()) == r.Recoded(r.RECODED, SLOT, SLOT // 2 + 1)
    ticket = plain_store.prepare_load(key(1))
    try:
        assert ticket.slot == slot and bytes(ticket.view) == envelope(1)
        assert ticket.length == SLOT // 2 + 1
        assert ticket.checksum == xxhash.xxh3_64_intdigest(envelope(1))
    finally:
        plain_store.complete_load(ticket)
    assert plain_store.stats().recode_bytes_saved == {"half": SLOT - (SLOT // 2 + 1)}
    assert plain_store.recode(key(1), HalfEncoder()).outcome == r.ENCODED


def test_recode_of_an_operator_pinned_chunk(plain_store):
    put(plain_store, 1)
    assert plain_store.pin(key(1))
    assert plain_store.recode(key(1), HalfEncoder()).outcome == r.RECODED
    assert get(plain_store, 1)[0] == envelope(1)
    assert plain_store.stats().pinned == 1  # the operator's pin is still there
    assert not plain_store.remove(key(1))


def test_recode_skips_a_chunk_in_flight_and_changes_nothing(plain_store):
    put(plain_store, 1)
    ticket = plain_store.prepare_load(key(1))  # being served, say
    encoder = HalfEncoder()
    assert plain_store.recode(key(1), encoder) == r.Recoded(r.BUSY, SLOT, SLOT)
    assert encoder.calls == 0 and bytes(ticket.view) == data(1)
    plain_store.complete_load(ticket)
    store_ticket = plain_store.prepare_store(key(2))  # being stored: not even visible
    assert plain_store.recode(key(2), encoder).outcome == r.NOT_HELD
    plain_store.commit_store(store_ticket, ok=False)
    assert get(plain_store, 1)[0] == data(1)
    assert plain_store.stats().recode_bytes_saved == {}


def test_a_load_pinning_the_chunk_during_the_encode_makes_it_busy(plain_store):
    put(plain_store, 1)
    tickets = []
    encoder = HalfEncoder(during=lambda: tickets.append(plain_store.prepare_load(key(1))))
    assert plain_store.recode(key(1), encoder).outcome == r.BUSY
    assert bytes(tickets[0].view) == data(1)  # never torn under the reader
    plain_store.complete_load(tickets[0])
    assert get(plain_store, 1)[0] == data(1) and plain_store.checksum(key(1)) == xxhash.xxh3_64_intdigest(data(1))


def test_recode_outcomes_that_change_nothing(plain_store):
    put(plain_store, 1, data(1, 33))
    assert plain_store.recode(key(1), HalfEncoder()) == r.Recoded(r.ENCODED, 33, 33)
    assert plain_store.recode(key(9), HalfEncoder()) == r.Recoded(r.NOT_HELD)

    class Useless(HalfEncoder):
        def encode(self, raw):
            return None

    put(plain_store, 2)
    assert plain_store.recode(key(2), Useless()) == r.Recoded(r.KEPT, SLOT, SLOT)
    assert get(plain_store, 2)[0] == data(2)


def test_recode_rewrites_a_disk_only_chunk_file(plain_store, tmp_path):
    put(plain_store, 1)
    assert plain_store.move(key(1), "disk")
    assert file_size(tmp_path, 1) == HEADER.size + SLOT
    assert plain_store.recode(key(1), HalfEncoder()).outcome == r.RECODED
    assert file_size(tmp_path, 1) == HEADER.size + SLOT // 2 + 1
    assert plain_store.tier_of(key(1)) == "disk"
    assert plain_store.stats().disk_bytes_used == HEADER.size + SLOT // 2 + 1
    assert get(plain_store, 1) == (envelope(1), "disk")


def test_recode_rewrites_both_copies_of_a_chunk_in_both_tiers(plain_store, tmp_path):
    put(plain_store, 1)
    assert plain_store.move(key(1), "disk") and plain_store.move(key(1), "cpu")
    assert plain_store.recode(key(1), HalfEncoder()).outcome == r.RECODED
    assert file_size(tmp_path, 1) == HEADER.size + SLOT // 2 + 1
    assert get(plain_store, 1) == (envelope(1), "cpu")
    assert plain_store.move(key(1), "disk")
    assert get(plain_store, 1) == (envelope(1), "disk")


def test_a_load_during_a_file_rewrite_waits_for_the_new_bytes(plain_store, monkeypatch):
    put(plain_store, 1)
    assert plain_store.move(key(1), "disk")
    writing, slow = threading.Event(), DiskTier.write_reserved

    def slow_write(self, *args, **kwargs):
        writing.set()
        time.sleep(0.3)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(DiskTier, "write_reserved", slow_write)
    done = []
    recoding = threading.Thread(target=lambda: done.append(plain_store.recode(key(1), HalfEncoder())))
    recoding.start()
    assert writing.wait(5)
    assert plain_store.prepare_load_in_cpu(key(1)) is None  # the loop is never made to wait
    started = time.perf_counter()
    got = get(plain_store, 1)
    waited = time.perf_counter() - started
    recoding.join()
    assert done[0].outcome == r.RECODED
    assert got == (envelope(1), "disk") and waited > 0.1


def test_a_corrupt_file_found_by_a_recode_is_a_miss(plain_store, tmp_path):
    put(plain_store, 1)
    assert plain_store.move(key(1), "disk")
    path = tmp_path / f"{key(1).hex()}.kvc"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert plain_store.recode(key(1), HalfEncoder()).outcome == r.NOT_HELD
    assert plain_store.tier_of(key(1)) is None and not path.exists()


def test_concurrent_stores_loads_spills_and_recodes_never_tear_a_chunk(tmp_path):
    """Threads store, load and recode 40 keys through 6 slots and a disk tier
    that spills encoded: every load reads a chunk whole (its raw bytes or its
    envelope, under their own checksum), whatever ran meanwhile."""
    import sys

    from kvmesh.errors import ChunkMissingError, StoreFullError

    store = ChunkStore(StoreConfig(cpu_bytes=SLOT * 6, disk_dir=tmp_path, disk_bytes=(HEADER.size + SLOT) * 20),
                       SLOT, disk_codec=HalfEncoder())
    errors, outcomes = [], []

    def worker(seed: int) -> None:
        import random
        rng, encoder = random.Random(seed), HalfEncoder()
        for _ in range(300):
            i, roll = rng.randrange(40), rng.random()
            try:
                if roll < 0.4:
                    ticket = store.prepare_store(key(i))
                    if ticket is not None:
                        ticket.view[:] = data(i)
                        store.commit_store(ticket)
                elif roll < 0.75:
                    ticket = store.prepare_load(key(i))
                    got = bytes(ticket.view)
                    if got not in (data(i), envelope(i)) or ticket.checksum != xxhash.xxh3_64_intdigest(got):
                        errors.append(i)
                    store.complete_load(ticket)
                else:
                    outcomes.append(store.recode(key(i), encoder).outcome)
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
    stats = store.stats()
    assert errors == []
    assert {r.RECODED, r.ENCODED} <= set(outcomes) and stats.spills > 0  # the paths were taken
    assert stats.pinned == 0 and stats.chunks_cpu == stats.cpu_slots_used  # no pin, no slot leaked
    for i in range(40):
        if store.tier_of(key(i)) is not None:
            assert get(store, i)[0] in (data(i), envelope(i))
    store.close()
