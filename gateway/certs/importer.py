"""Bringing certificates into the store: PEM chain + key, PKCS#12, and atomic rotation.

Whatever the source, the material goes through :func:`prepare_identity` before a byte is
written: the key must match one certificate (that is the leaf), the chain is put in issuer
order (RFC 5246 §7.4.2: leaf first, each next one certifying the one before), certificates
not on the path are dropped and reported, and a leaf outside its validity period (RFC 5280
§4.1.2.5) is refused. PKCS#12 is RFC 7292.

:func:`install_identity` writes both files through temporary files fsync-ed in the target
directory and then swaps them in with ``os.replace`` back to back, keeping the previous pair
as ``*.prev``; a running gateway's :class:`~gateway.certs.material.IdentityWatcher` takes the
new pair up (a poll between the two renames sees a mismatch and simply retries).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.certs.errors import CertificateError
from gateway.certs.inspect import (
    common_name,
    is_self_issued,
    key_matches,
    order_chain,
    validity_problem,
)
from gateway.certs.material import Identity, load_identity
from gateway.certs.store import (
    CERT_MODE,
    KEY_MODE,
    PrivateKey,
    certs_to_pem,
    key_to_pem,
    read_certificates,
    read_private_key,
)


@dataclass(frozen=True)
class PreparedIdentity:
    """A key and its chain in order, ready to be written, with what the operator should know."""

    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    #: Certificates given but not on the leaf's path (dropped).
    dropped: tuple[x509.Certificate, ...] = ()
    #: Non-fatal findings: intermediates out of validity, an incomplete chain.
    notes: tuple[str, ...] = ()


def prepare_identity(
    certs: Sequence[x509.Certificate],
    key: PrivateKey,
    *,
    source: str,
    now: dt.datetime | None = None,
) -> PreparedIdentity:
    """Find the leaf for ``key``, order the chain, refuse a leaf that is not valid now."""
    now = now or dt.datetime.now(dt.UTC)
    leaf = next((c for c in certs if key_matches(c, key)), None)
    if leaf is None:
        raise CertificateError(source, "the private key matches none of the certificates")
    problem = validity_problem(leaf, now)
    if problem:
        raise CertificateError(
            source, f"leaf certificate {common_name(leaf.subject)!r} {problem}; refused"
        )
    path, dropped = order_chain(list(certs), leaf)
    notes: list[str] = []
    for cert in path[1:]:
        issue = validity_problem(cert, now)
        if issue:
            # A warning, not a refusal: cross-signed paths can carry an expired certificate
            # that verifiers skip; the chain check in ``status`` says whether it still works.
            notes.append(f"chain certificate {common_name(cert.subject)!r} {issue}")
    if not is_self_issued(path[-1]):
        notes.append(
            f"chain ends at {common_name(path[-1].subject)!r}; its issuer"
            f" {common_name(path[-1].issuer)!r} must be in the peer's trust store"
        )
    for cert in dropped:
        notes.append(f"dropped {common_name(cert.subject)!r}: not on the leaf's chain")
    return PreparedIdentity(key, tuple(path), tuple(dropped), tuple(notes))


def read_pem_identity(
    chain_path: Path,
    key_path: Path,
    passphrase: bytes | None = None,
    *,
    now: dt.datetime | None = None,
) -> PreparedIdentity:
    """A PEM chain (any order) and a PEM key, checked and ordered."""
    certs = read_certificates(chain_path)
    # The source key may sit in a download folder with a loose mode; it is rewritten 0600.
    key = read_private_key(key_path, passphrase, check_mode=False)
    return prepare_identity(certs, key, source=str(chain_path), now=now)


def read_pkcs12_identity(
    p12_path: Path, password: bytes | None = None, *, now: dt.datetime | None = None
) -> PreparedIdentity:
    """A PKCS#12 file (RFC 7292) with a key and its certificates, checked and ordered."""
    try:
        data = p12_path.read_bytes()
    except OSError as exc:
        raise CertificateError(str(p12_path), f"cannot read: {exc.strerror}") from None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        reason = (
            "cannot open PKCS#12 (it needs a password?)"
            if password is None
            else "cannot open PKCS#12 (wrong password or not a PKCS#12 file)"
        )
        raise CertificateError(str(p12_path), reason) from None
    if key is None:
        raise CertificateError(str(p12_path), "the PKCS#12 file holds no private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(str(p12_path), f"unsupported key type {type(key).__name__}")
    certs = ([cert] if cert is not None else []) + list(extra)
    if not certs:
        raise CertificateError(str(p12_path), "the PKCS#12 file holds no certificate")
    return prepare_identity(certs, key, source=str(p12_path), now=now)


def _stage(path: Path, data: bytes, mode: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _backup(path: Path, mode: int) -> None:
    if path.exists():
        backup = path.with_name(path.name + ".prev")
        tmp = _stage(backup, path.read_bytes(), mode)
        os.replace(tmp, backup)


def install_identity(
    prepared: PreparedIdentity,
    cert_path: Path,
    key_path: Path,
    passphrase: bytes | None = None,
    *,
    now: dt.datetime | None = None,
) -> Identity:
    """Write the key (0600, encrypted with ``passphrase`` if given) and chain, atomically.

    Both new files are fully written and synced before either old one is replaced, so a crash
    leaves the old pair or the new pair (or, between the two renames, the new key with the old
    certificate, which the watcher and start-up recognise as a mismatch and name). The installed
    pair is loaded back with :func:`load_identity` as a final check.
    """
    cert_tmp = _stage(cert_path, certs_to_pem(prepared.chain), CERT_MODE)
    try:
        key_tmp = _stage(key_path, key_to_pem(prepared.key, passphrase), KEY_MODE)
    except BaseException:
        os.unlink(cert_tmp)
        raise
    try:
        _backup(key_path, KEY_MODE)
        _backup(cert_path, CERT_MODE)
        os.replace(key_tmp, key_path)
        os.replace(cert_tmp, cert_path)
    finally:
        for tmp in (key_tmp, cert_tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for directory in {cert_path.parent, key_path.parent}:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return load_identity(cert_path, key_path, passphrase, now=now)


def rotate_identity(
    new_cert: Path,
    new_key: Path,
    cert_path: Path,
    key_path: Path,
    *,
    new_passphrase: bytes | None = None,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> tuple[Identity, PreparedIdentity]:
    """Replace the installed pair with ``new_cert``/``new_key`` after checking them.

    A mismatched key, or a leaf not valid now, is refused before anything is touched.
    ``passphrase`` protects the installed key (the one the gateway is configured with).
    """
    prepared = read_pem_identity(new_cert, new_key, new_passphrase, now=now)
    return install_identity(prepared, cert_path, key_path, passphrase, now=now), prepared
