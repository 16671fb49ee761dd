"""The ``gateway certs`` command line: wiring, output and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import pytest

from gateway.certs.commands import add_certs_commands
from gateway.certs.inspect import spki_pin
from gateway.certs.settings import CertWatchSettings, ProviderTrustSettings, TlsIdentitySettings
from gateway.certs.store import read_certificates
from tests.pki import tls_server


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    add_certs_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_ca_issue_status_rotate_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "certs")
    assert run("certs", "init-ca", "--store", store) == 0
    assert run("certs", "init-ca", "--store", store) == 2  # refuses to overwrite
    assert (
        run("certs", "issue", "--store", store, "--name", "gw.example.test", "--name", "192.0.2.1")
        == 0
    )
    ident = tmp_path / "certs" / "identity"
    assert (ident / "key.pem").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    status = (
        "certs",
        "status",
        "--store",
        store,
        "--cert",
        str(ident / "cert.pem"),
        "--key",
        str(ident / "key.pem"),
        "--ca-bundle",
        str(tmp_path / "certs" / "ca" / "ca.pem"),
        "--name",
        "gw.example.test",
    )
    assert run(*status) == 0
    out = capsys.readouterr().out
    assert "identity" in out and "DNS:gw.example.test,IP:192.0.2.1" in out
    assert run(*status, "--warn-days", "400") == 1
    # Rotate to a client certificate issued separately.
    assert (
        run(
            "certs",
            "issue",
            "--store",
            store,
            "--name",
            "gw.example.test",
            "--out-dir",
            str(tmp_path / "next"),
        )
        == 0
    )
    new_leaf = read_certificates(tmp_path / "next" / "cert.pem")[0]
    assert (
        run(
            "certs",
            "rotate",
            "--store",
            store,
            "--cert",
            str(tmp_path / "next" / "cert.pem"),
            "--key",
            str(tmp_path / "next" / "key.pem"),
        )
        == 0
    )
    assert read_certificates(ident / "cert.pem")[0] == new_leaf
    # A mismatched key is refused with exit 2 and a message naming the file.
    capsys.readouterr()
    assert (
        run(
            "certs",
            "rotate",
            "--store",
            store,
            "--cert",
            str(ident / "cert.pem.prev"),
            "--key",
            str(tmp_path / "next" / "key.pem"),
        )
        == 2
    )
    assert "matches none" in capsys.readouterr().err
    # Offline pin.
    assert run("certs", "pin", "--cert", str(ident / "cert.pem")) == 0
    assert capsys.readouterr().out.split()[0] == spki_pin(new_leaf)


def test_issue_without_names_is_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "certs")
    run("certs", "init-ca", "--store", store)
    assert run("certs", "issue", "--store", store) == 2
    assert "no names" in capsys.readouterr().err


def test_csr_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "certs")
    assert run("certs", "csr", "--store", store, "--name", "sip.example.test") == 0
    assert (tmp_path / "certs" / "csr" / "sip.example.test.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs" / "csr" / "sip.example.test.csr").exists()
    run("certs", "init-ca", "--store", store)
    run("certs", "issue", "--store", store, "--name", "a.test", "--out-dir", str(tmp_path / "src"))
    assert (
        run(
            "certs",
            "import",
            "--store",
            store,
            "--chain",
            str(tmp_path / "src" / "cert.pem"),
            "--key",
            str(tmp_path / "src" / "key.pem"),
        )
        == 0
    )
    assert (tmp_path / "certs" / "identity" / "cert.pem").exists()


def test_lab_and_live_commands_with_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "certs"
    assert run("certs", "lab", "--store", str(store)) == 0
    assert run("certs", "lab", "--store", str(store)) == 0
    assert "kept" in capsys.readouterr().out
    lab = store / "lab"
    provider_pin = spki_pin(read_certificates(lab / "provider.pem")[0])
    with tls_server(lab / "provider.pem", lab / "provider.key") as port:
        trust = ProviderTrustSettings(ca_bundle=str(lab / "ca.pem"), spki_pins=(provider_pin,))
        wan = types.SimpleNamespace(
            identity=TlsIdentitySettings(str(lab / "gateway.pem"), str(lab / "gateway.key")),
            trust=trust,
            provider_host="127.0.0.1",
            provider_port=port,
        )
        cfg = types.SimpleNamespace(wan=wan, certs=CertWatchSettings(store=str(store)))
        fake = types.ModuleType("gateway.config")
        fake.load_config = lambda path: cfg  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "gateway.config", fake)
        capsys.readouterr()
        assert run("certs", "pin", "--config", "gw.toml") == 0
        assert capsys.readouterr().out.split()[0] == provider_pin
        assert run("certs", "verify-provider", "--config", "gw.toml") == 0
        assert "VERIFIED and pinned" in capsys.readouterr().out
        assert (
            run("certs", "verify-provider", "--config", "gw.toml", "--server-name", "x.test") == 2
        )
        assert "NOT VERIFIED" in capsys.readouterr().out
        assert run("certs", "status", "--config", "gw.toml") == 0
        os.chmod(lab / "gateway.key", 0o644)
        assert run("certs", "status", "--config", "gw.toml") == 2


def test_status_accepts_a_public_ca_identity_next_to_a_private_provider_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway's certificate from a public CA (system store) while the provider is
    trusted through its own private CA: the identity is fine, the status must say so."""
    from gateway.certs.authority import create_ca, issue_certificate, parse_names
    from gateway.certs.store import write_certificates, write_private_key

    public = create_ca("Example Public Root")
    provider_ca = create_ca("Provider Private CA")
    leaf = issue_certificate(
        public.certificate, public.key, parse_names(["gw.example.test"]), days=200
    )
    write_certificates(tmp_path / "public-root.pem", [public.certificate])
    write_certificates(tmp_path / "provider-ca.pem", [provider_ca.certificate])
    write_certificates(tmp_path / "cert.pem", leaf.chain)
    write_private_key(tmp_path / "key.pem", leaf.key)
    # The system store, as OpenSSL finds it: here only the "public" root.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "public-root.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    status = (
        "certs", "status", "--store", str(tmp_path / "store"),
        "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"),
        "--ca-bundle", str(tmp_path / "provider-ca.pem"),
    )  # fmt: skip
    assert run(*status) == 0, capsys.readouterr().out
    identity_row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("identity ")
    )
    assert "  ok  " in identity_row
    # A certificate no known anchor issued is still an error.
    stranger = create_ca("Nobody's CA")
    other = issue_certificate(
        stranger.certificate, stranger.key, parse_names(["gw.example.test"]), days=200
    )
    write_certificates(tmp_path / "cert.pem", other.chain)
    write_private_key(tmp_path / "key.pem", other.key)
    assert run(*status) == 2
    assert "chain does not validate" in capsys.readouterr().out
