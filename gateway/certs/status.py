"""``gateway certs status``: one table of every certificate the configuration uses.

For each certificate: subject, SANs (RFC 5280 §4.2.1.6), issuer, key type and size, not-after
with days left (§4.1.2.5), whether the chain validates to the configured trust (§6, judged by
OpenSSL as the running gateway would), whether the configured names match, and the SPKI pin
(RFC 7469 §2.4). The exit status is 2 when something is wrong (unusable now), 1 when something
expires within the warning window, 0 otherwise, so that cron and monitoring can act on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509

from gateway.certs.errors import CertificateError
from gateway.certs.inspect import (
    TrustAnchors,
    chain_problem,
    common_name,
    days_left,
    describe_key,
    is_issued_by,
    is_self_issued,
    key_matches,
    name_matches,
    normalise_pin,
    spki_pin,
    subject_alt_names,
    validity_problem,
)
from gateway.certs.store import read_certificates, read_private_key

EXIT_OK = 0
EXIT_EXPIRING = 1
EXIT_PROBLEM = 2


@dataclass(frozen=True)
class CertStatus:
    """One row of the status table."""

    #: What the certificate is for: "identity", "identity chain", "provider trust", …
    role: str
    file: str
    subject: str = "-"
    sans: str = "-"
    issuer: str = "-"
    key: str = "-"
    not_after: str = "-"
    days_left: int | None = None
    #: "ok", "-" (not applicable) or why the chain does not validate.
    chain: str = "-"
    #: "ok", "-" or which configured names are missing.
    name: str = "-"
    pin: str = "-"
    #: Unusable now: refused at start-up or by peers.
    problems: tuple[str, ...] = ()
    #: Usable but needs attention (expiry within the window).
    warnings: tuple[str, ...] = field(default=())


def _row(role: str, file: str, cert: x509.Certificate, now: dt.datetime, window: int) -> CertStatus:
    left = days_left(cert, now)
    problems: list[str] = []
    warnings: list[str] = []
    problem = validity_problem(cert, now)
    if problem:
        problems.append(f"{file}: {common_name(cert.subject)!r} {problem}")
    elif left <= window:
        warnings.append(f"{file}: {common_name(cert.subject)!r} expires in {left} days")
    return CertStatus(
        role=role,
        file=file,
        subject=common_name(cert.subject),
        sans=",".join(subject_alt_names(cert)) or "-",
        issuer=common_name(cert.issuer),
        key=describe_key(cert),
        not_after=f"{cert.not_valid_after_utc:%Y-%m-%d}",
        days_left=left,
        pin=spki_pin(cert),
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def identity_status(
    cert_path: str,
    key_path: str,
    *,
    passphrase: bytes | None,
    trust: TrustAnchors,
    names: Sequence[str] = (),
    window: int = 30,
    now: dt.datetime | None = None,
) -> list[CertStatus]:
    """Rows for the gateway's identity: the leaf (with key, chain and name checks), then the
    rest of its chain file."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = read_certificates(Path(cert_path))
    except CertificateError as exc:
        return [CertStatus("identity", cert_path, problems=(str(exc),))]
    leaf = chain[0]
    row = _row("identity", cert_path, leaf, now, window)
    problems = list(row.problems)
    try:
        key = read_private_key(Path(key_path), passphrase)
    except CertificateError as exc:
        problems.append(str(exc))
    else:
        if not key_matches(leaf, key):
            problems.append(f"{key_path}: private key does not match {cert_path}")
    for i in range(len(chain) - 1):
        if not is_issued_by(chain[i], chain[i + 1]):
            problems.append(f"{cert_path}: chain out of order at certificate {i + 2}")
            break
    try:
        chain_text = chain_problem(chain, trust, now) or "ok"
    except CertificateError as exc:
        chain_text = exc.reason
    if chain_text != "ok":
        problems.append(f"{cert_path}: chain does not validate to {trust.describe()}: {chain_text}")
    missing = [n for n in names if not name_matches(leaf, n)]
    name_text = "-" if not names else ("ok" if not missing else "missing " + ",".join(missing))
    if missing:
        problems.append(f"{cert_path}: configured names not in the certificate: {missing}")
    rows = [
        replace(row, chain=chain_text, name=name_text, problems=tuple(problems)),
    ]
    rows.extend(
        replace(_row("identity chain", cert_path, c, now, window), chain="-") for c in chain[1:]
    )
    return rows


def trust_status(
    ca_bundle: str | None, pins: Sequence[str], *, window: int = 30, now: dt.datetime | None = None
) -> list[CertStatus]:
    """Rows for the provider trust: each anchor of a configured bundle, and the pins' syntax.

    The system store is the operating system's to maintain and gets one summary row.
    """
    now = now or dt.datetime.now(dt.UTC)
    rows: list[CertStatus] = []
    if ca_bundle is None:
        rows.append(CertStatus("provider trust", "system store", chain="-"))
    else:
        try:
            anchors = read_certificates(Path(ca_bundle))
        except CertificateError as exc:
            rows.append(CertStatus("provider trust", ca_bundle, problems=(str(exc),)))
        else:
            for cert in anchors:
                row = _row("provider trust", ca_bundle, cert, now, window)
                rows.append(replace(row, chain="anchor" if is_self_issued(cert) else "partial"))
    for pin in pins:
        try:
            value = normalise_pin(pin)
        except ValueError as exc:
            rows.append(CertStatus("provider pin", "config", pin=pin, problems=(str(exc),)))
        else:
            rows.append(CertStatus("provider pin", "config", pin=value))
    return rows


def exit_status(rows: Sequence[CertStatus]) -> int:
    if any(r.problems for r in rows):
        return EXIT_PROBLEM
    if any(r.warnings for r in rows):
        return EXIT_EXPIRING
    return EXIT_OK


_COLUMNS = (
    ("ROLE", "role"),
    ("FILE", "file"),
    ("SUBJECT", "subject"),
    ("SANS", "sans"),
    ("ISSUER", "issuer"),
    ("KEY", "key"),
    ("NOT AFTER", "not_after"),
    ("DAYS", "days_left"),
    ("CHAIN", "chain"),
    ("NAME", "name"),
    ("SPKI SHA-256", "pin"),
)


def render_table(rows: Sequence[CertStatus]) -> str:
    """A fixed-width table, then every problem and warning on its own line."""
    cells = [[h for h, _ in _COLUMNS]]
    for r in rows:
        cells.append(["-" if getattr(r, a) is None else str(getattr(r, a)) for _, a in _COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    for r in rows:
        lines.extend(f"ERROR   {p}" for p in r.problems)
        lines.extend(f"WARNING {w}" for w in r.warnings)
    return "\n".join(lines)
