from pathlib import Path
from types import SimpleNamespace

import pytest

from kvmesh.config import KvmeshConfig, parse_bool, parse_size
from kvmesh.errors import ConfigError
from kvmesh.types import PeerAddress


def test_defaults_without_environment():
    config = KvmeshConfig.from_env({})
    assert not config.enabled
    assert config.chunk_tokens == 256
    assert config.mesh.replication == 2 and config.mesh.host == "127.0.0.1"
    assert config.control.host == "127.0.0.1"  # loopback only by default
    assert config.transfer.transport == "auto" and config.store.disk_dir is None


def test_every_variable_is_read():
    config = KvmeshConfig.from_env({
        "KVMESH_ENABLE": "1", "KVMESH_CHUNK_TOKENS": "128", "KVMESH_CPU_BYTES": "2GiB",
        "KVMESH_DISK_DIR": "/tmp/kv", "KVMESH_DISK_BYTES": "10GB", "KVMESH_HOST": "0.0.0.0",
        "KVMESH_PORT": "7000", "KVMESH_SEEDS": "a:1, b:2", "KVMESH_DISCOVERY": "dns",
        "KVMESH_REPLICATION": "3", "KVMESH_VNODES": "64", "KVMESH_SECRET": "s3",
        "KVMESH_TRANSPORT": "TCP", "KVMESH_TIMEOUT_S": "0.5", "KVMESH_MAX_INFLIGHT": "8",
        "KVMESH_CONTROL_HOST": "0.0.0.0", "KVMESH_CONTROL_PORT": "9000", "KVMESH_CONTROL": "off",
        "KVMESH_RUN_DIR": "/tmp/run", "KVMESH_PREFAULT": "1",
        "KVMESH_CONTROL_ALLOWED_HOSTS": " KV.internal., [::1],10.0.0.7 ", "KVMESH_INSECURE": "yes",
    })
    assert config.enabled and config.chunk_tokens == 128
    assert config.store.cpu_bytes == 2 << 30 and config.store.disk_bytes == 10**10
    assert config.store.disk_dir == Path("/tmp/kv") and config.store.prefault
    assert not KvmeshConfig.from_env({}).store.prefault
    assert config.mesh.seeds == (PeerAddress("a", 1), PeerAddress("b", 2))
    assert (config.mesh.host, config.mesh.port, config.mesh.discovery) == ("0.0.0.0", 7000, "dns")
    assert (config.mesh.replication, config.mesh.vnodes, config.mesh.secret) == (3, 64, b"s3")
    assert config.transfer.transport == "tcp" and config.transfer.timeout_s == 0.5
    assert config.transfer.max_inflight == 8
    assert (config.control.host, config.control.port, config.control.enabled) == ("0.0.0.0", 9000, False)
    assert config.run_dir == Path("/tmp/run")
    assert config.control.allowed_hosts == ("kv.internal", "::1", "10.0.0.7")
    assert KvmeshConfig.from_env({}).control.allowed_hosts == ()
    assert config.insecure and not KvmeshConfig.from_env({}).insecure


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("YES", True), ("on", True),
                                        ("0", False), ("false", False), ("no", False), ("", False)])
def test_booleans(text, value):
    assert parse_bool("X", text) is value


@pytest.mark.parametrize("text,value", [("512", 512), ("4k", 4096), ("1.5GiB", 3 << 29),
                                        ("64MiB", 64 << 20), ("1mb", 10**6)])
def test_sizes(text, value):
    assert parse_size("X", text) == value


@pytest.mark.parametrize("env,name", [
    ({"KVMESH_ENABLE": "maybe"}, "KVMESH_ENABLE"),
    ({"KVMESH_CPU_BYTES": "lots"}, "KVMESH_CPU_BYTES"),
    ({"KVMESH_CPU_BYTES": "0"}, "KVMESH_CPU_BYTES"),
    ({"KVMESH_PORT": "70000"}, "KVMESH_PORT"),
    ({"KVMESH_SEEDS": "nohost"}, "KVMESH_SEEDS"),
    ({"KVMESH_TRANSPORT": "carrier-pigeon"}, "KVMESH_TRANSPORT"),
    ({"KVMESH_REPLICATION": "0"}, "KVMESH_REPLICATION"),
    ({"KVMESH_TIMEOUT_S": "soon"}, "KVMESH_TIMEOUT_S"),
    ({"KVMESH_CHUNK_TOKENS": "-4"}, "KVMESH_CHUNK_TOKENS"),
    ({"KVMESH_MULTICAST": "239.1.1.1"}, "KVMESH_MULTICAST"),
    ({"KVMESH_PROBE_INTERVAL_S": "0"}, "KVMESH_PROBE_INTERVAL_S"),
    ({"KVMESH_CONTROL_ALLOWED_HOSTS": "kv.internal:7470"}, "KVMESH_CONTROL_ALLOWED_HOSTS"),
    ({"KVMESH_CONTROL_ALLOWED_HOSTS": "a b"}, "KVMESH_CONTROL_ALLOWED_HOSTS"),
    ({"KVMESH_CONTROL_ALLOWED_HOSTS": "ab:7470"}, "KVMESH_CONTROL_ALLOWED_HOSTS"),
    ({"KVMESH_INSECURE": "sure"}, "KVMESH_INSECURE"),
])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        KvmeshConfig.from_env(env)


def test_zero_is_false_not_true():
    # The classic bool(os.getenv(...)) bug: "0" must disable.
    assert not KvmeshConfig.from_env({"KVMESH_ENABLE": "0"}).enabled


def test_mesh_membership_variables():
    mesh = KvmeshConfig.from_env({"KVMESH_HOST": "0.0.0.0", "KVMESH_ADVERTISE_HOST": "10.1.2.3",
                                  "KVMESH_MULTICAST": "239.9.9.9:7000",
                                  "KVMESH_PROBE_INTERVAL_S": "0.25"}).mesh
    assert (mesh.host, mesh.advertise_host) == ("0.0.0.0", "10.1.2.3")
    assert mesh.multicast_group == PeerAddress("239.9.9.9", 7000)
    assert mesh.probe_interval_s == 0.25
    default = KvmeshConfig.from_env({}).mesh
    assert (default.advertise_host, default.multicast_group, default.probe_interval_s) == ("", None, 1.0)


# ---- TLS ---------------------------------------------------------------------

@pytest.fixture
def tls_files(tmp_path) -> dict[str, str]:
    """Three files where KVMESH_TLS_* point (existence is all the parser checks)."""
    env = {}
    for name in ("KVMESH_TLS_CERT", "KVMESH_TLS_KEY", "KVMESH_TLS_CA"):
        path = tmp_path / f"{name.lower()}.pem"
        path.write_text("pem")
        env[name] = str(path)
    return env


def test_tls_is_off_without_its_files():
    assert KvmeshConfig.from_env({}).tls is None
    assert KvmeshConfig.from_env({"KVMESH_TLS_CONTROL": "0"}).tls is None


def test_tls_files_are_read_and_the_control_api_follows(tls_files):
    tls = KvmeshConfig.from_env(tls_files).tls
    assert (str(tls.cert), str(tls.key), str(tls.ca)) == (
        tls_files["KVMESH_TLS_CERT"], tls_files["KVMESH_TLS_KEY"], tls_files["KVMESH_TLS_CA"])
    assert tls.control  # on by default once TLS is configured
    assert not KvmeshConfig.from_env({**tls_files, "KVMESH_TLS_CONTROL": "off"}).tls.control


@pytest.mark.parametrize("left_out", [["KVMESH_TLS_CERT"], ["KVMESH_TLS_KEY"], ["KVMESH_TLS_CA"],
                                      ["KVMESH_TLS_KEY", "KVMESH_TLS_CA"]])
def test_tls_needs_all_three_files_and_names_the_missing(tls_files, left_out):
    env = {k: v for k, v in tls_files.items() if k not in left_out}
    with pytest.raises(ConfigError) as err:
        KvmeshConfig.from_env(env)
    assert all(name in str(err.value).split(":")[-1] for name in left_out)


@pytest.mark.parametrize("name", ["KVMESH_TLS_CERT", "KVMESH_TLS_KEY", "KVMESH_TLS_CA"])
def test_a_tls_file_that_does_not_exist_is_refused_at_parse_time(tls_files, tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name}=.*no such file"):
        KvmeshConfig.from_env({**tls_files, name: str(tmp_path / "absent.pem")})
    with pytest.raises(ConfigError, match=f"{name}=.*no such file"):
        KvmeshConfig.from_env({**tls_files, name: str(tmp_path)})  # a directory is no file


def test_tls_control_without_tls_and_tls_with_ucx_are_refused(tls_files):
    with pytest.raises(ConfigError, match="KVMESH_TLS_CONTROL"):
        KvmeshConfig.from_env({"KVMESH_TLS_CONTROL": "1"})
    with pytest.raises(ConfigError, match="KVMESH_TRANSPORT=ucx"):
        KvmeshConfig.from_env({**tls_files, "KVMESH_TRANSPORT": "ucx"})


# ---- codecs ------------------------------------------------------------------

@pytest.fixture
def more_codecs(monkeypatch):
    """The registry plus a second lossy codec and a lossless one, whatever the
    registry holds today: the checks are about kinds of codec, not names."""
    from kvmesh.codecs import CODECS

    monkeypatch.setitem(CODECS, "lossy2", SimpleNamespace(lossless=False))
    monkeypatch.setitem(CODECS, "squeeze", SimpleNamespace(lossless=True))
    return CODECS


def test_codecs_default_to_none_and_exact():
    codecs = KvmeshConfig.from_env({}).codecs
    assert (codecs.cpu, codecs.disk, codecs.wire, codecs.lossy) == ("none", "none", "none", "")
    assert KvmeshConfig.from_env({"KVMESH_CODEC_CPU": " "}).codecs.cpu == "none"


def test_codec_settings_are_read_and_the_lossy_one_is_named(more_codecs):
    codecs = KvmeshConfig.from_env({"KVMESH_CODEC_CPU": "FP8", "KVMESH_CODEC_DISK": "fp8",
                                    "KVMESH_CODEC_WIRE": "none"}).codecs
    assert (codecs.cpu, codecs.disk, codecs.wire, codecs.lossy) == ("fp8", "fp8", "none", "fp8")
    assert KvmeshConfig.from_env({"KVMESH_CODEC_WIRE": "lossy2"}).codecs.lossy == "lossy2"


def test_lossless_codecs_on_disk_and_wire_keep_the_namespace_exact(more_codecs):
    codecs = KvmeshConfig.from_env({"KVMESH_CODEC_DISK": "squeeze",
                                    "KVMESH_CODEC_WIRE": "squeeze"}).codecs
    assert (codecs.disk, codecs.wire, codecs.lossy) == ("squeeze", "squeeze", "")
    mixed = KvmeshConfig.from_env({"KVMESH_CODEC_CPU": "fp8", "KVMESH_CODEC_DISK": "squeeze"})
    assert mixed.codecs.lossy == "fp8"


@pytest.mark.parametrize("variable", ["KVMESH_CODEC_CPU", "KVMESH_CODEC_DISK", "KVMESH_CODEC_WIRE"])
def test_an_unknown_codec_is_refused_with_the_known_names(variable):
    with pytest.raises(ConfigError, match=f"{variable}='gzip9': unknown codec; expected none "
                                          "or one of .*fp8"):
        KvmeshConfig.from_env({variable: "gzip9"})


def test_a_lossless_codec_on_cpu_is_refused(more_codecs):
    for name in (n for n, codec in more_codecs.items() if codec.lossless):
        with pytest.raises(ConfigError, match=f"KVMESH_CODEC_CPU={name}: .*fixed-size slots"):
            KvmeshConfig.from_env({"KVMESH_CODEC_CPU": name})


def test_two_different_lossy_codecs_are_refused(more_codecs):
    with pytest.raises(ConfigError, match="KVMESH_CODEC_CPU=fp8 and KVMESH_CODEC_WIRE=lossy2: "
                                          "at most one lossy codec per peer"):
        KvmeshConfig.from_env({"KVMESH_CODEC_CPU": "fp8", "KVMESH_CODEC_WIRE": "lossy2"})


def test_codec_config_built_directly_is_checked_too():
    from kvmesh.config import CodecConfig

    assert CodecConfig(wire="fp8").lossy == "fp8"
    with pytest.raises(ConfigError, match="KVMESH_CODEC_DISK"):
        CodecConfig(disk="nope")
