"""The codecs by name and by envelope id.

ONLY APPEND codec ids: they are written into stored and sent chunks, so an id
once used means that codec forever. Shipped codecs take ids below
LOCAL_IDS; ids from LOCAL_IDS up belong to codecs a process adds for itself
(`register_local_codec`: a benchmark's deliberately broken codec, say), so
no shipped codec can ever share one.
"""

from __future__ import annotations

from kvmesh.codecs.base import Codec
from kvmesh.codecs.fp8 import Fp8Codec
from kvmesh.codecs.int8 import Int8Codec
from kvmesh.codecs.lossless import ZstdCodec
from kvmesh.errors import ConfigError

RAW = "none"  # a setting, not a codec: chunks stay raw bytes

CODECS: dict[str, Codec] = {codec.name: codec for codec in (Fp8Codec(), Int8Codec(), ZstdCodec())}
CODECS_BY_ID: dict[int, Codec] = {codec.codec_id: codec for codec in CODECS.values()}
LOCAL_IDS = 128  # codec ids 128..255: process-local codecs, never shipped


def register_local_codec(codec: Codec) -> None:
    """Make `codec` known to this process only (settings, envelopes), for
    benchmarks and tests; nothing is written anywhere else, so its envelopes
    are unknown codecs (misses) to every other process. Call before the
    engine or peer reads its settings. ConfigError for an id below
    LOCAL_IDS or past a byte, or a name or id already taken."""
    if not LOCAL_IDS <= codec.codec_id <= 0xFF:
        raise ConfigError(f"codec {codec.name!r}: a local codec's id must be in "
                          f"{LOCAL_IDS}..255, not {codec.codec_id}")
    if codec.name in CODECS or codec.name == RAW or codec.codec_id in CODECS_BY_ID:
        raise ConfigError(f"codec {codec.name!r} (id {codec.codec_id}): name or id taken")
    CODECS[codec.name] = codec
    CODECS_BY_ID[codec.codec_id] = codec


def get_codec(name: str) -> Codec:
    """The codec called `name`; ConfigError for any other name ("none" included:
    see `codec_for_setting`)."""
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; known: {sorted(CODECS)} "
                          f"(or {RAW!r} for raw chunks)") from None


def codec_for_setting(name: str) -> Codec | None:
    """A KVMESH_CODEC_* value: None for "none" (raw), else `get_codec(name)`."""
    return None if name == RAW else get_codec(name)
