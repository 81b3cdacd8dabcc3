"""Chunk codecs: fewer bytes per KV chunk in CPU pools, on disk and on the wire.

An encoded chunk is an envelope (`kvmesh.codecs.envelope`): odd length,
self-describing, checked before it is decoded. Codecs are lossless (byte
shuffle + a compressor: bit-exact) or lossy (fp8, int8: fixed-ratio
quantization); a lossy chunk lives only in a namespace that names its codec,
so exact engines never see one.
"""

from kvmesh.codecs.base import Codec, FixedRatioCodec
from kvmesh.codecs.envelope import (
    HEADER_BYTES, EnvelopeHeader, decode_chunk, encode_chunk, encoded_bound, is_encoded,
    read_header,
)
from kvmesh.codecs.geometry import ChunkGeometry
from kvmesh.codecs.registry import CODECS, RAW, codec_for_setting, get_codec
from kvmesh.codecs.views import kv_views

__all__ = ["CODECS", "HEADER_BYTES", "RAW", "ChunkGeometry", "Codec", "EnvelopeHeader",
           "FixedRatioCodec", "codec_for_setting", "decode_chunk", "encode_chunk",
           "encoded_bound", "get_codec", "is_encoded", "kv_views", "read_header"]
