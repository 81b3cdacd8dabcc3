"""A peer reachable off this host without the mesh secret does not start, unless told to, loudly.

The default was wide open and silent: no secret, no warning, and a mesh
listener or control API bound to 0.0.0.0 without a secret was accepted, so
anyone who could reach the port could join, read KV, gossip, and drive the
control API. `check_exposure` now refuses that configuration with a
ConfigError naming what to set, unless KVMESH_INSECURE=1, which gets a
WARNING naming each exposed listener at every start.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kvmesh.config import ControlConfig, KvmeshConfig, MeshConfig, StoreConfig, TransferConfig
from kvmesh.errors import ConfigError
from kvmesh.peers.exposure import INSECURE_SETTING, check_exposure, enforce_exposure, exposures
from kvmesh.peers.facade import PeerHandle
from kvmesh.peers.standalone import standalone_hasher

OPEN = {"KVMESH_HOST": "0.0.0.0"}
SECRET = {"KVMESH_SECRET": "s3cret"}
INSECURE = {"KVMESH_INSECURE": "1"}

# env, the settings named as exposed ([] = nothing exposed)
EXPOSURE = [
    ({}, []),
    ({"KVMESH_HOST": "127.0.0.1"}, []),
    ({"KVMESH_HOST": "127.0.0.2"}, []),
    ({"KVMESH_HOST": "localhost"}, []),
    ({"KVMESH_HOST": "::1"}, []),
    ({"KVMESH_HOST": "0.0.0.0"}, ["KVMESH_HOST=0.0.0.0"]),
    ({"KVMESH_HOST": "::"}, ["KVMESH_HOST=::"]),
    ({"KVMESH_HOST": "10.0.0.5"}, ["KVMESH_HOST=10.0.0.5"]),
    ({"KVMESH_HOST": "node-1.example"}, ["KVMESH_HOST=node-1.example"]),  # unresolved names count as off-host
    ({"KVMESH_CONTROL_HOST": "0.0.0.0"}, ["KVMESH_CONTROL_HOST=0.0.0.0"]),
    ({"KVMESH_CONTROL_HOST": "192.168.1.4"}, ["KVMESH_CONTROL_HOST=192.168.1.4"]),
    ({"KVMESH_CONTROL_HOST": "0.0.0.0", "KVMESH_CONTROL": "0"}, []),  # no control API at all
    ({"KVMESH_HOST": "0.0.0.0", "KVMESH_CONTROL_HOST": "::"}, ["KVMESH_HOST=0.0.0.0", "KVMESH_CONTROL_HOST=::"]),
]


@pytest.mark.parametrize("env, named", EXPOSURE)
def test_exposures(env, named):
    config = KvmeshConfig.from_env(env)
    assert [f"{e.setting}={e.value}" for e in exposures(config)] == named


@pytest.mark.parametrize("env, named", [row for row in EXPOSURE if row[1]])
def test_exposed_without_secret_refuses_to_start(env, named):
    with pytest.raises(ConfigError) as exc:
        check_exposure(KvmeshConfig.from_env(env))
    message = str(exc.value)
    for setting in named:
        assert setting in message
    assert "KVMESH_SECRET" in message and "openssl rand -hex 32" in message
    assert "127.0.0.1" in message and f"{INSECURE_SETTING}=1" in message


@pytest.mark.parametrize("env, named", EXPOSURE)
def test_a_secret_makes_every_bind_acceptable_and_quiet(env, named):
    assert check_exposure(KvmeshConfig.from_env({**env, **SECRET})) == ()
    assert check_exposure(KvmeshConfig.from_env({**env, **SECRET, **INSECURE})) == ()


@pytest.mark.parametrize("env, named", EXPOSURE)
def test_insecure_starts_with_a_warning_naming_each_exposure(env, named):
    warnings = check_exposure(KvmeshConfig.from_env({**env, **INSECURE}))
    assert len(warnings) == len(named)
    for warning, setting in zip(warnings, named):
        assert "INSECURE" in warning and setting in warning and "KVMESH_SECRET" in warning


def test_loopback_without_secret_is_quiet():
    assert check_exposure(KvmeshConfig.from_env({})) == ()
    assert check_exposure(KvmeshConfig()) == ()


def test_wildcard_written_as_empty_host_is_exposed():
    config = KvmeshConfig(mesh=MeshConfig(host=""), control=ControlConfig(host=""))
    assert [e.setting for e in exposures(config)] == ["KVMESH_HOST", "KVMESH_CONTROL_HOST"]
    with pytest.raises(ConfigError):
        check_exposure(config)


def test_insecure_setting_is_read_strictly():
    assert KvmeshConfig.from_env({}).insecure is False
    assert KvmeshConfig.from_env(INSECURE).insecure is True
    assert KvmeshConfig.from_env({"KVMESH_INSECURE": "0"}).insecure is False
    with pytest.raises(ConfigError, match="KVMESH_INSECURE"):
        KvmeshConfig.from_env({"KVMESH_INSECURE": "please"})


def test_enforce_logs_each_warning_at_every_call(caplog):
    config = KvmeshConfig.from_env({**OPEN, **INSECURE})
    with caplog.at_level(logging.WARNING, logger="kvmesh.peers.exposure"):
        enforce_exposure(config)
        enforce_exposure(config)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("KVMESH_HOST=0.0.0.0" in r.getMessage() for r in warnings)
    with pytest.raises(ConfigError):
        enforce_exposure(dataclasses.replace(config, insecure=False))


# ---- a real peer ----------------------------------------------------------------------------

SLOT = 64 << 10


def open_peer_config(**mesh) -> KvmeshConfig:
    return KvmeshConfig(chunk_tokens=16, store=StoreConfig(cpu_bytes=8 << 20),
                        mesh=MeshConfig(host="0.0.0.0", advertise_host="127.0.0.1", **mesh),
                        transfer=TransferConfig(transport="tcp", timeout_s=1.0))


def test_a_peer_bound_off_loopback_without_secret_does_not_start():
    cfg = open_peer_config()
    with pytest.raises(ConfigError, match="KVMESH_SECRET"):
        PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT).close()


def test_a_peer_bound_off_loopback_with_a_secret_starts():
    cfg = open_peer_config(secret=b"s3cret")
    handle = PeerHandle.start(cfg, standalone_hasher(cfg, SLOT), SLOT)
    try:
        assert handle.peer_id.startswith("127.0.0.1:")  # advertised, bound off loopback
    finally:
        handle.close()
