"""This peer's codecs: what it spills and sends encoded, and what it may recode with.

Built once per peer from its settings (`CodecConfig`: KVMESH_CODEC_DISK and
KVMESH_CODEC_WIRE; KVMESH_CODEC_CPU is its engine's, whose saves encode) and
its chunk geometry (`ChunkGeometry.from_namespace` of its engine's
namespace). A standalone `kvmesh peer` holds opaque bytes ("opaque" layout,
uint8): it has no geometry, and so no codec.

Refused with a ConfigError naming the setting (or the request's codec):
- any codec without a geometry: a lossy one must find K and V in the bytes,
  and a lossless one shuffles them by element size;
- a lossy codec other than the namespace's `lossy_codec`: its envelopes
  would be kept under keys that promise other KV (exact, or another codec's).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmesh.codecs import ChunkGeometry, codec_for_setting
from kvmesh.errors import ConfigError
from kvmesh.hashring.keys import KeyNamespace
from kvmesh.peers.chunk_encoder import ChunkEncoder


@dataclass(frozen=True, slots=True)
class PeerCodecs:
    geometry: ChunkGeometry | None  # None: this peer's chunks are opaque bytes
    lossy_codec: str  # the namespace's: the one lossy codec accepted here ("": exact)
    disk: ChunkEncoder | None = None  # spills write envelopes
    wire: ChunkEncoder | None = None  # streamed pulls send envelopes

    @classmethod
    def build(cls, settings, namespace: KeyNamespace | None) -> "PeerCodecs":
        """From a `CodecConfig` (its `disk` and `wire` names) and the engine's
        namespace (None: no engine). ConfigError as the module docstring says."""
        geometry = ChunkGeometry.from_namespace(namespace) if namespace is not None else None
        lossy = namespace.lossy_codec if namespace is not None else ""
        bare = cls(geometry, lossy)
        return cls(geometry, lossy, bare.encoder(settings.disk, "KVMESH_CODEC_DISK"),
                   bare.encoder(settings.wire, "KVMESH_CODEC_WIRE"))

    def encoder(self, name: str, what: str = "codec") -> ChunkEncoder | None:
        """An encoder of this peer's chunks for codec `name` (None for "none");
        ConfigError naming `what` when this peer must not write it."""
        try:
            codec = codec_for_setting(name)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        if codec is None:
            return None
        if self.geometry is None:
            raise ConfigError(f"{what}={name}: this peer's chunks are opaque bytes (a standalone "
                              "peer, or a KV layout or dtype codecs cannot read), so no codec can "
                              "find their K and V or their element size; use none")
        if not codec.lossless and codec.name != self.lossy_codec:
            raise ConfigError(f"{what}={name} is lossy, and this peer's keys name "
                              f"{repr(self.lossy_codec) + ' KV' if self.lossy_codec else 'exact KV'}: "
                              f"{name} envelopes may only be kept under keys of {name} KV")
        return ChunkEncoder(codec, self.geometry)

    def recoder(self, name: str) -> ChunkEncoder:
        """The encoder of a recode (/compress) with codec `name`: as `encoder`,
        and "none" is refused too (chunks are never decoded back to raw here)."""
        encoder = self.encoder(name, "codec")
        if encoder is None:
            raise ConfigError(f"codec={name}: name a codec to encode with (held chunks are "
                              "not decoded back to raw bytes)")
        return encoder
