"""``gateway certs lab``: everything a one-machine lab needs, under ``certs/lab/``.

- ``ca.pem`` / ``ca.key``: the lab CA (trust it for both sides).
- ``gateway.pem`` / ``gateway.key``: the gateway (SANs IP:127.0.0.1, DNS:localhost,
  DNS:gateway.lab), chain file leaf then CA.
- ``provider.pem`` / ``provider.key``: a local provider (SANs IP:127.0.0.1, DNS:provider.lab,
  DNS:localhost).

Idempotent: material that is still good (parses, key matches, signed by the lab CA, the
expected SANs, more than :data:`RENEW_DAYS` days left) is kept, so re-running a lab script does
not change pins under a running test; ``force`` regenerates everything. A new CA always means
new leaves, since the old ones would no longer chain.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.certs.authority import Usage, create_ca, issue_certificate, parse_names
from gateway.certs.errors import CertificateError
from gateway.certs.inspect import days_left, is_issued_by, key_matches, validity_problem
from gateway.certs.store import (
    PrivateKey,
    read_certificates,
    read_private_key,
    write_certificates,
    write_private_key,
)

GATEWAY_NAMES = ("IP:127.0.0.1", "DNS:localhost", "DNS:gateway.lab")
PROVIDER_NAMES = ("IP:127.0.0.1", "DNS:provider.lab", "DNS:localhost")
#: Material closer than this to expiry is replaced on the next run.
RENEW_DAYS = 30


@dataclass(frozen=True)
class LabResult:
    directory: Path
    #: File stems written this run ("ca", "gateway", "provider").
    created: tuple[str, ...]
    #: File stems kept as they were.
    kept: tuple[str, ...]


def _load_pair(
    directory: Path, stem: str, now: dt.datetime
) -> tuple[list[x509.Certificate], PrivateKey] | None:
    """The pair if it exists, loads, matches and is not near expiry; else None."""
    try:
        certs = read_certificates(directory / f"{stem}.pem")
        key = read_private_key(directory / f"{stem}.key")
    except CertificateError:
        return None
    leaf = certs[0]
    if not key_matches(leaf, key) or validity_problem(leaf, now):
        return None
    if days_left(leaf, now) <= RENEW_DAYS:
        return None
    return certs, key


def make_lab(directory: Path, *, force: bool = False, now: dt.datetime | None = None) -> LabResult:
    now = now or dt.datetime.now(dt.UTC)
    created: list[str] = []
    kept: list[str] = []
    ca_pair = None if force else _load_pair(directory, "ca", now)
    if ca_pair is None:
        ca = create_ca("Gateway Lab CA", organization="sip-media-gateway lab", now=now)
        write_private_key(directory / "ca.key", ca.key)
        write_certificates(directory / "ca.pem", [ca.certificate])
        ca_cert, ca_key = ca.certificate, ca.key
        created.append("ca")
    else:
        ca_cert, ca_key = ca_pair[0][0], ca_pair[1]
        kept.append("ca")
    for stem, names in (("gateway", GATEWAY_NAMES), ("provider", PROVIDER_NAMES)):
        wanted = parse_names(names)
        pair = None if force or "ca" in created else _load_pair(directory, stem, now)
        if pair is not None:
            leaf = pair[0][0]
            try:
                san = list(
                    leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                )
            except x509.ExtensionNotFound:
                san = []
            if is_issued_by(leaf, ca_cert) and san == wanted:
                kept.append(stem)
                continue
        issued = issue_certificate(
            ca_cert, ca_key, wanted, usage=Usage.BOTH, common_name=f"{stem}.lab", now=now
        )
        write_private_key(directory / f"{stem}.key", issued.key)
        write_certificates(directory / f"{stem}.pem", issued.chain)
        created.append(stem)
    return LabResult(directory, tuple(created), tuple(kept))
