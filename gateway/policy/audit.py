"""``gateway audit``: the deployment's security posture, findings grouped by practice.

The audit reads a small view of the deployment (:class:`AuditView`) rather than the whole
config, so it stays independent of how the config is laid out, and reads no file itself: the
glue (``gateway.audit_facts``) loads the files the configuration names (trust anchors, the
gateway's certificate and key, the SIP secrets) and hands in what it found (:class:`FileCheck`)
along with which media loop would run. Each finding is pass, warn, fail or n/a with the fix in
one line; n/a means there was nothing to check (no secrets file, the admin API off) and is
never counted as a pass or a failure. A claim is made only about what was checked: "verified
provider certificate" needs the trust anchors loaded, not just verification switched on.
Findings never contain a secret, only what is wrong with it.

The practices are the seed checklist's (docs/design.md §4, "Practices enforced"), named in the
report (:data:`CHECKLIST`): voice separated from other traffic; signalling over verified TLS,
SRTP required, no plaintext downgrade, certificate files that load; allowlists not open to the
world; caps and the spike lock; international and premium-rate rules; flood and scanner
defence; strong, distinct admin and SIP secrets (at least 12 characters, three character
classes, no dictionary word, default password or personal data); up-to-date phones. The media
loop finding is outside the checklist: it says whether the packet path runs as built.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal

from gateway.policy.allowlist import parse_networks
from gateway.policy.settings import CapLimits, PolicySettings

Status = Literal["pass", "warn", "fail", "n/a"]

#: The seed checklist's practices, in its order, with the checks that report on each.
CHECKLIST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("firewall the phone system; separate voice from other traffic", ("separation",)),
    (
        "encrypt signalling and media (TLS, SRTP)",
        ("tls", "provider-trust", "gateway-certificate", "srtp", "downgrade"),
    ),
    ("allow calls only from known addresses", ("lan-allowlist", "wan-allowlist")),
    ("credit caps, block unnatural spikes", ("caps", "spike-lock")),
    ("disable international calling when not needed", ("international", "premium")),
    ("monitor for suspicious activity", ("flood-defence",)),
    (
        "change default passwords; strong, unique credentials; different admin and SIP secrets",
        ("admin-secret", "admin-secret-distinct", "sip-secrets", "phone-secrets"),
    ),
    ("keep systems up to date", ("phone-firmware",)),
    ("outside the checklist: the packet path", ("media-loop",)),
)
_PRACTICE_OF = {check: practice for practice, checks in CHECKLIST for check in checks}

MIN_SECRET_LENGTH = 12
#: Substrings shorter than this are only weak as the whole secret ("sip" inside a long random
#: string is chance, not a word).
_MIN_WORD = 4
_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"}


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One line of the report."""

    #: Short name of the check, e.g. "tls", "admin-secret" (see :data:`CHECKLIST`).
    practice: str
    status: Status
    message: str
    #: What to change; empty on a pass.
    fix: str = ""

    @property
    def checklist_practice(self) -> str:
        """The seed checklist's practice this check reports on."""
        return _PRACTICE_OF.get(self.practice, "other")


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What the glue found when it loaded a file the configuration names."""

    #: What was loaded, e.g. "trunk provider: CA bundle /etc/sip-media-gateway/ca.pem".
    subject: str
    #: Why it is unusable, naming the file; None when it loaded.
    problem: str | None = None
    #: What was found, e.g. "3 trust anchors", "CN=gw.example, 87 days left".
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PhoneFirmwareFacts:
    """The running gateway's phone inventory held against ``[inventory] minimum_firmware``."""

    #: Minimum versions configured (0: nothing to check).
    minimums: int
    #: Phones in the inventory, and how many of them have a minimum for their model.
    phones: int = 0
    checked: int = 0
    #: One line per phone below its minimum ("201@192.0.2.10 (Yealink T46S 66.85.0.5 < ...)").
    outdated: tuple[str, ...] = ()
    #: Why the inventory could not be read (no gateway running); None when it was.
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class AuditView:
    """What the audit needs to know about a deployment."""

    #: The WAN side verifies the provider's certificate.
    tls_verify: bool
    #: "tls", "tcp" or "udp".
    wan_transport: str
    srtp_required: bool
    #: Any trunk with the explicit plaintext downgrade set.
    plaintext_downgrade: bool
    admin_token: str | None
    #: The phones' SIP secrets from the secrets file; None: no file configured (n/a).
    sip_secrets: Sequence[str] | None = None
    #: Site name, domain, user names, street...: words a secret must not contain.
    personal_words: Sequence[str] = ()
    policy: PolicySettings = field(default_factory=PolicySettings)
    #: Whether the admin API is enabled at all (no token is then fine).
    admin_enabled: bool = True
    #: The admin API accepts client certificates (mutual TLS) in place of the token.
    admin_client_certificates: bool = False
    #: Each trunk's trust anchors as loaded; None: not loaded (no claim of verification).
    provider_trust: Sequence[FileCheck] | None = None
    #: The gateway's own certificate and key as loaded; None: none configured.
    identity: FileCheck | None = None
    #: The LAN and WAN sides bind to different addresses; None: not known.
    sides_separate: bool | None = None
    #: "c" or "python": the media loop a worker would run; None: not known.
    media_loop: str | None = None
    #: Why that loop (gateway.media.loop.REASONS), with details.
    media_loop_reason: str = ""
    #: media.keep_core_awake is set but the loop cannot honour it.
    keep_core_awake_ignored: bool = False
    #: The phone inventory against the minimum firmware versions; None: not asked.
    phone_firmware: PhoneFirmwareFacts | None = None


@cache
def weak_words() -> frozenset[str]:
    """The built-in list of common passwords and dictionary words."""
    text = resources.files("gateway.policy").joinpath("data/weak_words.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def _variants(secret: str) -> set[str]:
    """The secret lower-cased, and with common leetspeak undone (1 read as both i and l)."""
    lower = secret.lower()
    base = "".join(_LEET.get(c, c) for c in lower)
    return {lower, base.replace("1", "i").replace("!", "i"), base.replace("1", "l")}


def secret_weaknesses(secret: str, personal_words: Sequence[str] = ()) -> list[str]:
    """Why ``secret`` is weak; an empty list means it passes. Never echoes the secret."""
    problems = []
    if len(secret) < MIN_SECRET_LENGTH:
        problems.append(f"shorter than {MIN_SECRET_LENGTH} characters")
    classes = sum(
        (
            any(c.islower() for c in secret),
            any(c.isupper() for c in secret),
            any(c.isdigit() for c in secret),
            any(not c.isalnum() for c in secret),
        )
    )
    if classes < 3:
        problems.append("fewer than three of lower case, upper case, digits, symbols")
    variants = _variants(secret)
    words = weak_words()
    if any(v in words for v in variants) or any(
        w in v for v in variants for w in words if len(w) >= _MIN_WORD
    ):
        problems.append("contains a dictionary word or common password")
    personal = [p.lower() for p in personal_words if len(p) >= 3]
    if any(p in v for v in variants for p in personal):
        problems.append("contains personal or site data")
    if len(set(secret)) <= max(2, len(secret) // 4):
        problems.append("too few distinct characters")
    return problems


def audit(view: AuditView) -> list[AuditFinding]:
    """All findings, in the checklist's order (:data:`CHECKLIST`)."""
    findings = [_separation(view)]
    findings += [_tls(view), _provider_trust(view), _identity(view), _srtp(view)]
    findings += [_downgrade(view)]
    findings += [_lan_allowlist(view.policy), _wan_allowlist(view.policy)]
    findings += [_caps(view.policy), _spike(view.policy)]
    findings += [_international(view.policy), _premium(view.policy)]
    findings += [_flood(view.policy)]
    findings += [_admin_secret(view), _admin_distinct(view), _sip_secrets(view)]
    findings += [_phone_firmware(view.phone_firmware), _media_loop(view)]
    return findings


def format_report(findings: Sequence[AuditFinding]) -> str:
    """The findings under the name of the checklist practice each reports on."""
    lines = []
    practice = None
    order = {check: i for i, check in enumerate(_PRACTICE_OF)}
    # Grouped in the checklist's order, whatever order the findings came in (sorted is stable).
    for f in sorted(findings, key=lambda f: order.get(f.practice, len(order))):
        if f.checklist_practice != practice:
            practice = f.checklist_practice
            lines.append(practice)
        lines.append(f"  {f.status.upper():<5} {f.practice:<22} {f.message}")
        if f.fix:
            lines.append(f"{'':<30}fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("pass", "warn", "fail", "n/a")}
    lines.append(
        f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, "
        f"{counts['n/a']} n/a (nothing to check)"
    )
    return "\n".join(lines)


def exit_status(findings: Sequence[AuditFinding]) -> int:
    """1 when anything fails (so CI and deploy scripts stop), else 0; n/a never fails."""
    return 1 if any(f.status == "fail" for f in findings) else 0


# --------------------------------------------------------------------------- the practices


def _tls(view: AuditView) -> AuditFinding:
    if view.wan_transport.lower() != "tls":
        return AuditFinding(
            "tls",
            "fail",
            f"WAN signalling over {view.wan_transport}",
            "set the trunk transport to tls (port 5061)",
        )
    if not view.tls_verify:
        return AuditFinding(
            "tls",
            "fail",
            "the provider's certificate is not verified",
            "turn certificate verification on; pin or add the provider's CA",
        )
    return AuditFinding("tls", "pass", "SIP over TLS with certificate verification on")


def _provider_trust(view: AuditView) -> AuditFinding:
    if not view.tls_verify or view.wan_transport.lower() != "tls":
        return AuditFinding(
            "provider-trust", "n/a", "no provider certificate is verified (see tls above)"
        )
    if view.provider_trust is None:
        return AuditFinding(
            "provider-trust", "n/a", "trust anchors not loaded by this audit: not verified"
        )
    broken = [c for c in view.provider_trust if c.problem is not None]
    if broken:
        return AuditFinding(
            "provider-trust",
            "fail",
            "; ".join(str(c.problem) for c in broken),
            "fix the CA bundle path or file ([wan.trust] / [trunks.trust] ca_bundle)",
        )
    loaded = "; ".join(
        f"{c.subject} ({c.detail})" if c.detail else c.subject for c in view.provider_trust
    )
    return AuditFinding(
        "provider-trust", "pass", f"provider certificates verified against {loaded}"
    )


def _identity(view: AuditView) -> AuditFinding:
    found = view.identity
    if found is None:
        return AuditFinding(
            "gateway-certificate",
            "n/a",
            "no gateway certificate configured ([wan.identity]): none presented to the provider",
        )
    if found.problem is not None:
        return AuditFinding(
            "gateway-certificate",
            "fail",
            str(found.problem),
            "re-import the pair (gateway certs import) or fix the key file's mode (0600)",
        )
    detail = f" ({found.detail})" if found.detail else ""
    return AuditFinding(
        "gateway-certificate",
        "pass",
        f"{found.subject}: present, parsed, key matches, key not readable by others{detail}",
    )


def _srtp(view: AuditView) -> AuditFinding:
    if view.srtp_required:
        return AuditFinding("srtp", "pass", "SRTP required on the WAN side")
    return AuditFinding("srtp", "fail", "WAN media may be plain RTP", "require SRTP on the trunk")


def _downgrade(view: AuditView) -> AuditFinding:
    if view.plaintext_downgrade:
        return AuditFinding(
            "downgrade",
            "fail",
            "a trunk allows a plaintext downgrade",
            "remove the downgrade unless the provider cannot do SRTP yet",
        )
    return AuditFinding("downgrade", "pass", "no plaintext downgrade configured")


def _broad(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return network.prefixlen < (16 if network.version == 4 else 32)


def _lan_allowlist(policy: PolicySettings) -> AuditFinding:
    networks = parse_networks(policy.allowlist.lan)
    if not networks:
        return AuditFinding(
            "lan-allowlist",
            "warn",
            "no LAN source may use the gateway",
            "list the phones' subnet in [policy.allowlist] lan",
        )
    if any(n.prefixlen == 0 for n in networks):
        return AuditFinding(
            "lan-allowlist",
            "fail",
            "the LAN allowlist admits every address",
            "list only the phones' subnet",
        )
    public = [str(n) for n in networks if not n.is_private]
    if public:
        return AuditFinding(
            "lan-allowlist",
            "warn",
            f"public ranges on the LAN side: {public}",
            "phones should be on a private voice VLAN",
        )
    broad = [str(n) for n in networks if n.version == 4 and n.prefixlen < 24]
    if broad:
        return AuditFinding(
            "lan-allowlist",
            "warn",
            f"broad LAN ranges: {', '.join(broad)}",
            "narrow the LAN allowlist to the phones' subnet",
        )
    return AuditFinding("lan-allowlist", "pass", "LAN sources limited to the phones' subnets")


def _wan_allowlist(policy: PolicySettings) -> AuditFinding:
    networks = parse_networks(policy.allowlist.wan)
    if any(n.prefixlen == 0 for n in networks):
        return AuditFinding(
            "wan-allowlist",
            "fail",
            "the WAN allowlist admits the whole internet",
            "list only the provider's published signalling ranges",
        )
    broad = [str(n) for n in networks if _broad(n)]
    if broad:
        return AuditFinding(
            "wan-allowlist",
            "warn",
            f"broad WAN ranges: {', '.join(broad)}",
            "narrow to the provider's published ranges",
        )
    if not networks:
        return AuditFinding(
            "wan-allowlist", "pass", "WAN peers limited to the provider's resolved addresses"
        )
    return AuditFinding("wan-allowlist", "pass", "WAN peers limited to listed ranges")


def _templates_by_override(policy: PolicySettings) -> dict[str, tuple[str, ...]]:
    """Every phone and group that replaces the site's templates, with what it uses."""
    out: dict[str, tuple[str, ...]] = {}
    for name, group in policy.dialplan.groups.items():
        if group.templates is not None:
            out[f"group {name}"] = group.templates
    for name, phone in policy.dialplan.phones.items():
        if phone.templates is not None:
            out[f"phone {name}"] = phone.templates
    return out


def _international(policy: PolicySettings) -> AuditFinding:
    plan = policy.dialplan
    site = "no-international" in plan.templates or any(
        r.action == "deny" and r.window is None and ("+" in r.prefixes or r.pattern == ".*")
        for r in plan.rules
    )
    if not site:
        return AuditFinding(
            "international",
            "warn",
            "international calling is open site-wide",
            'add "no-international" to [policy.dialplan] templates and allow '
            "it per phone where needed",
        )
    exceptions = [
        k for k, t in _templates_by_override(policy).items() if "no-international" not in t
    ]
    if exceptions:
        return AuditFinding(
            "international",
            "pass",
            f"international blocked except for {', '.join(sorted(exceptions))}",
        )
    return AuditFinding("international", "pass", "international calling blocked")


def _premium(policy: PolicySettings) -> AuditFinding:
    if "no-premium" not in policy.dialplan.templates:
        return AuditFinding(
            "premium",
            "fail",
            "premium-rate numbers can be dialled",
            'add "no-premium" to [policy.dialplan] templates',
        )
    exceptions = [k for k, t in _templates_by_override(policy).items() if "no-premium" not in t]
    if exceptions:
        return AuditFinding(
            "premium",
            "warn",
            f"premium-rate allowed for {', '.join(sorted(exceptions))}",
            'keep "no-premium" in every override\'s templates',
        )
    return AuditFinding("premium", "pass", "premium-rate numbers blocked")


def _unset_caps(limits: CapLimits) -> list[str]:
    return [
        name
        for name in (
            "concurrent",
            "calls_per_hour",
            "minutes_per_day",
            "international_minutes_per_day",
        )
        if not getattr(limits, name)
    ]


def _caps(policy: PolicySettings) -> AuditFinding:
    unset = [f"phone.{n}" for n in _unset_caps(policy.caps.phone)]
    unset += [f"site.{n}" for n in _unset_caps(policy.caps.site)]
    for name, phone in policy.dialplan.phones.items():
        if phone.caps is not None:
            unset += [f"phones.{name}.{n}" for n in _unset_caps(phone.caps)]
    for name, group in policy.dialplan.groups.items():
        if group.caps is not None:
            unset += [f"groups.{name}.{n}" for n in _unset_caps(group.caps)]
    if unset:
        return AuditFinding(
            "caps",
            "warn",
            f"unlimited: {', '.join(unset)}",
            "set every cap in [policy.caps] to what the site really uses",
        )
    return AuditFinding("caps", "pass", "concurrent, hourly and daily caps set")


def _spike(policy: PolicySettings) -> AuditFinding:
    if not policy.caps.spike.enabled:
        return AuditFinding(
            "spike-lock",
            "warn",
            "the outbound spike lock is off",
            "set [policy.caps.spike] enabled = true",
        )
    return AuditFinding("spike-lock", "pass", "outbound spike lock on")


def _flood(policy: PolicySettings) -> AuditFinding:
    f = policy.flood
    off = [n for n in ("per_source", "register", "invite", "site") if not getattr(f, n).rate]
    if not f.scanner_user_agents:
        off.append("scanner_user_agents")
    if off:
        return AuditFinding(
            "flood-defence",
            "warn",
            f"switched off: {', '.join(off)}",
            "restore the defaults in [policy.flood]",
        )
    return AuditFinding("flood-defence", "pass", "rate limits, scanner and brute-force bans on")


def _separation(view: AuditView) -> AuditFinding:
    if view.sides_separate is None:
        return AuditFinding("separation", "n/a", "the LAN and WAN addresses were not given")
    if not view.sides_separate:
        return AuditFinding(
            "separation",
            "warn",
            "the LAN and WAN sides share an address",
            "bind [lan] and [wan] to the voice VLAN's and the uplink's own addresses",
        )
    return AuditFinding("separation", "pass", "LAN and WAN sides on separate addresses")


def _phone_firmware(facts: PhoneFirmwareFacts | None) -> AuditFinding:
    """Phones below the operator's minimum firmware, as the running gateway saw them."""
    fix = 'set [inventory] minimum_firmware, e.g. { "Yealink T46S" = "66.86.0.15" }'
    if facts is None or not facts.minimums:
        return AuditFinding("phone-firmware", "n/a", "no minimum firmware configured", fix)
    if facts.unavailable is not None:
        return AuditFinding(
            "phone-firmware",
            "n/a",
            f"no phone inventory to check: {facts.unavailable}",
            "run the audit where the gateway runs (it asks its control socket)",
        )
    if not facts.phones:
        return AuditFinding("phone-firmware", "n/a", "no phones seen yet by the running gateway")
    if facts.outdated:
        return AuditFinding(
            "phone-firmware",
            "warn",
            f"{len(facts.outdated)} phone(s) below the minimum firmware: "
            + "; ".join(facts.outdated),
            "update those phones' firmware (gateway phones lists them)",
        )
    if not facts.checked:
        return AuditFinding(
            "phone-firmware",
            "n/a",
            f"none of the {facts.phones} phone(s) seen has a minimum for its model",
            "add their models to [inventory] minimum_firmware (gateway phones names them)",
        )
    return AuditFinding(
        "phone-firmware",
        "pass",
        f"{facts.checked} of {facts.phones} phone(s) checked, none below its minimum firmware",
    )


def _media_loop(view: AuditView) -> AuditFinding:
    if view.media_loop is None:
        return AuditFinding("media-loop", "n/a", "which media loop runs was not determined")
    if view.media_loop == "c":
        return AuditFinding("media-loop", "pass", f"C fast path ({view.media_loop_reason})")
    ignored = "; media.keep_core_awake is ignored" if view.keep_core_awake_ignored else ""
    return AuditFinding(
        "media-loop",
        "warn",
        f"media runs on the Python loop ({view.media_loop_reason}){ignored}: "
        "fewer calls per core, more latency",
        "install with a C compiler and libsrtp2-dev so the _fastpath extension builds, "
        "and leave GATEWAY_MEDIA_FASTPATH unset",
    )


def _admin_secret(view: AuditView) -> AuditFinding:
    if not view.admin_enabled:
        return AuditFinding("admin-secret", "n/a", "admin API disabled ([admin] enabled)")
    if view.admin_token is None:
        if view.admin_client_certificates:
            return AuditFinding(
                "admin-secret", "pass", "no admin token: admin API by client certificate only"
            )
        return AuditFinding(
            "admin-secret",
            "fail",
            "the admin API has no secret",
            "set a random admin token (e.g. openssl rand -base64 24)",
        )
    problems = secret_weaknesses(view.admin_token, view.personal_words)
    if problems:
        return AuditFinding(
            "admin-secret",
            "fail",
            f"admin secret: {'; '.join(problems)}",
            "use a random token of 16+ characters (openssl rand -base64 24)",
        )
    return AuditFinding("admin-secret", "pass", "admin secret strong")


def _admin_distinct(view: AuditView) -> AuditFinding:
    token = view.admin_token
    if not view.admin_enabled or token is None:
        return AuditFinding("admin-secret-distinct", "n/a", "no admin secret to compare")
    if view.sip_secrets is None:
        return AuditFinding(
            "admin-secret-distinct",
            "n/a",
            "no SIP secrets to compare with ([audit] sip_secrets_file)",
        )
    folded = token.casefold()
    reused = [
        i + 1
        for i, s in enumerate(view.sip_secrets)
        if s
        and (
            s.casefold() == folded
            or (len(s) >= 6 and (s.casefold() in folded or folded in s.casefold()))
        )
    ]
    if reused:
        return AuditFinding(
            "admin-secret-distinct",
            "fail",
            f"admin secret reuses SIP secret #{', #'.join(map(str, reused))}",
            "give the admin API its own secret",
        )
    return AuditFinding("admin-secret-distinct", "pass", "admin secret distinct from SIP secrets")


def _sip_secrets(view: AuditView) -> AuditFinding:
    secrets = view.sip_secrets
    if secrets is None:
        return AuditFinding(
            "sip-secrets", "n/a", "no secrets file configured ([audit] sip_secrets_file)"
        )
    if not secrets:
        return AuditFinding(
            "sip-secrets",
            "warn",
            "the SIP secrets file lists no secret: nothing was checked",
            "list the phones' SIP passwords in it, one per line",
        )
    weak = [i + 1 for i, s in enumerate(secrets) if secret_weaknesses(s, view.personal_words)]
    duplicates = len(secrets) - len(set(secrets))
    if weak:
        return AuditFinding(
            "sip-secrets",
            "fail",
            f"weak SIP secret #{', #'.join(map(str, weak))}",
            "set random 16+ character SIP passwords at the provider and here",
        )
    if duplicates:
        return AuditFinding(
            "sip-secrets",
            "warn",
            "some phones share a SIP secret",
            "give every phone its own SIP password",
        )
    return AuditFinding("sip-secrets", "pass", f"{len(secrets)} SIP secrets strong")
