"""The running gateway's TLS material: loaded, validated, swapped without dropping calls.

New material (from ``gateway certs rotate``, a file change, SIGHUP or an admin request) is
parsed and checked first — key matches, chain in order, within its validity (RFC 5280
§4.1.2.5) — and only then swapped in. Swapping replaces the *contexts* that new connections
are built from; connections already up keep the session they negotiated, so calls go on.
Bad material is refused with the file and the reason, and the old certificate stays in
service. Nothing secret is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass

from gateway.certs.errors import CertificateError
from gateway.certs.expiry import ExpiryWatch
from gateway.certs.inspect import spki_pin
from gateway.certs.material import (
    Identity,
    IdentityWatcher,
    build_client_context,
    build_server_context,
    load_configured_identity,
)
from gateway.certs.settings import ProviderTrustSettings, TlsIdentitySettings
from gateway.certs.store import identity_passphrase

log = logging.getLogger("gateway.certs")


@dataclass(frozen=True)
class CertificateState:
    """What an operator sees about the gateway's own certificate."""

    file: str
    subject: str
    not_after: dt.datetime
    pin: str
    reloads: int
    last_error: str | None

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds()


class TlsMaterial:
    """Current client and server TLS contexts, rebuilt when the identity changes."""

    def __init__(
        self,
        identity_settings: TlsIdentitySettings | None,
        trust: ProviderTrustSettings,
        *,
        warn_days: tuple[int, ...] = (30, 14, 7, 1),
        skip_verify: bool = False,
        plaintext: bool = False,
    ) -> None:
        self._identity_settings = identity_settings
        self._trust = trust
        self._skip_verify = skip_verify
        self._plaintext = plaintext
        self._expiry = ExpiryWatch(warn_days)
        self.identity: Identity | None = None
        self.client_context: ssl.SSLContext | None = None
        self.server_context: ssl.SSLContext | None = None
        self.reloads = 0
        self.last_error: str | None = None
        self._watcher: IdentityWatcher | None = None

    def load(self) -> None:
        """First load at start-up: any problem is fatal (CertificateError names the file)."""
        identity = None
        if self._identity_settings is not None:
            identity = load_configured_identity(self._identity_settings)
            self._watcher = IdentityWatcher(
                self._identity_settings.certificate,
                self._identity_settings.private_key,
                identity_passphrase(self._identity_settings),
                current=identity,
            )
        self._apply(identity)

    def _apply(self, identity: Identity | None) -> None:
        client = None
        if not self._plaintext:
            client = build_client_context(self._trust, identity)
            if self._skip_verify:
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE
        server = build_server_context(identity) if identity is not None else None
        # Only now, with every context built, does anything change.
        self.identity = identity
        self.client_context = client
        self.server_context = server

    def poll(self) -> bool:
        """Take up rotated files once they form a valid pair; True when something changed."""
        if self._watcher is None:
            return False
        identity = self._watcher.poll()
        if identity is None:
            error = self._watcher.last_error
            if error is not None and str(error) != self.last_error:
                self.last_error = str(error)
                log.error("new certificate refused, the old one stays in service: %s", error)
            return False
        return self._swap(identity, "files changed")

    def reload(self, reason: str) -> str | None:
        """Reload from the configured files now; returns the error text, None on success."""
        if self._identity_settings is None:
            return "no gateway certificate is configured (wan.identity)"
        # Taken before loading: a change after this point is still noticed by poll().
        seen = self._watcher.snapshot() if self._watcher is not None else None
        try:
            identity = load_configured_identity(self._identity_settings)
        except CertificateError as exc:
            self.last_error = str(exc)
            log.error(
                "certificate reload (%s) refused, the old one stays in service: %s", reason, exc
            )
            return str(exc)
        if not self._swap(identity, reason):
            return self.last_error
        if self._watcher is not None and seen is not None:
            # The file watch must not load the same files again ("files changed").
            self._watcher.adopt(identity, seen)
        return None

    def _swap(self, identity: Identity, reason: str) -> bool:
        try:
            self._apply(identity)
        except CertificateError as exc:
            self.last_error = str(exc)
            log.error(
                "certificate reload (%s) refused, the old one stays in service: %s", reason, exc
            )
            return False
        self.reloads += 1
        self.last_error = None
        leaf = identity.leaf
        log.info(
            "certificate reloaded (%s): %s, valid until %s, pin %s",
            reason,
            leaf.subject.rfc4514_string(),
            leaf.not_valid_after_utc.isoformat(),
            spki_pin(leaf),
        )
        return True

    def check_expiry(self, now: dt.datetime | None = None) -> None:
        """Warn once per threshold (30, 14, 7, 1 days by default) before not-after."""
        if self.identity is None:
            return
        warning = self._expiry.check(
            self.identity.cert_path, self.identity.leaf, now or dt.datetime.now(dt.UTC)
        )
        if warning is not None:
            log.warning(
                "certificate %s (%s) expires %s: %d day(s) left",
                warning.file,
                warning.subject,
                warning.not_after.isoformat(),
                warning.days_left,
            )

    def state(self) -> CertificateState | None:
        if self.identity is None:
            return None
        leaf = self.identity.leaf
        return CertificateState(
            file=self.identity.cert_path,
            subject=leaf.subject.rfc4514_string(),
            not_after=leaf.not_valid_after_utc,
            pin=spki_pin(leaf),
            reloads=self.reloads,
            last_error=self.last_error,
        )
