"""SDES ``a=crypto`` attributes: parse, check, generate (RFC 4568 §9.1, RFC 7714 §12).

Grammar followed (RFC 4568 §9.1)::

    crypto-value = tag 1*WSP crypto-suite 1*WSP key-params *(1*WSP session-param)
    key-params   = key-param *(";" key-param)
    key-param    = "inline:" key-salt ["|" lifetime] ["|" mki]
    lifetime     = ["2^"] 1*DIGIT
    mki          = mki-value ":" mki-length       ; length 1..128 bytes

What the gateway refuses, and why:

- NULL_HMAC_SHA1_80/32 encrypt nothing (docs/design.md §3.2), so they count as plaintext.
- Suites missing from :class:`SrtpSuite` (F8, AES-192/256-CM…) are refused by name: libsrtp as
  linked here cannot run them, and a silent mismatch would cost the call its audio.
- A key-salt whose decoded length differs from the suite's (RFC 4568 §6.1, RFC 7714 §12).

Interop (PEERS.md): rtpengine sends unpadded base64 and RFC 4568 allows it, so parsing accepts
both; baresip 1.0 decodes only padded keys, so formatting always pads.

Keys never reach logs: ``repr()`` of a :class:`CryptoAttribute` omits them; only ``str()`` (the
SDP text itself) carries them.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from gateway.media.suites import NULL_SUITE_NAMES, SrtpSuite
from gateway.sdp.errors import SdpError

_TAG = re.compile(r"[0-9]{1,9}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_ACCEPTED = ", ".join(s.value for s in SrtpSuite)


def _refuse(reason: str) -> SdpError:
    return SdpError(reason, status_hint=488)


def parse_suite(name: str) -> SrtpSuite:
    """The suite called ``name``; SdpError naming the accepted ones otherwise."""
    if name in NULL_SUITE_NAMES:
        raise _refuse(f"crypto suite {name} refused: NULL cipher suites encrypt nothing")
    try:
        return SrtpSuite(name)
    except ValueError:
        raise _refuse(f"unknown crypto suite {name!r} (accepted: {_ACCEPTED})") from None


def _decode_key(text: str) -> bytes:
    if not _BASE64.fullmatch(text):
        raise _refuse("inline key is not base64")
    bare = text.rstrip("=")
    # RFC 4568 §9.1 lets the padding go; restore it so the decoder sees whole quanta.
    if len(bare) % 4 == 1:
        raise _refuse("inline key is truncated base64")
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except binascii.Error:
        raise _refuse("inline key is not base64") from None


def _parse_lifetime(text: str) -> tuple[int, bool]:
    if text.startswith("2^"):
        exponent = text[2:]
        if not exponent.isdigit() or int(exponent) > 64:
            raise _refuse(f"bad key lifetime {text!r}")
        return 1 << int(exponent), True
    if not text.isdigit():
        raise _refuse(f"bad key lifetime {text!r}")
    return int(text), False


def _parse_mki(text: str) -> tuple[int, int]:
    value, sep, length = text.partition(":")
    if not sep or not value.isdigit() or not length.isdigit():
        raise _refuse(f"bad MKI {text!r} (expected value:length)")
    mki_value, mki_length = int(value), int(length)
    if not 1 <= mki_length <= 128:
        raise _refuse(f"MKI length {mki_length} outside 1..128")
    if mki_value >= 1 << (8 * mki_length):
        raise _refuse(f"MKI value {mki_value} does not fit in {mki_length} bytes")
    return mki_value, mki_length


@dataclass(frozen=True, repr=False, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` line's value.

    ``master`` is the first key-param's key || salt; further key-params (several MKIs) are kept
    verbatim in ``extra_key_params`` so they survive a re-format, but only the first is used.
    """

    tag: int
    suite: SrtpSuite
    master: bytes
    lifetime: int | None = None
    #: (MKI value, MKI length in bytes), RFC 4568 §6.1.
    mki: tuple[int, int] | None = None
    session_params: tuple[str, ...] = ()
    extra_key_params: tuple[str, ...] = ()
    #: Whether the lifetime came as ``2^n``: written back the same way.
    lifetime_as_power: bool = False

    def __post_init__(self) -> None:
        if len(self.master) != self.suite.master_length:
            raise _refuse(
                f"{self.suite.value} needs a {self.suite.master_length}-byte key and salt,"
                f" got {len(self.master)} bytes"
            )
        if not 0 <= self.tag <= 999_999_999:
            raise _refuse(f"crypto tag {self.tag} outside 0..999999999")

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute:
        """Parse the value of an ``a=crypto`` line (the text after ``crypto:``)."""
        parts = value.split()
        if len(parts) < 3:
            raise _refuse("a=crypto needs a tag, a suite and key parameters")
        tag_text, suite_name, key_params, *session = parts
        if not _TAG.fullmatch(tag_text):
            raise _refuse(f"crypto tag {tag_text!r} is not 1 to 9 digits")
        suite = parse_suite(suite_name)
        first, *rest = key_params.split(";")
        method, sep, info = first.partition(":")
        if not sep or method != "inline":
            raise _refuse(f"unsupported key method {method!r} (only inline)")
        key_text, *extras = info.split("|")
        if len(extras) > 2:
            raise _refuse("too many '|' fields in the key parameters")
        lifetime: int | None = None
        as_power = False
        mki: tuple[int, int] | None = None
        for extra in extras:
            # A lifetime never contains ':' and an MKI always does (RFC 4568 §9.1).
            if ":" in extra:
                if mki is not None:
                    raise _refuse("two MKIs in one key parameter")
                mki = _parse_mki(extra)
            else:
                if lifetime is not None or mki is not None:
                    raise _refuse("key lifetime must come once, before the MKI")
                lifetime, as_power = _parse_lifetime(extra)
        master = _decode_key(key_text)
        if len(master) != suite.master_length:
            raise _refuse(
                f"{suite.value} needs a {suite.master_length}-byte key and salt,"
                f" got {len(master)} bytes"
            )
        return cls(
            tag=int(tag_text),
            suite=suite,
            master=master,
            lifetime=lifetime,
            mki=mki,
            session_params=tuple(session),
            extra_key_params=tuple(rest),
            lifetime_as_power=as_power,
        )

    @property
    def key(self) -> bytes:
        return self.master[: self.suite.key_length]

    @property
    def salt(self) -> bytes:
        return self.master[self.suite.key_length :]

    def format(self) -> str:
        """The ``a=crypto`` value, with padded base64 (baresip needs the padding)."""
        key_info = "inline:" + base64.b64encode(self.master).decode("ascii")
        if self.lifetime is not None:
            power = self.lifetime.bit_length() - 1
            if self.lifetime_as_power and self.lifetime == 1 << power:
                key_info += f"|2^{power}"
            else:
                key_info += f"|{self.lifetime}"
        if self.mki is not None:
            key_info += f"|{self.mki[0]}:{self.mki[1]}"
        key_params = ";".join((key_info, *self.extra_key_params))
        return " ".join((str(self.tag), self.suite.value, key_params, *self.session_params))

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        # Never the key, salt or extra key params: reprs end up in logs and tracebacks.
        return (
            f"CryptoAttribute(tag={self.tag}, suite={self.suite.value}, "
            f"lifetime={self.lifetime}, mki={self.mki}, session_params={self.session_params})"
        )


def new_crypto(tag: int, suite: SrtpSuite) -> CryptoAttribute:
    """A crypto attribute with a fresh random master key and salt (docs/design.md §3.4)."""
    return CryptoAttribute(tag=tag, suite=suite, master=secrets.token_bytes(suite.master_length))
