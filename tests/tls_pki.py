"""A throwaway PKI for the TLS tests (import `pki` into a test module): the
mesh's CA with two members, and a stranger whose certificate another CA signed."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmesh.bench.certs import MeshCa, PeerFiles
from kvmesh.config import TlsConfig


@dataclass(frozen=True)
class Pki:
    server: TlsConfig  # a mesh member's files
    client: TlsConfig  # another member's
    stranger: TlsConfig  # signed by another CA, trusting only that CA
    directory: Path


def _config(files: PeerFiles) -> TlsConfig:
    return TlsConfig(cert=files.cert, key=files.key, ca=files.ca)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    mesh, other = MeshCa(directory, "mesh CA"), MeshCa(directory, "other CA")
    return Pki(_config(mesh.issue("peer a")), _config(mesh.issue("peer b")),
               _config(other.issue("stranger")), directory)
