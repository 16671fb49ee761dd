"""Hot reload of the gateway's TLS identity: validate first, then swap; bad material refused."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

from gateway.certs.lab import make_lab
from gateway.certs.runtime import TlsMaterial
from gateway.certs.settings import ProviderTrustSettings, TlsIdentitySettings


def _material(tmp: Path) -> tuple[TlsMaterial, Path, Path]:
    make_lab(tmp / "lab")
    cert = tmp / "gw.pem"
    key = tmp / "gw.key"
    shutil.copy(tmp / "lab" / "gateway.pem", cert)
    shutil.copy(tmp / "lab" / "gateway.key", key)
    key.chmod(0o600)
    material = TlsMaterial(
        TlsIdentitySettings(certificate=str(cert), private_key=str(key)),
        ProviderTrustSettings(ca_bundle=str(tmp / "lab" / "ca.pem")),
    )
    material.load()
    return material, cert, key


def test_reload_swaps_in_new_material_and_new_contexts(tmp_path: Path) -> None:
    material, cert, key = _material(tmp_path)
    first = material.state()
    old_server = material.server_context
    assert first is not None and isinstance(old_server, ssl.SSLContext)
    # A rotation: the provider certificate from the same lab stands in for "a new one".
    shutil.copy(tmp_path / "lab" / "provider.pem", cert)
    shutil.copy(tmp_path / "lab" / "provider.key", key)
    assert material.reload("test") is None
    second = material.state()
    assert second is not None
    assert second.pin != first.pin
    assert second.reloads == 1
    assert material.server_context is not old_server


def test_mismatched_key_is_refused_and_the_old_certificate_stays(tmp_path: Path) -> None:
    material, cert, _key = _material(tmp_path)
    before = material.state()
    server = material.server_context
    shutil.copy(tmp_path / "lab" / "provider.pem", cert)  # new cert, old key: mismatch
    error = material.reload("test")
    assert error is not None and "does not match" in error
    after = material.state()
    assert after is not None and before is not None
    assert after.pin == before.pin
    assert material.server_context is server
    assert material.last_error == error


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    material, _cert, key = _material(tmp_path)
    key.chmod(0o644)
    error = material.reload("test")
    assert error is not None and str(key) in error
