"""SRTP crypto suites the gateway knows, with their key sizes (RFC 4568 §6.2, RFC 7714 §12).

One table shared by the SDES layer (which names suites in ``a=crypto`` lines) and the packet
path (which hands keys to libsrtp through pylibsrtp). NULL-cipher suites are deliberately
absent: they encrypt nothing, so the gateway treats them as plaintext (docs/design.md §3.2).
"""

from __future__ import annotations

import enum

import pylibsrtp


class SrtpSuite(enum.Enum):
    """An SRTP protection profile as named in SDP, with its libsrtp profile number."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"
    AEAD_AES_256_GCM = "AEAD_AES_256_GCM"

    @property
    def key_length(self) -> int:
        """Master key length in bytes."""
        return _SIZES[self][0]

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes."""
        return _SIZES[self][1]

    @property
    def master_length(self) -> int:
        """Length of the concatenated master key and salt carried in ``inline:``."""
        return self.key_length + self.salt_length

    @property
    def libsrtp_profile(self) -> int:
        """The pylibsrtp ``SRTP_PROFILE_*`` constant for this suite."""
        return _PROFILES[self]

    @classmethod
    def from_name(cls, name: str) -> SrtpSuite:
        """Look a suite up by its SDP name; raises ValueError naming the known suites."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown SRTP suite {name!r} (known: {known})") from None


# (key bytes, salt bytes): RFC 4568 §6.2.1 for AES_CM, RFC 7714 §12 for AEAD (12-byte salt).
_SIZES: dict[SrtpSuite, tuple[int, int]] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: (16, 14),
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: (16, 14),
    SrtpSuite.AEAD_AES_128_GCM: (16, 12),
    SrtpSuite.AEAD_AES_256_GCM: (32, 12),
}

_PROFILES: dict[SrtpSuite, int] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SrtpSuite.AEAD_AES_256_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}

#: Suite names that must never be offered or accepted: they authenticate but do not encrypt.
NULL_SUITE_NAMES = frozenset({"NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32"})
