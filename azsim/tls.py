"""The simulator's own certificate authority and the server certificate it signs.

This module imports only the standard library and ``cryptography`` (never aiohttp): aiohttp builds its
default verified SSL context when it is first imported, so a process must point ``SSL_CERT_FILE`` at the
CA created here *before* that import::

    from azsim.tls import ensure_ca

    ca = ensure_ca(Path("/tmp/azsim-ca"))
    os.environ["SSL_CERT_FILE"] = str(ca.cert_path)

``ensure_ca`` reuses the files of an earlier call (in any process) when they are present and still valid.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVED_DNS_NAMES", "CaFiles", "ensure_ca"]

SERVED_DNS_NAMES: tuple[str, ...] = (
    "management.azure.com",
    "management.chinacloudapi.cn",
    "management.usgovcloudapi.net",
    "*.vault.azure.net",
    "*.vault.azure.cn",
    "*.vault.usgovcloudapi.net",
    "*.managedhsm.azure.net",
    "localhost",
)
SERVED_IPS: tuple[str, ...] = ("127.0.0.1",)

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
LEAF_CERT = "server.pem"
LEAF_KEY = "server-key.pem"

_CA_DAYS = 3650
_LEAF_DAYS = 365
_MIN_REMAINING = dt.timedelta(days=1)


@dataclass(frozen=True)
class CaFiles:
    """Paths of the CA (trust this one) and of the server certificate it signed."""

    directory: Path
    cert_path: Path
    key_path: Path
    leaf_cert_path: Path
    leaf_key_path: Path


def ensure_ca(directory: Path) -> CaFiles:
    """Create the CA and server certificate in ``directory``, or reuse the ones already there."""
    directory.mkdir(parents=True, exist_ok=True)
    files = CaFiles(
        directory=directory,
        cert_path=directory / CA_CERT,
        key_path=directory / CA_KEY,
        leaf_cert_path=directory / LEAF_CERT,
        leaf_key_path=directory / LEAF_KEY,
    )
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _usable(files):
                _create(files)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return files


def _usable(files: CaFiles) -> bool:
    paths = (files.cert_path, files.key_path, files.leaf_cert_path, files.leaf_key_path)
    if not all(path.is_file() for path in paths):
        return False
    try:
        ca = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        leaf = x509.load_pem_x509_certificate(files.leaf_cert_path.read_bytes())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    soon = dt.datetime.now(dt.UTC) + _MIN_REMAINING
    names = set(san.get_values_for_type(x509.DNSName))
    return (
        leaf.issuer == ca.subject
        and ca.not_valid_after_utc > soon
        and leaf.not_valid_after_utc > soon
        and set(SERVED_DNS_NAMES) <= names
    )


def _create(files: CaFiles) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azsim local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVED_DNS_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVED_IPS]
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "management.azure.com")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    _write(files.key_path, _key_pem(ca_key), private=True)
    _write(files.leaf_key_path, _key_pem(leaf_key), private=True)
    _write(files.leaf_cert_path, leaf_cert.public_bytes(serialization.Encoding.PEM), private=False)
    # The CA certificate last: its presence is what other processes look for.
    _write(files.cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write atomically so a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
