"""Codecs on the peer side, with in-process peers over real TCP: encoded
spills, encoded cross-host pulls, recodes, and the codecs a peer refuses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kvmesh.codecs import decode_chunk, is_encoded
from kvmesh.config import CodecConfig
from kvmesh.errors import CodecError, ConfigError
from kvmesh.hashring.keys import ChunkHasher
from kvmesh.peers.codec_settings import PeerCodecs
from kvmesh.peers.peer import Peer
from kvmesh.peers.standalone import standalone_hasher
from kvmesh.store import recode as r
from tests.peers.codec_peers import (EXACT, FP8, GEOMETRY, SLOT, load, peer_config, save, start_peer,
                                     wait_advertised)

pytestmark = pytest.mark.timeout(120)


def decoded(data: bytes, lossy: str = "") -> torch.Tensor:
    return decode_chunk(bytearray(data), GEOMETRY, lossy)


# ---- settings a peer refuses ---------------------------------------------------------

@pytest.mark.parametrize("setting", [CodecConfig(disk="zstd"), CodecConfig(wire="zstd"),
                                     CodecConfig(wire="fp8")])
def test_a_standalone_peer_refuses_codecs(setting):
    config = peer_config(setting)
    with pytest.raises(ConfigError, match="opaque bytes"):
        Peer(config, standalone_hasher(config, SLOT), SLOT)


@pytest.mark.parametrize("variable, codec", [("KVMESH_CODEC_DISK", "zstd"), ("KVMESH_CODEC_WIRE", "fp8")])
def test_kvmesh_peer_refuses_a_codec_with_a_clear_error(variable, codec, tmp_path):
    env = {**os.environ, variable: codec, "KVMESH_RUN_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "kvmesh", "peer"], input='{"op": "exit"}\n', env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"kvmesh peer: {variable}={codec}: this peer's chunks are opaque bytes")
    assert "Traceback" not in done.stderr


def test_a_lossy_codec_must_be_the_namespaces():
    with pytest.raises(ConfigError, match="KVMESH_CODEC_WIRE=fp8 is lossy.*exact KV"):
        PeerCodecs.build(CodecConfig(wire="fp8"), EXACT)
    with pytest.raises(ConfigError, match="KVMESH_CODEC_DISK=int8 is lossy.*'fp8' KV"):
        PeerCodecs.build(CodecConfig(disk="int8"), FP8)
    codecs = PeerCodecs.build(CodecConfig(disk="zstd", wire="fp8"), FP8)
    assert (codecs.disk.name, codecs.wire.name, codecs.geometry) == ("zstd", "fp8", GEOMETRY)
    assert PeerCodecs.build(CodecConfig(), EXACT).disk is None


# ---- disk ----------------------------------------------------------------------------

def test_spills_are_encoded_and_read_back_as_envelopes_that_decode_bit_exact(tmp_path):
    handle = start_peer(peer_config(CodecConfig(disk="zstd"), disk_dir=tmp_path, cpu_slots=2))
    try:
        keys, chunks = save(handle, 5)  # three spill
        stats = handle.peer.store.stats()
        spilled = [k for k in keys if handle.peer.store.tier_of(k) == "disk"]
        assert len(spilled) == 3 and stats.spills == 3
        sizes = [(tmp_path / f"{k.hex()}.kvc").stat().st_size for k in spilled]
        saved = stats.disk_bytes_saved["zstd"]
        assert saved > 0 and stats.disk_bytes_used == sum(sizes) == 3 * (SLOT + 48) - saved
        loaded = [load(handle, [key])[0] for key in keys]  # two slots: one read back at a time
        for (data, source), chunk, key in zip(loaded, chunks, keys):
            assert data is not None
            if key in spilled:  # (reading them back spills the others in turn)
                assert source == "disk" and is_encoded(len(data)) and len(data) < SLOT
            if is_encoded(len(data)):
                assert torch.equal(decoded(data), chunk)
            else:
                assert source == "cpu" and data == chunk.numpy().tobytes()
    finally:
        handle.close()


# ---- wire ----------------------------------------------------------------------------

@pytest.mark.parametrize("codec,namespace", [("zstd", EXACT), ("fp8", FP8)])
def test_a_tcp_pull_sends_envelopes_that_decode(codec, namespace):
    holder = start_peer(peer_config(CodecConfig(wire=codec)), namespace)
    puller = start_peer(peer_config(seed=holder.peer_id), namespace)
    try:
        keys, chunks = save(holder, 8)
        wait_advertised(puller, keys)
        loaded = load(puller, keys)
        assert [source for _, source in loaded] == [holder.peer_id] * 8
        pulled, served = puller.counters()["bytes_pulled"], holder.counters()["bytes_served"]
        saved = holder.counters()["wire_bytes_saved"][codec]
        assert pulled == served == sum(len(d) for d, _ in loaded) == 8 * SLOT - saved
        assert pulled < (0.8 if codec == "zstd" else 0.55) * 8 * SLOT
        print(f"{codec}: {pulled} bytes pulled for {8 * SLOT} raw ({pulled / (8 * SLOT):.2f})")
        for (data, _), chunk in zip(loaded, chunks):
            assert is_encoded(len(data))
            out = decoded(data, namespace.lossy_codec)
            if codec == "zstd":
                assert torch.equal(out, chunk)
            else:  # fp8 e4m3: within 1/16 of each (token, head) row's largest value
                error = (out.view(torch.bfloat16).float() - chunk.view(torch.bfloat16).float()).abs()
                assert 0 < error.max() <= chunk.view(torch.bfloat16).float().abs().max() / 16
        # held envelopes are served as they are: a second puller gets the same bytes
        again = start_peer(peer_config(seed=holder.peer_id), namespace)
        try:
            wait_advertised(again, keys)
            assert [d for d, _ in load(again, keys)] == [d for d, _ in loaded]
        finally:
            again.close()
    finally:
        puller.close()
        holder.close()


def test_without_a_wire_codec_chunks_go_raw():
    holder = start_peer(peer_config())
    puller = start_peer(peer_config(seed=holder.peer_id))
    try:
        keys, chunks = save(holder, 4)
        wait_advertised(puller, keys)
        loaded = load(puller, keys)
        assert [d for d, _ in loaded] == [c.numpy().tobytes() for c in chunks]
        assert puller.counters()["bytes_pulled"] == 4 * SLOT
        assert holder.counters()["wire_bytes_saved"] == {}
    finally:
        puller.close()
        holder.close()


def test_a_corrupt_envelope_in_the_holders_store_is_a_miss():
    holder = start_peer(peer_config())
    puller = start_peer(peer_config(seed=holder.peer_id))
    try:
        keys, chunks = save(holder, 2)
        outcomes = holder.call(holder.peer.compress(keys, "zstd"))
        assert [o.outcome for o in outcomes] == [r.RECODED] * 2
        store = holder.peer.store
        ticket = store.prepare_load(keys[0])
        slot, length = ticket.slot, ticket.length
        store.complete_load(ticket)
        store._pool.view(slot)[length // 2] ^= 0xFF  # a flipped bit, after its checksum was taken
        wait_advertised(puller, keys)
        loaded = load(puller, keys)
        assert loaded[0] == (None, "") and store.tier_of(keys[0]) == "cpu"  # refused: a miss
        assert torch.equal(decoded(loaded[1][0]), chunks[1])
        assert puller.peer.store.tier_of(keys[0]) is None  # nothing of it was kept
    finally:
        puller.close()
        holder.close()


# ---- recode ----------------------------------------------------------------------------

def test_compress_idle_pinned_and_in_flight_chunks(tmp_path):
    handle = start_peer(peer_config(disk_dir=tmp_path))
    peer = handle.peer
    try:
        keys, chunks = save(handle, 4)
        assert peer.pin(keys[1:2]) == [True]
        busy = peer.open_loaded(keys[2])  # being read (a load, or a serve)
        assert handle.call(peer.move(keys[3:], "disk")) == [True]
        outcomes = handle.call(peer.compress(keys, "zstd"), 30)
        assert [o.outcome for o in outcomes] == [r.RECODED, r.RECODED, r.BUSY, r.RECODED]
        assert bytes(busy.view) == chunks[2].numpy().tobytes()  # never torn under its reader
        peer.close_loaded(busy)
        saved = sum(o.bytes_before - o.bytes_after for o in outcomes)
        assert peer.store.stats().recode_bytes_saved == {"zstd": saved} and saved > 0
        assert peer.store.tier_of(keys[3]) == "disk" and peer.store.stats().pinned == 1
        loaded = load(handle, keys)
        for i in (0, 1, 3):
            assert len(loaded[i][0]) == outcomes[i].bytes_after
            assert torch.equal(decoded(loaded[i][0]), chunks[i])
        assert loaded[2][0] == chunks[2].numpy().tobytes()
    finally:
        handle.close()


@pytest.mark.parametrize("codec,match", [("fp8", "lossy"), ("int8", "lossy"), ("none", "name a codec"),
                                         ("lz5", "unknown codec")])
def test_compress_refuses_codecs_this_peer_must_not_write(codec, match):
    handle = start_peer(peer_config())
    try:
        keys, chunks = save(handle, 2)
        with pytest.raises(ConfigError, match=match):
            handle.call(handle.peer.compress(keys, codec))
        assert [d for d, _ in load(handle, keys)] == [c.numpy().tobytes() for c in chunks]
        assert handle.peer.store.stats().recode_bytes_saved == {}
    finally:
        handle.close()


def test_a_lossy_namespace_compresses_with_its_own_codec_only():
    handle = start_peer(peer_config(), FP8)
    try:
        keys, chunks = save(handle, 2)
        with pytest.raises(ConfigError, match="lossy"):
            handle.call(handle.peer.compress(keys, "int8"))
        assert [o.outcome for o in handle.call(handle.peer.compress(keys, "fp8"))] == [r.RECODED] * 2
        data = load(handle, keys)[0][0]
        assert len(data) < 0.55 * SLOT
        with pytest.raises(CodecError, match="not accepted"):  # an exact reader refuses it
            decoded(data, "")
        assert decoded(data, "fp8").numel() == SLOT
    finally:
        handle.close()


def test_an_exact_and_a_lossy_engine_share_no_key():
    assert ChunkHasher(EXACT).keys(list(range(64))) != ChunkHasher(FP8).keys(list(range(64)))
