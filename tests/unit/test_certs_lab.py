"""``gateway certs lab``: one-machine lab material, idempotent (gateway.certs.lab)."""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.certs.inspect import TrustAnchors, chain_problem, subject_alt_names
from gateway.certs.lab import make_lab
from gateway.certs.live import verify_provider
from gateway.certs.material import load_identity
from gateway.certs.settings import ProviderTrustSettings
from gateway.certs.store import read_certificates
from tests.pki import tls_server


def test_lab_material(tmp_path: Path) -> None:
    lab = tmp_path / "certs" / "lab"
    result = make_lab(lab)
    assert result.created == ("ca", "gateway", "provider") and result.kept == ()
    gateway = load_identity(lab / "gateway.pem", lab / "gateway.key")
    provider = load_identity(lab / "provider.pem", lab / "provider.key")
    assert subject_alt_names(gateway.leaf) == ["IP:127.0.0.1", "DNS:localhost", "DNS:gateway.lab"]
    assert subject_alt_names(provider.leaf) == ["IP:127.0.0.1", "DNS:provider.lab", "DNS:localhost"]
    trust = TrustAnchors(str(lab / "ca.pem"))
    assert chain_problem(gateway.chain, trust) is None
    assert chain_problem(provider.chain, trust) is None
    for key in ("ca.key", "gateway.key", "provider.key"):
        assert (lab / key).stat().st_mode & 0o777 == 0o600


def test_lab_is_idempotent_unless_forced(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    make_lab(lab)
    before = {p.name: p.read_bytes() for p in lab.iterdir()}
    again = make_lab(lab)
    assert again.created == () and again.kept == ("ca", "gateway", "provider")
    assert {p.name: p.read_bytes() for p in lab.iterdir()} == before
    # A damaged provider certificate is replaced, the rest kept.
    (lab / "provider.pem").write_text("garbage")
    repaired = make_lab(lab)
    assert repaired.created == ("provider",)
    assert (lab / "ca.pem").read_bytes() == before["ca.pem"]
    forced = make_lab(lab, force=True)
    assert forced.created == ("ca", "gateway", "provider")
    assert (lab / "ca.pem").read_bytes() != before["ca.pem"]


def test_lab_provider_verifies_with_lab_ca(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    make_lab(lab)
    trust = ProviderTrustSettings(ca_bundle=str(lab / "ca.pem"), server_name="provider.lab")
    with tls_server(lab / "provider.pem", lab / "provider.key") as port:
        check = verify_provider("127.0.0.1", port, trust, timeout=5)
    assert check.ok, check.error
    assert read_certificates(lab / "provider.pem")[0] == check.chain[0]
    assert ssl.HAS_SNI
