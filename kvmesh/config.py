"""Every kvmesh setting, read from `KVMESH_*` variables in this one module.

Components receive these frozen dataclasses and never read the environment
themselves. Parsing is strict: a malformed value raises `ConfigError` naming
the variable, and booleans accept only 1/0, true/false, yes/no, on/off.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from kvmesh.errors import ConfigError
from kvmesh.types import PeerAddress

TRANSPORTS = ("auto", "tcp", "shm", "ucx")
SHM_VERIFY_MODES = ("lease", "checksum")
DISCOVERY_MODES = ("static", "dns", "multicast")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20,
               "mb": 10**6, "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")


def parse_size(name: str, text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"{name}={text!r}: expected a byte size such as 512MiB or 2GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value}: must be in [{lo}, {hi}]")
    return value


def parse_float(name: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value}: must be in [{lo}, {hi}]")
    return value


def parse_choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return value


def parse_codec_name(name: str, text: str) -> str:
    """A codec's name, lowercased; empty means "none" (checked by CodecConfig)."""
    return text.strip().lower() or "none"


def parse_seeds(name: str, text: str) -> tuple[PeerAddress, ...]:
    try:
        return tuple(PeerAddress.parse(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse_host_names(name: str, text: str) -> tuple[str, ...]:
    """Comma-separated host names or addresses, no ports: lowercased, without a trailing dot."""
    names = tuple(h.strip().lower().strip("[]").rstrip(".") for h in text.split(",") if h.strip())
    for host in names:
        if not (_HOST_NAME.fullmatch(host) or _is_ipv6(host)):
            raise ConfigError(f"{name}: {host!r} is not a host name or address (no ports)")
    return names


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_address(name: str, text: str) -> PeerAddress:
    try:
        return PeerAddress.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    cpu_bytes: int = 1 << 30
    disk_dir: Path | None = None
    disk_bytes: int = 8 << 30
    prefault: bool = False  # fault the CPU pool's pages in at startup (see store/prefault.py)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    host: str = "127.0.0.1"  # TCP listener and UDP gossip socket, on one port number
    port: int = 0  # 0: pick a free port
    seeds: tuple[PeerAddress, ...] = ()
    discovery: str = "static"
    replication: int = 2  # directory owners per key once the mesh is past full_directory_upto
    full_directory_upto: int = 16  # up to this many peers, every peer keeps the whole directory
    vnodes: int = 128
    secret: bytes | None = None
    advertise_host: str = ""  # how others reach us; "": `host` (required if host is a wildcard)
    multicast_group: PeerAddress | None = None  # multicast discovery; None: the default group
    probe_interval_s: float = 1.0  # SWIM protocol period; failure detection scales with it


@dataclass(frozen=True, slots=True)
class TransferConfig:
    transport: str = "auto"
    timeout_s: float = 2.0  # every network await is bounded by this
    max_inflight: int = 32  # pulls outstanding per remote peer
    # Same-host copies are trusted within the holder's pin lease ("lease");
    # "checksum" also verifies each one against its checksum (~40% slower).
    shm_verify: str = "lease"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    host: str = "127.0.0.1"  # loopback only unless an operator says otherwise
    port: int = 0
    enabled: bool = True
    # Host names the API answers to besides loopback names and its own
    # address (lowercase): those an operator reaches it by, e.g. a DNS name.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS (1.3 or later) on the TCP data plane and, with `control`, the control API.

    Each side presents `cert` (with `key`) and accepts the other only if its
    certificate chains to `ca`, the mesh's own CA: holding a certificate that
    CA signed is what makes a process a member at the TLS layer, on top of
    the mesh secret. Host names are not checked: peers are named by IP:port,
    learned from gossip and seeds, and a certificate naming each peer's IP
    would have to be reissued whenever a pod moves; with a CA that signs
    nothing but mesh members, any certificate it signed is a member's, so a
    name check would add no trust. Encrypts TCP streams only: the UCX
    transport is refused alongside it (it would carry chunks in the clear),
    same-host shared-memory reads never leave the host, and gossip (UDP)
    stays as the mesh secret keeps it.
    """

    cert: Path  # PEM: this peer's certificate, optionally followed by intermediates
    key: Path  # PEM: its private key, unencrypted
    ca: Path  # PEM: the CA(s) a remote's certificate must chain to
    control: bool = True  # the control API speaks HTTPS (client certificates required)


CODEC_VARIABLES = {"cpu": "KVMESH_CODEC_CPU", "disk": "KVMESH_CODEC_DISK",
                   "wire": "KVMESH_CODEC_WIRE"}


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """The codec chunks are kept in on the CPU tier, written to disk in, and sent
    across hosts in (`kvmesh.codecs`); "none" keeps the engine's bytes, exact.

    Checked when built, whoever builds it: a name the registry does not know,
    a lossless codec on CPU (its slots are fixed-size, so only a fixed-ratio
    codec makes room for more chunks), or two different lossy codecs raise
    ConfigError. `lossy` is the one lossy codec named, "" if none: it goes
    into the key namespace, so that lossy and exact KV never share keys.
    """

    cpu: str = "none"
    disk: str = "none"
    wire: str = "none"
    lossy: str = field(init=False, default="")

    def __post_init__(self) -> None:
        named = {place: getattr(self, place) for place in CODEC_VARIABLES
                 if getattr(self, place) != "none"}
        if named:  # the registry imports torch: only when a codec is asked for
            object.__setattr__(self, "lossy", _checked_codecs(named))


def _checked_codecs(named: dict[str, str]) -> str:
    """The one lossy codec among `named` ({place: codec name}), or ""."""
    from kvmesh.codecs import CODECS  # noqa: PLC0415

    for place, name in named.items():
        if name not in CODECS:
            raise ConfigError(f"{CODEC_VARIABLES[place]}={name!r}: unknown codec; expected "
                              f"none or one of {', '.join(sorted(CODECS))}")
    cpu = named.get("cpu")
    if cpu is not None and CODECS[cpu].lossless:
        raise ConfigError(f"KVMESH_CODEC_CPU={cpu}: the CPU tier keeps chunks in fixed-size "
                          "slots, so only a fixed-ratio codec (a lossy one) makes room for "
                          f"more chunks; use {cpu} for KVMESH_CODEC_DISK or KVMESH_CODEC_WIRE")
    lossy = {place: name for place, name in named.items() if not CODECS[name].lossless}
    if len(set(lossy.values())) > 1:
        settings = " and ".join(f"{CODEC_VARIABLES[p]}={n}" for p, n in lossy.items())
        raise ConfigError(f"{settings}: at most one lossy codec per peer (its name is part "
                          "of every key, so all of a peer's KV has one fidelity)")
    return next(iter(lossy.values()), "")


@dataclass(frozen=True, slots=True)
class KvmeshConfig:
    enabled: bool = False
    chunk_tokens: int = 256
    store: StoreConfig = field(default_factory=StoreConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    tls: TlsConfig | None = None  # None: plain TCP and HTTP
    codecs: CodecConfig = field(default_factory=CodecConfig)  # default: every chunk exact
    # Private to this user (0700; checked at start): rendezvous files and pool doors.
    run_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / f"kvmesh-{os.getuid()}")
    # Start even with a listener off loopback and no mesh secret (warned at
    # every start); see kvmesh/peers/exposure.py.
    insecure: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KvmeshConfig":
        return _from_env(os.environ if env is None else env)


def _from_env(env: Mapping[str, str]) -> KvmeshConfig:
    def get(name: str) -> str | None:
        value = env.get(name)
        return None if value is None else value

    def opt(name, parse, default, *args):
        text = get(name)
        return default if text is None else parse(name, text, *args)

    base = KvmeshConfig()
    disk_dir = get("KVMESH_DISK_DIR")
    secret = get("KVMESH_SECRET")
    store = StoreConfig(
        cpu_bytes=opt("KVMESH_CPU_BYTES", parse_size, base.store.cpu_bytes),
        disk_dir=Path(disk_dir) if disk_dir else None,
        disk_bytes=opt("KVMESH_DISK_BYTES", parse_size, base.store.disk_bytes),
        prefault=opt("KVMESH_PREFAULT", parse_bool, base.store.prefault),
    )
    mesh = MeshConfig(
        host=get("KVMESH_HOST") or base.mesh.host,
        port=opt("KVMESH_PORT", parse_int, 0, 0, 65535),
        seeds=opt("KVMESH_SEEDS", parse_seeds, ()),
        discovery=opt("KVMESH_DISCOVERY", parse_choice, "static", DISCOVERY_MODES),
        replication=opt("KVMESH_REPLICATION", parse_int, 2, 1, 16),
        full_directory_upto=opt("KVMESH_FULL_DIRECTORY_UPTO", parse_int, 16, 0, 1024),
        vnodes=opt("KVMESH_VNODES", parse_int, 128, 1, 4096),
        secret=secret.encode() if secret else None,
        advertise_host=get("KVMESH_ADVERTISE_HOST") or "",
        multicast_group=opt("KVMESH_MULTICAST", parse_address, None),
        probe_interval_s=opt("KVMESH_PROBE_INTERVAL_S", parse_float, 1.0, 0.01, 60.0),
    )
    transfer = TransferConfig(
        transport=opt("KVMESH_TRANSPORT", parse_choice, "auto", TRANSPORTS),
        timeout_s=opt("KVMESH_TIMEOUT_S", parse_float, 2.0, 0.01, 600.0),
        max_inflight=opt("KVMESH_MAX_INFLIGHT", parse_int, 32, 1, 4096),
        shm_verify=opt("KVMESH_SHM_VERIFY", parse_choice, "lease", SHM_VERIFY_MODES),
    )
    control = ControlConfig(
        host=get("KVMESH_CONTROL_HOST") or base.control.host,
        port=opt("KVMESH_CONTROL_PORT", parse_int, 0, 0, 65535),
        enabled=opt("KVMESH_CONTROL", parse_bool, True),
        allowed_hosts=opt("KVMESH_CONTROL_ALLOWED_HOSTS", parse_host_names, ()),
    )
    tls = _tls_from_env(get, opt)
    codecs = CodecConfig(**{place: opt(name, parse_codec_name, "none")
                            for place, name in CODEC_VARIABLES.items()})
    if tls is not None and transfer.transport == "ucx":
        raise ConfigError("KVMESH_TRANSPORT=ucx would carry chunks outside TLS; "
                          "use tcp or auto with KVMESH_TLS_*")
    chunk_tokens = opt("KVMESH_CHUNK_TOKENS", parse_int, 256, 1, 1 << 20)
    if store.cpu_bytes <= 0:
        raise ConfigError("KVMESH_CPU_BYTES must be positive")
    run_dir = get("KVMESH_RUN_DIR")
    return KvmeshConfig(
        enabled=opt("KVMESH_ENABLE", parse_bool, False),
        chunk_tokens=chunk_tokens,
        store=store,
        mesh=mesh,
        transfer=transfer,
        control=control,
        tls=tls,
        codecs=codecs,
        run_dir=Path(run_dir) if run_dir else base.run_dir,
        insecure=opt("KVMESH_INSECURE", parse_bool, False),
    )


TLS_FILES = ("KVMESH_TLS_CERT", "KVMESH_TLS_KEY", "KVMESH_TLS_CA")


def _tls_from_env(get, opt) -> TlsConfig | None:
    """All three files or none; each must exist now, not at the first connection."""
    given = {name: get(name) for name in TLS_FILES if get(name)}
    control = opt("KVMESH_TLS_CONTROL", parse_bool, None)
    if not given:
        if control:
            raise ConfigError(f"KVMESH_TLS_CONTROL=on needs {', '.join(TLS_FILES)}")
        return None
    missing = [name for name in TLS_FILES if name not in given]
    if missing:
        raise ConfigError(f"TLS needs all of {', '.join(TLS_FILES)}: {', '.join(missing)} "
                          "not set")
    paths = {name: Path(text) for name, text in given.items()}
    for name, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"{name}={str(path)!r}: no such file")
    return TlsConfig(cert=paths["KVMESH_TLS_CERT"], key=paths["KVMESH_TLS_KEY"],
                     ca=paths["KVMESH_TLS_CA"], control=True if control is None else control)
