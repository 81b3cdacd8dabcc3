"""A throwaway mesh CA and peer certificates, for tests and benchmarks.

Not for production: keys are written unencrypted, the CA key is kept only
in memory and thrown away, and certificates live for a day. An operator
makes the mesh's CA with their own tooling; kvmesh only needs the three PEM
files `KVMESH_TLS_CERT`, `KVMESH_TLS_KEY` and `KVMESH_TLS_CA` name.

Needs the `cryptography` package (the `dev` extra); `available()` says why
not where it is missing.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path


def available() -> str | None:
    """Why certificates cannot be made here, or None."""
    try:
        import cryptography  # noqa: F401, PLC0415 - optional: tests and benchmarks only
    except ImportError:
        return "the `cryptography` package is not installed (pip install cryptography)"
    return None


@dataclass(frozen=True, slots=True)
class PeerFiles:
    """One peer's PEM files, as the KVMESH_TLS_* variables name them."""

    cert: Path
    key: Path
    ca: Path

    def env(self) -> dict[str, str]:
        return {"KVMESH_TLS_CERT": str(self.cert), "KVMESH_TLS_KEY": str(self.key),
                "KVMESH_TLS_CA": str(self.ca)}


class MeshCa:
    """A CA (ECDSA P-256, self-signed) that issues peer certificates into `directory`."""

    def __init__(self, directory: Path, name: str = "kvmesh test CA") -> None:
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        self._subject = subject
        self.ca_path = directory / f"{_slug(name)}.ca.pem"
        cert = _builder(subject, subject, self._key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True).sign(self._key, _sha256())
        self.ca_path.write_bytes(_pem(cert))

    def issue(self, name: str) -> PeerFiles:
        """A certificate and key for one peer, usable as TLS client and server."""
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

        key = ec.generate_private_key(ec.SECP256R1())
        cert = _builder(_name(name), self._subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False).sign(self._key, _sha256())
        stem = self.directory / _slug(name)
        files = PeerFiles(stem.with_suffix(".cert.pem"), stem.with_suffix(".key.pem"), self.ca_path)
        files.cert.write_bytes(_pem(cert))
        files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        files.key.chmod(0o600)
        return files


def _builder(subject, issuer, public_key):
    from cryptography import x509  # noqa: PLC0415

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _name(common_name: str):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sha256():
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    return hashes.SHA256()


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return cert.public_bytes(serialization.Encoding.PEM)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)
