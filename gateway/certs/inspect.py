"""Looking at certificates: SPKI pins, key matching, names, validity, chain order and trust.

- Pins are RFC 7469 §2.4 values: base64(SHA-256(DER SubjectPublicKeyInfo)), the same value as
  ``openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary |
  base64``.
- Validity is RFC 5280 §4.1.2.5 (notBefore/notAfter, inclusive).
- Names follow what the TLS layer enforces at run time (OpenSSL's host check, RFC 6125 §6.4):
  subjectAltName dNSName and iPAddress (RFC 5280 §4.2.1.6) only, the common name is ignored,
  a wildcard only as the whole left-most label.
- Chain validation (RFC 5280 §6) is OpenSSL's, through pyOpenSSL, so ``status`` judges a chain
  the way the running gateway's ``ssl`` context will.

Pure functions over cryptography objects; the only I/O is reading a trust bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import crypto as ossl

from gateway.certs.errors import CertificateError

_PRIVATE_KEY_CLASSES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

KeyOrCert = x509.Certificate | PublicKeyTypes | PrivateKeyTypes


def public_key_of(item: KeyOrCert) -> PublicKeyTypes:
    """The public key of a certificate, a private key, or a public key itself."""
    if isinstance(item, x509.Certificate):
        return item.public_key()
    if isinstance(item, _PRIVATE_KEY_CLASSES):
        return item.public_key()
    return item  # type: ignore[return-value]


def spki_der(item: KeyOrCert) -> bytes:
    """The DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) of a certificate or key."""
    return public_key_of(item).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_pin(item: KeyOrCert) -> str:
    """RFC 7469 §2.4 pin-sha256 value of a certificate's or key's public key."""
    return base64.b64encode(hashlib.sha256(spki_der(item)).digest()).decode("ascii")


def normalise_pin(pin: str) -> str:
    """Accept ``pin-sha256="…"``, ``sha256/…`` or bare base64; return bare base64.

    Raises ValueError for anything that is not 32 bytes of base64.
    """
    value = pin.strip()
    for prefix in ("pin-sha256=", "sha256//", "sha256/"):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    value = value.strip('"')
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"pin {pin!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"pin {pin!r} is {len(raw)} bytes, a SHA-256 pin is 32")
    return base64.b64encode(raw).decode("ascii")


def key_matches(cert: x509.Certificate, key: PublicKeyTypes | PrivateKeyTypes) -> bool:
    """Whether ``key`` (a private or public key) is the certificate's key pair."""
    return spki_der(cert) == spki_der(key)


def describe_key(item: KeyOrCert) -> str:
    """ "EC P-256", "RSA 3072", "Ed25519" …"""
    public = public_key_of(item)
    if isinstance(public, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {curves.get(public.curve.name, public.curve.name)}"
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, dsa.DSAPublicKey):
        return f"DSA {public.key_size}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public).__name__


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """dNSName and iPAddress entries, as ``DNS:…`` / ``IP:…`` strings, in certificate order."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for name in san:  # type: ignore[attr-defined]
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append(f"URI:{name.value}")
    return out


def common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern == host:
        return True
    # RFC 6125 §6.4.3: a wildcard stands for exactly one whole left-most label, never for
    # a public suffix's sole label ("*.com" would need at least two labels after it).
    if pattern.startswith("*.") and pattern.count(".") >= 2:
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """Whether ``host`` (a DNS name or an IP address) is among the certificate's SANs."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return False
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)  # type: ignore[attr-defined]
    return any(
        _dns_matches(p, host)
        for p in san.get_values_for_type(x509.DNSName)  # type: ignore[attr-defined]
    )


def validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why the certificate is not valid at ``now`` (RFC 5280 §4.1.2.5), or None."""
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Whole days until not-after (negative once expired)."""
    return (cert.not_valid_after_utc - now) // dt.timedelta(days=1)


def is_issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent``'s key signed ``child`` and the names link (RFC 5280 §6.1.3 (a)(4))."""
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):  # bad signature, unsupported algorithm
        return False
    return True


def is_self_issued(cert: x509.Certificate) -> bool:
    return is_issued_by(cert, cert)


def order_chain(
    certs: list[x509.Certificate], leaf: x509.Certificate
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Leaf first, each next certificate the issuer of the one before (RFC 5246 §7.4.2).

    Returns the ordered path and the certificates that are not on it (duplicates dropped).
    """
    remaining = [c for c in certs if c != leaf]
    path = [leaf]
    while not is_self_issued(path[-1]):
        parent = next((c for c in remaining if is_issued_by(path[-1], c)), None)
        if parent is None:
            break
        path.append(parent)
        remaining = [c for c in remaining if c != parent]
    unique: list[x509.Certificate] = []
    for c in remaining:
        if c not in unique and c not in path:
            unique.append(c)
    return path, unique


@dataclass(frozen=True)
class TrustAnchors:
    """Where chains must lead: a PEM bundle, or the system store when ``ca_bundle`` is None.

    ``extra`` adds bundles on top (the store's own CA, when judging the gateway's identity).
    """

    ca_bundle: str | None = None
    extra: tuple[str, ...] = ()

    def describe(self) -> str:
        return " + ".join([self.ca_bundle or "system store", *self.extra])

    def x509_store(self, at: dt.datetime | None = None) -> ossl.X509Store:
        store = ossl.X509Store()
        source = self.ca_bundle or "system store"
        try:
            if self.ca_bundle is not None:
                store.load_locations(self.ca_bundle)
            else:
                paths = ssl.get_default_verify_paths()
                if paths.cafile or paths.capath:
                    store.load_locations(paths.cafile, paths.capath)
            for bundle in self.extra:
                source = bundle
                store.load_locations(bundle)
        except (ossl.Error, OSError) as exc:
            raise CertificateError(source, f"cannot load trust anchors ({exc})") from None
        if at is not None:
            # OpenSSL's verification time; pyOpenSSL wants a naive UTC datetime.
            store.set_time(at.astimezone(dt.UTC).replace(tzinfo=None))
        return store


def chain_problem(
    chain: list[x509.Certificate] | tuple[x509.Certificate, ...],
    trust: TrustAnchors,
    at: dt.datetime | None = None,
) -> str | None:
    """Why ``chain`` (leaf first) does not lead to ``trust`` at ``at`` (default now), or None."""
    if not chain:
        return "empty chain"
    store = trust.x509_store(at)
    leaf = ossl.X509.from_cryptography(chain[0])
    untrusted = [ossl.X509.from_cryptography(c) for c in chain[1:]]
    ctx = ossl.X509StoreContext(store, leaf, chain=untrusted)
    try:
        ctx.verify_certificate()
    except ossl.X509StoreContextError as exc:
        # exc.errors is (code, depth, message); the message is OpenSSL's, e.g. "certificate
        # has expired", and depth tells which certificate of the chain it concerns.
        _code, depth, message = exc.errors
        return f"{message} (at depth {depth})"
    return None
