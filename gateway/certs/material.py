"""Certificate and key material for the TLS layer: load, validate, build ``ssl`` contexts.

The TLS glue calls :func:`load_configured_identity` at start-up and refuses to start when it
raises: an unreadable, loosely-permissioned, expired, not-yet-valid or mismatched pair never
reaches a socket. Each :class:`CertificateError` names the file and the reason.

Contexts are TLS 1.2+ with peer verification on (RFC 5246 / RFC 8446; RFC 5630 and RFC 5922
§7 for SIP over TLS); SPKI pins (RFC 7469 §2.6: the connection is acceptable if any key of
the validated chain is pinned) are checked after the handshake by :func:`verify_pins`, because
the standard ``ssl`` module has no hook inside verification. A pin mismatch raises, and the
caller closes the connection exactly as for a failed verification.

:class:`IdentityWatcher` lets a running gateway take up a rotated certificate: it notices the
files changed, loads and validates the new pair, and hands back a new :class:`Identity` from
which the caller builds a fresh context for new connections (existing ones, and the calls on
them, keep going).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway.certs.errors import CertificateError, PinMismatchError
from gateway.certs.inspect import (
    is_issued_by,
    key_matches,
    normalise_pin,
    spki_pin,
    validity_problem,
)
from gateway.certs.settings import ProviderTrustSettings, TlsIdentitySettings
from gateway.certs.store import PrivateKey, identity_passphrase, read_certificates, read_private_key


@dataclass(frozen=True)
class Identity:
    """A validated certificate chain and its private key, as loaded from two files."""

    cert_path: str
    key_path: str
    #: Leaf first, then intermediates in issuer order.
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey = field(repr=False)
    #: Kept only to hand to ``SSLContext.load_cert_chain``; never shown.
    passphrase: bytes | None = field(default=None, repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def pin(self) -> str:
        return spki_pin(self.leaf)


def load_identity(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    now: dt.datetime | None = None,
) -> Identity:
    """Load and validate a certificate chain and its key, or raise CertificateError(file, why).

    Refused: a key file group/others can access, a key that does not match the leaf, a leaf
    outside its validity period (RFC 5280 §4.1.2.5), a chain whose certificates are not in
    issuer order (peers would fail to build the path).
    """
    now = now or dt.datetime.now(dt.UTC)
    cert_file, key_file = Path(cert_path), Path(key_path)
    chain = read_certificates(cert_file)
    key = read_private_key(key_file, passphrase)
    leaf = chain[0]
    if not key_matches(leaf, key):
        raise CertificateError(
            str(key_file), f"private key does not match the certificate in {cert_file}"
        )
    problem = validity_problem(leaf, now)
    if problem:
        raise CertificateError(str(cert_file), f"certificate {problem}")
    for i in range(len(chain) - 1):
        if not is_issued_by(chain[i], chain[i + 1]):
            raise CertificateError(
                str(cert_file),
                f"certificate {i + 2} did not issue certificate {i + 1}: the chain must be"
                " leaf first, then each issuer (gateway certs import puts it in order)",
            )
    return Identity(str(cert_file), str(key_file), tuple(chain), key, passphrase)


def load_configured_identity(
    settings: TlsIdentitySettings, *, now: dt.datetime | None = None
) -> Identity:
    """:func:`load_identity` with the passphrase taken from where the settings say."""
    return load_identity(
        settings.certificate, settings.private_key, identity_passphrase(settings), now=now
    )


def _load_into(context: ssl.SSLContext, identity: Identity) -> None:
    try:
        context.load_cert_chain(identity.cert_path, identity.key_path, identity.passphrase)
    except (ssl.SSLError, OSError) as exc:
        # The files changed between validation and this load (a rotation in progress).
        raise CertificateError(
            identity.cert_path, f"cannot load into TLS context ({exc})"
        ) from None


def build_client_context(
    trust: ProviderTrustSettings, identity: Identity | None = None
) -> ssl.SSLContext:
    """A TLS client context: TLS 1.2+, chain and host name verified against ``trust``.

    ``identity`` is presented when the provider asks for a client certificate (mutual TLS).
    Pins in ``trust`` are not enforced here: call :func:`verify_pins` after the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if trust.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=trust.ca_bundle)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(trust.ca_bundle, f"cannot load CA bundle ({exc})") from None
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if identity is not None:
        _load_into(context, identity)
    return context


def build_server_context(identity: Identity, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS server context: TLS 1.2+, presenting ``identity``.

    With ``client_ca`` a client certificate chaining to it is required (mutual TLS); without
    it none is requested, which is only right for peers authenticated otherwise.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_into(context, identity)
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(client_ca, f"cannot load client CA bundle ({exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[x509.Certificate]:
    """The verified chain when the ``ssl`` module exposes it (3.13+), else the leaf alone."""
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is not None:
        ders: list[bytes] = list(getter())
    else:
        leaf = ssl_object.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return [x509.load_der_x509_certificate(d) for d in ders]


def verify_pins(ssl_object: ssl.SSLObject | ssl.SSLSocket, pins: Sequence[str]) -> None:
    """Raise PinMismatchError unless a key of the peer's chain is pinned (RFC 7469 §2.6).

    No pins means no pinning. On Python before 3.13 only the leaf's key can be seen, so pin
    the provider's own key (``gateway certs pin`` prints it) rather than its CA's.
    """
    if not pins:
        return
    wanted = {normalise_pin(p) for p in pins}
    chain = peer_chain(ssl_object)
    if not chain:
        raise PinMismatchError("", "peer sent no certificate to check pins against")
    seen = [spki_pin(c) for c in chain]
    if wanted.isdisjoint(seen):
        raise PinMismatchError(
            "",
            f"peer certificate key pin {seen[0]} is not among the configured spki_pins",
        )


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class IdentityWatcher:
    """Notices a rotated certificate/key pair and loads it once it is consistent.

    ``rotate`` replaces the key and the certificate with two ``os.replace`` calls; between
    them the pair mismatches. A poll that lands there keeps the current identity and tries
    again on the next poll instead of failing, so a rotation is taken up without a restart.
    """

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        passphrase: bytes | None = None,
        current: Identity | None = None,
    ) -> None:
        self._cert_path = cert_path
        self._key_path = key_path
        self._passphrase = passphrase
        self.current = current
        self._seen = (_signature(cert_path), _signature(key_path)) if current else None
        #: The last load failure, for the caller to log once; None after a good load.
        self.last_error: CertificateError | None = None

    def snapshot(self) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """The files' identity (inode, mtime, size) now; take it *before* loading them."""
        return (_signature(self._cert_path), _signature(self._key_path))

    def adopt(
        self,
        identity: Identity,
        seen: tuple[tuple[int, int, int] | None, tuple[int, int, int] | None],
    ) -> None:
        """Someone else (SIGHUP, an admin request) loaded the files as they were at ``seen``:
        do not take the same files up a second time."""
        self._seen = seen
        self.current = identity
        self.last_error = None

    def poll(self, now: dt.datetime | None = None) -> Identity | None:
        """A new Identity if the files changed and now form a valid pair, else None."""
        seen = self.snapshot()
        if seen == self._seen:
            return None
        try:
            identity = load_identity(self._cert_path, self._key_path, self._passphrase, now=now)
        except CertificateError as exc:
            self.last_error = exc
            return None
        self._seen = seen
        self.current = identity
        self.last_error = None
        return identity
