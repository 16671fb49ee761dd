"""gateway.audit_facts: the audit loads the files a configuration names before it claims
anything about them (trust anchors, the gateway's certificate and key, the SIP secrets)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.audit_facts import AuditInputError, audit_view
from gateway.config import load_config
from gateway.policy.audit import AuditFinding, audit, format_report
from tests.pki import make_ca, make_leaf, write_pair

NOW = dt.datetime.now(dt.UTC)


def site(tmp_path: Path, extra: str = "", provider: str = "sip.provider.example") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[lan]\nsip_address = "192.0.2.1"\nmedia_address = "192.0.2.1"\n'
        '[wan]\nsip_address = "198.51.100.2"\nmedia_address = "198.51.100.2"\n'
        + (f'provider_host = "{provider}"\n' if provider else "")
        + extra
    )
    return path


def findings(path: Path, env: dict[str, str] | None = None) -> dict[str, AuditFinding]:
    view = audit_view(load_config(path), env or {})
    return {f.practice: f for f in audit(view)}


def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = make_ca(now=NOW)
    leaf = make_leaf(ca, now=NOW)
    ca_file, _ = write_pair(tmp_path, "ca", [ca.certificate], ca.key)
    cert, key = write_pair(tmp_path, "gw", [leaf.certificate], leaf.key)
    return ca_file, cert, key


def test_a_missing_ca_bundle_fails_with_its_path(tmp_path: Path) -> None:
    found = findings(site(tmp_path, '[wan.trust]\nca_bundle = "absent/ca.pem"\n'))
    trust = found["provider-trust"]
    assert trust.status == "fail"
    assert str(tmp_path / "absent" / "ca.pem") in trust.message
    assert found["tls"].status == "pass" and "verified" not in found["tls"].message.split("on")[0]


def test_a_ca_bundle_that_loads_is_what_verification_is_claimed_against(tmp_path: Path) -> None:
    ca_file, _, _ = pair(tmp_path)
    trust = findings(site(tmp_path, f'[wan.trust]\nca_bundle = "{ca_file}"\n'))["provider-trust"]
    assert trust.status == "pass"
    assert f"CA bundle {ca_file} (1 trust anchor)" in trust.message


def test_a_file_that_is_not_pem_fails(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    trust = findings(site(tmp_path, '[wan.trust]\nca_bundle = "ca.pem"\n'))["provider-trust"]
    assert trust.status == "fail" and "ca.pem" in trust.message


def test_the_gateway_certificate_is_loaded_and_matched(tmp_path: Path) -> None:
    _, cert, key = pair(tmp_path)
    identity = f'[wan.identity]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
    found = findings(site(tmp_path, identity))["gateway-certificate"]
    assert found.status == "pass" and "key matches" in found.message


def test_a_world_readable_key_fails(tmp_path: Path) -> None:
    _, cert, key = pair(tmp_path)
    key.chmod(0o644)
    identity = f'[wan.identity]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
    found = findings(site(tmp_path, identity))["gateway-certificate"]
    assert found.status == "fail" and str(key) in found.message


def test_a_key_of_another_certificate_fails(tmp_path: Path) -> None:
    _, cert, _ = pair(tmp_path)
    other = make_leaf(make_ca(now=NOW), now=NOW)
    _, other_key = write_pair(tmp_path, "other", [other.certificate], other.key)
    identity = f'[wan.identity]\ncertificate = "{cert}"\nprivate_key = "{other_key}"\n'
    found = findings(site(tmp_path, identity))["gateway-certificate"]
    assert found.status == "fail" and "does not match" in found.message


def test_missing_certificate_files_fail_with_the_path(tmp_path: Path) -> None:
    identity = '[wan.identity]\ncertificate = "nope.pem"\nprivate_key = "nope.key"\n'
    found = findings(site(tmp_path, identity))["gateway-certificate"]
    assert found.status == "fail" and str(tmp_path / "nope") in found.message


def test_no_identity_and_no_secrets_file_are_n_a(tmp_path: Path) -> None:
    found = findings(site(tmp_path))
    assert found["gateway-certificate"].status == "n/a"
    assert found["sip-secrets"].status == "n/a"
    assert found["admin-secret"].status == "n/a"  # [admin] is off by default
    assert found["separation"].status == "pass"


def test_the_secrets_file_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "secrets.txt").write_text("Hk4$wQ9z&Tn2Bv\n\nRm8%yE3x*Pj6Gd\n")
    found = findings(site(tmp_path, '[audit]\nsip_secrets_file = "secrets.txt"\n'))
    assert found["sip-secrets"].status == "pass"
    assert found["sip-secrets"].message == "2 SIP secrets strong"


def test_an_unreadable_secrets_file_is_an_input_error(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, '[audit]\nsip_secrets_file = "absent.txt"\n'))
    with pytest.raises(AuditInputError, match=r"absent\.txt"):
        audit_view(config, {})


def test_a_trunk_downgrade_counts_like_the_wan_one(tmp_path: Path) -> None:
    trunks = (
        '[[trunks]]\nname = "a"\nprovider_host = "a.example"\n'
        '[[trunks]]\nname = "b"\nprovider_host = "b.example"\ninsecure_skip_verify = true\n'
    )
    found = findings(site(tmp_path, trunks, provider=""))
    assert found["tls"].status == "fail"


def test_the_media_loop_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", "0")
    found = findings(site(tmp_path))
    loop = found["media-loop"]
    assert loop.status == "warn"
    assert "turned off by GATEWAY_MEDIA_FASTPATH=0" in loop.message
    assert "keep_core_awake is ignored" in loop.message  # on by default
    assert "outside the checklist: the packet path" in format_report(list(found.values()))
