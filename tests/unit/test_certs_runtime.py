"""Hot reload of the gateway's TLS identity: validate first, then swap; bad material refused."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from gateway.certs import runtime
from gateway.certs.errors import CertificateError
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


def test_reload_then_poll_does_not_take_the_same_files_up_twice(tmp_path: Path) -> None:
    material, cert, key = _material(tmp_path)
    shutil.copy(tmp_path / "lab" / "provider.pem", cert)
    shutil.copy(tmp_path / "lab" / "provider.key", key)
    assert material.reload("SIGHUP") is None
    assert material.poll() is False  # already loaded by the SIGHUP
    state = material.state()
    assert state is not None and state.reloads == 1
    # A later change is still noticed by the file watch.
    shutil.copy(tmp_path / "lab" / "gateway.pem", cert)
    shutil.copy(tmp_path / "lab" / "gateway.key", key)
    assert material.poll() is True
    state = material.state()
    assert state is not None and state.reloads == 2


def test_reload_reports_failure_when_the_context_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    material, cert, key = _material(tmp_path)
    before = material.state()
    shutil.copy(tmp_path / "lab" / "provider.pem", cert)
    shutil.copy(tmp_path / "lab" / "provider.key", key)

    def broken(identity: object, client_ca: str | None = None) -> ssl.SSLContext:
        raise CertificateError(str(cert), "cannot load into TLS context (test)")

    monkeypatch.setattr(runtime, "build_server_context", broken)
    error = material.reload("SIGHUP")
    assert error is not None and "cannot load into TLS context" in error
    after = material.state()
    assert before is not None and after is not None
    assert after.pin == before.pin and after.reloads == 0
