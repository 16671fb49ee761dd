"""The gateway's DTLS certificate for DTLS-SRTP (RFC 5763 §5, RFC 8122 §5).

DTLS-SRTP peers do not verify each other through a CA: each side self-signs a certificate and
publishes its hash in the SDP (``a=fingerprint``); the handshake then proves the peer holds the
key of the certificate whose hash the signalling (over verified TLS) carried. One identity per
signalling process serves every call, so the fingerprint is stable across calls; its validity is
short (30 days) and :meth:`DtlsIdentity.current` replaces it well before it lapses.

The signalling process creates it (the fingerprint goes into offers and answers) and hands the
certificate and key to the media workers, which run the handshakes, over their local control
channel (:class:`gateway.media.control.SetDtlsIdentity`). The key is never logged and never
written to disk.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["DtlsIdentity", "certificate_fingerprint"]

#: How long a certificate is valid, and how long before its end it is replaced.
VALIDITY = datetime.timedelta(days=30)
RENEW_BEFORE = datetime.timedelta(days=7)

#: SDP hash-function names (RFC 8122 §5, IANA "Hash Function Textual Names") -> hashlib names.
_HASHES = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}


def certificate_fingerprint(der: bytes, hash_name: str = "sha-256") -> str:
    """The SDP fingerprint of a DER certificate: upper-case hex pairs joined by colons.

    ``hash_name`` is the SDP name (``sha-256``); an unknown one raises ``ValueError``.
    """
    algorithm = _HASHES.get(hash_name.lower())
    if algorithm is None:
        raise ValueError(f"unknown fingerprint hash function {hash_name!r}")
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class DtlsIdentity:
    """A self-signed ECDSA P-256 certificate and its key, for every DTLS association."""

    __slots__ = ("_clock", "certificate_der", "key_pem", "not_after", "previous")

    def __init__(self, *, clock: Callable[[], datetime.datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        #: The certificate (DER) and key (PEM) the last renewal replaced: an offer that named
        #: it may be answered after the renewal, and its handshake must still present it.
        self.previous: tuple[bytes, bytes] | None = None
        self._generate()

    def _generate(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._clock()
        # The name carries nothing: peers check the fingerprint, never the subject.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-dtls")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # A day back: a peer whose clock is behind still accepts it.
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + VALIDITY)
            .sign(key, hashes.SHA256())
        )
        #: The certificate, DER-encoded (what the fingerprint is taken over).
        self.certificate_der = cert.public_bytes(serialization.Encoding.DER)
        #: The private key, PKCS#8 PEM without a password: only for the workers' channel.
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.not_after = now + VALIDITY

    def current(self) -> bool:
        """Replace the certificate when it is within :data:`RENEW_BEFORE` of its end.

        Returns True when it was replaced (the caller hands the new one to the workers; a
        new fingerprint applies to offers from then on; calls whose SDP named the replaced
        one, running or still being set up, handshake with it: :attr:`previous`)."""
        if self._clock() < self.not_after - RENEW_BEFORE:
            return False
        self.previous = (self.certificate_der, self.key_pem)
        self._generate()
        return True

    def fingerprint(self, hash: str = "sha-256") -> str:
        """The ``a=fingerprint`` value for ``hash`` (e.g. ``AB:CD:…``)."""
        return certificate_fingerprint(self.certificate_der, hash)

    def __repr__(self) -> str:  # never print the key
        return f"DtlsIdentity(sha-256 {self.fingerprint()}, until {self.not_after:%Y-%m-%d})"
