"""Live pin and verify-provider against a local TLS server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gateway.certs.inspect import spki_pin
from gateway.certs.live import fetch_peer_chain, verify_provider
from gateway.certs.settings import ProviderTrustSettings
from gateway.certs.store import write_certificates
from tests.pki import make_ca, make_leaf, tls_server, write_pair


def _provider(tmp_path: Path):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    ca = make_ca(now=now)
    leaf = make_leaf(ca, ("provider.lab", "127.0.0.1"), now=now)
    cert, key = write_pair(tmp_path, "provider", leaf.chain, leaf.key)
    bundle = tmp_path / "ca.pem"
    write_certificates(bundle, [ca.certificate])
    return ca, leaf, cert, key, str(bundle)


def test_live_pin_matches_the_server_key(tmp_path: Path) -> None:
    ca, leaf, cert, key, _ = _provider(tmp_path)
    with tls_server(cert, key) as port:
        chain = fetch_peer_chain("127.0.0.1", port, "provider.lab", timeout=5)
    assert [spki_pin(c) for c in chain] == [spki_pin(leaf.key), spki_pin(ca.key)]


def test_verify_provider_ok_and_pinned(tmp_path: Path) -> None:
    _, leaf, cert, key, bundle = _provider(tmp_path)
    trust = ProviderTrustSettings(
        ca_bundle=bundle, spki_pins=(spki_pin(leaf.key),), server_name="provider.lab"
    )
    with tls_server(cert, key) as port:
        check = verify_provider("127.0.0.1", port, trust, timeout=5)
        by_ip = verify_provider(
            "127.0.0.1", port, ProviderTrustSettings(ca_bundle=bundle), timeout=5
        )
    assert check.ok and check.pinned is True and check.error is None
    assert len(check.chain) == 2
    assert by_ip.ok and by_ip.pinned is None


def test_verify_provider_wrong_name(tmp_path: Path) -> None:
    _, _, cert, key, bundle = _provider(tmp_path)
    trust = ProviderTrustSettings(ca_bundle=bundle, server_name="sip.other.test")
    with tls_server(cert, key) as port:
        check = verify_provider("127.0.0.1", port, trust, timeout=5)
    assert not check.ok
    assert check.error is not None and "mismatch" in check.error.lower()
    assert len(check.chain) == 2  # the chain is still shown


def test_verify_provider_unpinned_key_refused(tmp_path: Path) -> None:
    _, _, cert, key, bundle = _provider(tmp_path)
    other_pin = spki_pin(make_ca().key)
    trust = ProviderTrustSettings(
        ca_bundle=bundle, spki_pins=(other_pin,), server_name="provider.lab"
    )
    with tls_server(cert, key) as port:
        check = verify_provider("127.0.0.1", port, trust, timeout=5)
    assert not check.ok and check.pinned is False
    assert check.error is not None and "spki_pins" in check.error


def test_verify_provider_untrusted_ca(tmp_path: Path) -> None:
    _, _, cert, key, _ = _provider(tmp_path)
    other = tmp_path / "other.pem"
    write_certificates(other, [make_ca("Other").certificate])
    trust = ProviderTrustSettings(ca_bundle=str(other), server_name="provider.lab")
    with tls_server(cert, key) as port:
        check = verify_provider("127.0.0.1", port, trust, timeout=5)
    assert not check.ok and check.error is not None


def test_verify_provider_nothing_listening() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = verify_provider("127.0.0.1", port, ProviderTrustSettings(), timeout=2)
    assert not check.ok and "cannot connect" in (check.error or "")
