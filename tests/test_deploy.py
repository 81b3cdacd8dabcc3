"""deploy/: the Kubernetes example parses and wires kvmesh the way the README says."""

from pathlib import Path

import pytest

from kvmesh.config import KvmeshConfig
from kvmesh.errors import ConfigError
from kvmesh.peers.control_guard import is_loopback_host
from kvmesh.peers.exposure import check_exposure

yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "kvmesh-vllm.yaml"


def test_manifest_parses_and_configures_a_dns_discovered_mesh():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(MANIFEST.read_text())}
    headless = docs[("Service", "kvmesh-mesh")]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert {(p["port"], p["protocol"]) for p in headless["ports"]} >= {(7400, "TCP"), (7400, "UDP")}
    pod = docs[("StatefulSet", "vllm-kvmesh")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVMESH_SEEDS"].startswith("kvmesh-mesh.") and env["KVMESH_SEEDS"].endswith(":7400")
    # The literal values parse with kvmesh's own config reader.
    literal = {k: v for k, v in env.items() if k.startswith("KVMESH_") and v and "$(" not in v}
    config = KvmeshConfig.from_env({**literal, "KVMESH_ADVERTISE_HOST": "10.0.0.7"})
    assert config.enabled and config.mesh.discovery == "dns" and config.mesh.port == 7400
    assert config.mesh.host == "0.0.0.0" and config.mesh.advertise_host == "10.0.0.7"
    ports = {(p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert {(7400, "TCP"), (7400, "UDP")} <= ports
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod["volumes"])


def test_control_api_stays_on_loopback_and_the_secret_comes_from_a_secret():
    """The control API is for operators (kubectl port-forward or exec), never the pod network."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(MANIFEST.read_text())}
    container = docs[("StatefulSet", "vllm-kvmesh")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KVMESH_SECRET"].get("value") is None  # never a literal in the manifest
    assert env["KVMESH_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "kvmesh", "key": "secret"}
    literal = {k: e["value"] for k, e in env.items() if k.startswith("KVMESH_") and "value" in e}
    config = KvmeshConfig.from_env({**literal, "KVMESH_ADVERTISE_HOST": "10.0.0.7"})
    assert config.control.enabled and is_loopback_host(config.control.host), config.control.host
    control_port = config.control.port
    exposed = {p.get("containerPort") for p in container["ports"]}
    for (kind, _), doc in docs.items():
        if kind == "Service":
            exposed |= {p["port"] for p in doc["spec"]["ports"]} | {p.get("targetPort") for p in doc["spec"]["ports"]}
    assert control_port not in exposed and "control" not in {p["name"] for p in container["ports"]}
    # The mesh listener is on 0.0.0.0: it starts with the Secret's value, and not without it.
    assert check_exposure(KvmeshConfig.from_env({**literal, "KVMESH_SECRET": "from-the-secret"})) == ()
    with pytest.raises(ConfigError, match="KVMESH_SECRET"):
        check_exposure(config)
