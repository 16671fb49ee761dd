"""The certificate layer's exception family.

Every failure names the file it concerns and says why in words an operator can act on
("certs/identity/key.pem: readable by group or others (mode 0644); chmod 600 it"). Nothing
secret (key bytes, passphrases) ever goes into a message.
"""

from __future__ import annotations


class CertificateError(Exception):
    """A certificate, key, chain or store entry that cannot be used.

    ``file`` is the path concerned ("" when none does, e.g. a live peer); ``reason`` is the
    operator-facing explanation.
    """

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}" if file else reason)
        #: The file concerned, as the operator configured or named it.
        self.file = file
        #: Why it cannot be used.
        self.reason = reason


class PinMismatchError(CertificateError):
    """The peer's chain verified, but none of its SPKI hashes is pinned (RFC 7469 §2.6).

    Treated exactly like a failed verification: the connection is refused.
    """
