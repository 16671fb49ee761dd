"""A private certificate authority for a site or a lab, certificates it issues, and CSRs.

Profiles follow RFC 5280 §4.2.1: the CA has basicConstraints cA=TRUE (critical, pathLen 0:
it signs end entities only), keyUsage keyCertSign|cRLSign (critical) and a subject key
identifier; end-entity certificates have basicConstraints cA=FALSE, keyUsage digitalSignature
(plus keyEncipherment for RSA, which TLS 1.2 RSA key exchange still uses), extendedKeyUsage
serverAuth and/or clientAuth (§4.2.1.12), the SANs as dNSName/iPAddress (§4.2.1.6) and an
authority key identifier (§4.2.1.1) so that verifiers can link the chain. Serial numbers are
positive 159-bit random numbers (§4.1.2.2: at most 20 octets, unique per issuer).

ECDSA P-256 is the default key: small, fast in TLS handshakes, supported by every SIP/TLS
stack that matters; RSA 3072 is there for peers that still need RSA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.certs.store import PrivateKey


class KeyType(StrEnum):
    """Key algorithms this gateway creates."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


class Usage(StrEnum):
    """What an issued certificate is for (extendedKeyUsage)."""

    SERVER = "server"
    CLIENT = "client"
    # SIP over TLS peers both accept and originate connections, so one identity often
    # serves both roles (RFC 5922 §7.1 uses the same certificate for both).
    BOTH = "both"


def generate_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    """A fresh private key from the OS random source (via OpenSSL)."""
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    size = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def parse_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """``"gw.example.com"`` → DNSName, ``"192.0.2.7"``/``"IP:…"`` → IPAddress, in order.

    ``DNS:`` and ``IP:`` prefixes are accepted so that output of ``status`` can be pasted back.
    Raises ValueError for an empty or malformed name.
    """
    out: list[x509.GeneralName] = []
    for raw in names:
        name = raw.strip()
        kind = None
        if name[:4].upper() == "DNS:":
            kind, name = "dns", name[4:]
        elif name[:3].upper() == "IP:":
            kind, name = "ip", name[3:]
        if not name:
            raise ValueError(f"empty name {raw!r}")
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if kind == "ip":
                raise ValueError(f"{raw!r} is not an IP address") from None
            ip = None
        if ip is not None and kind != "dns":
            general: x509.GeneralName = x509.IPAddress(ip)
        else:
            # Only LDH labels and a leading wildcard label: anything else is a typo, and a
            # certificate with it would never match the host the operator meant.
            labels = name.rstrip(".").split(".")
            ok = all(
                (label == "*" and i == 0)
                or (label and all(ch.isalnum() or ch == "-" for ch in label))
                for i, label in enumerate(labels)
            )
            if not ok:
                raise ValueError(f"{raw!r} is not a DNS name")
            general = x509.DNSName(name.rstrip(".").lower())
        if general not in out:
            out.append(general)
    return out


def _first_name(names: Sequence[x509.GeneralName]) -> str:
    return str(names[0].value) if names else "gateway"


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    # Match hash strength to the signing key (SHA-384 for P-384, as NIST SP 800-57 pairs them).
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _serial() -> int:
    # 159 random bits keeps the DER INTEGER positive and within 20 octets (RFC 5280 §4.1.2.2).
    return x509.random_serial_number() >> 1


def _backdated(now: dt.datetime) -> dt.datetime:
    # A few minutes of backdating tolerates peers whose clocks run slightly behind ours.
    return now - dt.timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedCertificate:
    """A key pair and the certificate for it; the chain is leaf first, CA last."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


def create_ca(
    common_name: str,
    *,
    key_type: KeyType = KeyType.EC_P256,
    days: int = 3650,
    organization: str | None = None,
    path_length: int | None = 0,
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    """A self-signed CA certificate with a fresh key.

    ``path_length`` 0 (the default) lets it sign end entities only: a site CA has no reason
    to delegate, and a stolen intermediate could not be created under it.
    """
    now = now or dt.datetime.now(dt.UTC)
    key = generate_key(key_type)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attrs)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(_backdated(now))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _signature_hash(key))
    )
    return IssuedCertificate(key, cert, (cert,))


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    names: Sequence[x509.GeneralName],
    *,
    usage: Usage = Usage.BOTH,
    key_type: KeyType = KeyType.EC_P256,
    days: int = 397,
    common_name: str | None = None,
    key: PrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    """An end-entity certificate for ``names`` signed by the CA.

    ``key`` reuses an existing key pair (re-issue); ``not_before``/``not_after`` override the
    validity window, which tests use to make expired and not-yet-valid certificates. The
    default 397 days is the CA/Browser Forum ceiling, which some providers enforce.
    """
    if not names:
        raise ValueError("a certificate needs at least one DNS or IP name")
    now = now or dt.datetime.now(dt.UTC)
    key = key or generate_key(key_type)
    public = key.public_key()
    eku = {
        Usage.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
        Usage.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
        Usage.BOTH: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[usage]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or _first_name(names))])
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(not_before or _backdated(now))
        .not_valid_after(not_after or now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, _signature_hash(ca_key))
    )
    return IssuedCertificate(key, cert, (cert, ca_cert))


def create_csr(
    names: Sequence[x509.GeneralName],
    *,
    key: PrivateKey | None = None,
    key_type: KeyType = KeyType.EC_P256,
    common_name: str | None = None,
    organization: str | None = None,
    country: str | None = None,
) -> tuple[PrivateKey, x509.CertificateSigningRequest]:
    """A key (fresh unless given) and a PKCS#10 request carrying the SANs a public CA needs.

    Public CAs take names only from subjectAltName (the CN is legacy), so every name goes
    into the SAN extension and the CN repeats the first one.
    """
    if not names:
        raise ValueError("a CSR needs at least one DNS or IP name")
    key = key or generate_key(key_type)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name or _first_name(names))]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(key, _signature_hash(key))
    )
    return key, csr
