"""The CA: created once, reused, valid for every served host, importable without aiohttp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from azsim.tls import SERVED_DNS_NAMES, ensure_ca

REPO = Path(__file__).resolve().parents[2]


def test_ensure_ca_creates_then_reuses(tmp_path):
    """`ensure_ca` creates the CA once and reuses it; the leaf key is readable by its owner only."""
    first = ensure_ca(tmp_path / "ca")
    content = first.cert_path.read_bytes()
    second = ensure_ca(tmp_path / "ca")
    assert second == first
    assert second.cert_path.read_bytes() == content
    assert oct(first.leaf_key_path.stat().st_mode & 0o777) == "0o600"


def test_leaf_names_every_served_host(tmp_path):
    """The leaf certificate names every served host and 127.0.0.1 and is issued by the CA."""
    files = ensure_ca(tmp_path)
    leaf = x509.load_pem_x509_certificate(files.leaf_cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(SERVED_DNS_NAMES) <= set(san.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)


def test_a_broken_ca_directory_is_recreated(tmp_path):
    """A corrupt leaf certificate is recreated by `ensure_ca`."""
    files = ensure_ca(tmp_path)
    files.leaf_cert_path.write_text("garbage")
    again = ensure_ca(tmp_path)
    x509.load_pem_x509_certificate(again.leaf_cert_path.read_bytes())


def test_tls_and_package_do_not_import_aiohttp():
    """Importing `azsim` and `azsim.tls` does not import aiohttp."""
    code = "import sys, azsim, azsim.tls; assert 'aiohttp' not in sys.modules, 'aiohttp imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=30)  # noqa: S603 - fixed argv


def test_simulator_stops_its_thread_and_ports(tmp_path):
    """A simulator started and stopped leaves no thread and no listening port behind."""
    import socket
    import threading

    from azsim.simulator import Simulator

    def running() -> int:
        return sum(t.name == "azsim" for t in threading.enumerate())

    before = running()
    with Simulator(ca_dir=tmp_path) as sim:
        assert sim.ports is not None
        port = sim.ports.proxy
        assert running() == before + 1
    assert running() == before
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
