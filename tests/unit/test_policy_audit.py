"""``gateway audit``: one finding per practice."""

from __future__ import annotations

import pytest

from gateway.policy.audit import (
    CHECKLIST,
    AuditFinding,
    AuditView,
    FileCheck,
    audit,
    exit_status,
    format_report,
    secret_weaknesses,
)
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
        "provider_trust": [FileCheck("trunk provider: CA bundle ca.pem", None, "1 trust anchor")],
        "identity": FileCheck("certificate gw.pem and key gw.key", None, "CN=gw"),
        "sides_separate": True,
        "media_loop": "c",
        "media_loop_reason": "libsrtp 2.7.0",
    }
    base.update(changes)
    return AuditView(**base)  # type: ignore[arg-type]


def by_practice(view: AuditView) -> dict[str, str]:
    return {f.practice: f.status for f in audit(view)}


def test_good_deployment_passes_everything_it_can_check() -> None:
    findings = audit(good())
    # Phone firmware needs minimums and a running gateway's inventory: n/a without them.
    assert [f.practice for f in findings if f.status != "pass"] == ["phone-firmware"]
    assert all(f.status == "pass" for f in findings if f.practice != "phone-firmware")
    assert exit_status(findings) == 0


def test_default_policy_only_warns_about_broad_lan() -> None:
    statuses = by_practice(good(policy=PolicySettings()))
    assert statuses["lan-allowlist"] == "warn"
    assert [p for p, s in statuses.items() if s not in ("pass", "n/a")] == ["lan-allowlist"]


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


def test_no_admin_api_needs_no_token_and_nothing_is_claimed() -> None:
    statuses = by_practice(good(admin_token=None, admin_enabled=False))
    assert statuses["admin-secret"] == "n/a"
    assert statuses["admin-secret-distinct"] == "n/a"


def test_admin_by_client_certificate_only_needs_no_token() -> None:
    view = good(admin_token=None, admin_client_certificates=True)
    assert by_practice(view)["admin-secret"] == "pass"


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


# -- honest: n/a when there is nothing to check -----------------------------------------------


def finding(view: AuditView, practice: str) -> AuditFinding:
    return next(f for f in audit(view) if f.practice == practice)


def test_no_secrets_file_is_not_a_pass() -> None:
    view = good(sip_secrets=None)
    sip = finding(view, "sip-secrets")
    assert (sip.status, sip.message) == (
        "n/a",
        "no secrets file configured ([audit] sip_secrets_file)",
    )
    distinct = finding(view, "admin-secret-distinct")
    assert distinct.status == "n/a" and "sip_secrets_file" in distinct.message
    assert exit_status(audit(view)) == 0  # n/a never fails


def test_an_empty_secrets_file_is_a_warning_not_a_pass() -> None:
    sip = finding(good(sip_secrets=[]), "sip-secrets")
    assert sip.status == "warn" and "nothing was checked" in sip.message


def test_old_callers_without_facts_get_n_a_not_pass() -> None:
    view = AuditView(
        tls_verify=True,
        wan_transport="tls",
        srtp_required=True,
        plaintext_downgrade=False,
        admin_token=GOOD_ADMIN,
    )
    statuses = by_practice(view)
    for practice in (
        "provider-trust",
        "gateway-certificate",
        "separation",
        "media-loop",
        "sip-secrets",
    ):
        assert statuses[practice] == "n/a", practice
    assert "verified" not in finding(view, "tls").message.replace("verification", "")


def test_provider_trust_is_claimed_only_from_loaded_files() -> None:
    loaded = finding(good(), "provider-trust")
    assert loaded.status == "pass"
    assert "verified against trunk provider: CA bundle ca.pem (1 trust anchor)" in loaded.message
    missing = FileCheck(
        "trunk provider: CA bundle /etc/x/ca.pem",
        "trunk provider: /etc/x/ca.pem: cannot load CA bundle (No such file)",
    )
    failed = finding(good(provider_trust=[missing]), "provider-trust")
    assert failed.status == "fail" and "/etc/x/ca.pem" in failed.message
    off = finding(good(tls_verify=False), "provider-trust")
    assert off.status == "n/a"


def test_gateway_certificate_files() -> None:
    assert finding(good(identity=None), "gateway-certificate").status == "n/a"
    broken = FileCheck("certificate c.pem and key k.pem", "k.pem: readable by group or others")
    failed = finding(good(identity=broken), "gateway-certificate")
    assert failed.status == "fail" and "k.pem" in failed.message and failed.fix


def test_media_loop_finding() -> None:
    assert finding(good(), "media-loop").status == "pass"
    python = finding(
        good(
            media_loop="python",
            media_loop_reason="extension not built",
            keep_core_awake_ignored=True,
        ),
        "media-loop",
    )
    assert python.status == "warn"
    assert "extension not built" in python.message
    assert "keep_core_awake is ignored" in python.message
    assert finding(good(media_loop=None), "media-loop").status == "n/a"


def test_lan_and_wan_on_one_address_is_a_warning() -> None:
    assert finding(good(sides_separate=False), "separation").status == "warn"


def test_report_names_the_checklist_practices_and_counts_n_a() -> None:
    # A finding the glue adds after the core's (the shield's phone secrets) is grouped too.
    findings = [*audit(good(sip_secrets=None)), AuditFinding("phone-secrets", "n/a", "off")]
    report = format_report(findings)
    lines = report.splitlines()
    for practice, checks in CHECKLIST:
        assert practice in lines, practice
        for check in checks:
            # Each check is printed under its practice's heading.
            at = next(
                i for i, line in enumerate(lines) if line[:2] == "  " and line.split()[1] == check
            )
            heading = max(i for i, line in enumerate(lines[:at]) if not line.startswith(" "))
            assert lines[heading] == practice
    assert "  N/A   sip-secrets            no secrets file configured" in report
    assert lines[-1].endswith(", 0 fail, 4 n/a (nothing to check)")
    assert all(f.checklist_practice != "other" for f in findings)
