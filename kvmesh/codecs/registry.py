"""The codecs by name and by envelope id.

ONLY APPEND codec ids: they are written into stored and sent chunks, so an id
once used means that codec forever.
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
