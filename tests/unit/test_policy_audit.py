"""``gateway audit``: one finding per practice."""

from __future__ import annotations

import pytest

from gateway.policy.audit import AuditView, audit, exit_status, format_report, secret_weaknesses
from gateway.policy.settings import (
    AllowlistSettings,
    CapLimits,
    CapSettings,
    DialPlanSettings,
    PhonePolicy,
    PolicySettings,
    SpikeSettings,
)

P = PolicySettings
A = AllowlistSettings
D = DialPlanSettings
LAN = ("192.0.2.0/24",)

GOOD_ADMIN = "Vq7#mZt2!rXc9Lp"
GOOD_SIP = ["Hk4$wQ9z&Tn2Bv", "Rm8%yE3x*Pj6Gd"]


def good(**changes: object) -> AuditView:
    base: dict[str, object] = {
        "tls_verify": True,
        "wan_transport": "tls",
        "srtp_required": True,
        "plaintext_downgrade": False,
        "admin_token": GOOD_ADMIN,
        "sip_secrets": GOOD_SIP,
        "personal_words": ["acme", "springfield"],
        "policy": PolicySettings(allowlist=AllowlistSettings(lan=("198.51.100.0/24",))),
    }
    base.update(changes)
    return AuditView(**base)  # type: ignore[arg-type]


def by_practice(view: AuditView) -> dict[str, str]:
    return {f.practice: f.status for f in audit(view)}


def test_good_deployment_passes_everything() -> None:
    findings = audit(good())
    assert all(f.status == "pass" for f in findings), format_report(findings)
    assert exit_status(findings) == 0


def test_default_policy_only_warns_about_broad_lan() -> None:
    statuses = by_practice(good(policy=PolicySettings()))
    assert statuses["lan-allowlist"] == "warn"
    assert [p for p, s in statuses.items() if s != "pass"] == ["lan-allowlist"]


@pytest.mark.parametrize(
    ("changes", "practice", "status"),
    [
        ({"wan_transport": "udp"}, "tls", "fail"),
        ({"tls_verify": False}, "tls", "fail"),
        ({"srtp_required": False}, "srtp", "fail"),
        ({"plaintext_downgrade": True}, "downgrade", "fail"),
        ({"policy": P(allowlist=A(lan=("0.0.0.0/0",)))}, "lan-allowlist", "fail"),
        ({"policy": P(allowlist=A(lan=LAN, wan=("::/0",)))}, "wan-allowlist", "fail"),
        ({"policy": P(allowlist=A(lan=LAN, wan=("8.0.0.0/8",)))}, "wan-allowlist", "warn"),
        ({"policy": P(dialplan=D(templates=("no-premium",)))}, "international", "warn"),
        ({"policy": P(dialplan=D(templates=("no-international",)))}, "premium", "fail"),
        ({"policy": P(dialplan=D(phones={"9": PhonePolicy(templates=())}))}, "premium", "warn"),
        ({"policy": P(caps=CapSettings(phone=CapLimits(0, 1, 1, 1)))}, "caps", "warn"),
        ({"policy": P(caps=CapSettings(spike=SpikeSettings(enabled=False)))}, "spike-lock", "warn"),
        ({"admin_token": None}, "admin-secret", "fail"),
        ({"admin_token": "short1A!"}, "admin-secret", "fail"),
        ({"admin_token": "P4ssw0rd!2024xyz"}, "admin-secret", "fail"),
        ({"admin_token": "Acme-Voice-2024!"}, "admin-secret", "fail"),
        ({"admin_token": GOOD_SIP[0]}, "admin-secret-distinct", "fail"),
        ({"sip_secrets": ["1234"]}, "sip-secrets", "fail"),
        ({"sip_secrets": [GOOD_SIP[0], GOOD_SIP[0]]}, "sip-secrets", "warn"),
    ],
)  # fmt: skip
def test_findings(changes: dict[str, object], practice: str, status: str) -> None:
    assert by_practice(good(**changes))[practice] == status


def test_no_admin_api_needs_no_token() -> None:
    assert by_practice(good(admin_token=None, admin_enabled=False))["admin-secret"] == "pass"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("Ab1!", "shorter"),
        ("abcdefghijklmnop", "fewer than three"),
        ("Tr0ub4dor&Monkey9", "dictionary"),
        ("xQ9#Dr4g0n!zz", "dictionary"),  # leetspeak undone
        ("Zz!!Zz!!Zz!!Zz!!", "distinct"),
    ],
)
def test_secret_weaknesses(secret: str, reason: str) -> None:
    assert any(reason in p for p in secret_weaknesses(secret))


def test_report_never_contains_secrets() -> None:
    report = format_report(audit(good(admin_token="Letmein", sip_secrets=["Letmein"])))
    assert "letmein" not in report.lower()
    assert "fail" in report and "fix:" in report
