"""The drift benchmark's negative control, and how it is registered: in one process only."""

from __future__ import annotations

import pytest
import torch

from kvmesh.bench import codec_broken
from kvmesh.codecs import CODECS, decode_chunk, encode_chunk, kv_views
from kvmesh.codecs import registry
from kvmesh.codecs.fp8 import Fp8Codec
from kvmesh.config import CodecConfig
from kvmesh.errors import CodecError, ConfigError

from tests.codecs.kv import geometry, random_chunk

G = geometry(dtype=torch.bfloat16, head_dim=16)
BLOCKS = 3


@pytest.fixture(autouse=True)
def registry_restored():
    """Every test here leaves the registry as it found it (the same dict
    objects, which other modules imported by name)."""
    saved = dict(registry.CODECS), dict(registry.CODECS_BY_ID)
    yield
    for live, before in zip((registry.CODECS, registry.CODECS_BY_ID), saved):
        live.clear()
        live.update(before)


def test_the_shipped_registry_does_not_hold_it():
    assert codec_broken.NAME not in CODECS
    assert codec_broken.BrokenFp8Codec.codec_id not in registry.CODECS_BY_ID


def test_its_envelopes_decode_to_fp8_with_v_doubled():
    codec_broken.install()
    raw, _, _ = random_chunk(G, BLOCKS)
    fp8 = decode_chunk(encode_chunk(raw, "fp8", G, BLOCKS), G, "fp8")
    broken = decode_chunk(encode_chunk(raw, codec_broken.NAME, G, BLOCKS), G, codec_broken.NAME)
    (k_fp8, v_fp8), (k_bad, v_bad) = kv_views(fp8, G, BLOCKS), kv_views(broken, G, BLOCKS)
    assert torch.equal(k_bad, k_fp8)
    assert torch.equal(v_bad.float(), v_fp8.float() * codec_broken.V_SCALE_FACTOR)
    assert v_fp8.abs().max() > 0


def test_once_installed_a_setting_may_name_it_as_the_lossy_codec():
    with pytest.raises(ConfigError):
        CodecConfig(cpu=codec_broken.NAME)
    codec_broken.install()
    codec_broken.install()  # idempotent
    assert CodecConfig(cpu=codec_broken.NAME).lossy == codec_broken.NAME


def test_where_it_is_not_registered_its_envelopes_are_misses():
    codec_broken.install()
    raw, _, _ = random_chunk(G, BLOCKS)
    envelope = encode_chunk(raw, codec_broken.NAME, G, BLOCKS)
    del registry.CODECS_BY_ID[codec_broken.BrokenFp8Codec.codec_id]
    del registry.CODECS[codec_broken.NAME]
    with pytest.raises(CodecError):
        decode_chunk(envelope, G, codec_broken.NAME)


@pytest.mark.parametrize("codec_id", [0, 1, 127, 256])
def test_local_codecs_take_ids_from_128_to_255(codec_id):
    codec = Fp8Codec()
    codec.name, codec.codec_id = "mine", codec_id
    with pytest.raises(ConfigError, match="128..255"):
        registry.register_local_codec(codec)
    assert "mine" not in registry.CODECS


def test_a_taken_name_or_id_is_refused():
    first = codec_broken.BrokenFp8Codec()
    registry.register_local_codec(first)
    same_id, same_name, raw_name = Fp8Codec(), Fp8Codec(), Fp8Codec()
    same_id.name, same_id.codec_id = "other", first.codec_id
    same_name.codec_id = 201  # name "fp8": shipped
    raw_name.name, raw_name.codec_id = "none", 202
    for codec in (same_id, same_name, raw_name):
        with pytest.raises(ConfigError, match="taken"):
            registry.register_local_codec(codec)
    assert registry.CODECS_BY_ID[first.codec_id] is first and registry.CODECS["fp8"].codec_id == 1
