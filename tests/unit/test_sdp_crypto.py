"""a=crypto parsing and formatting (RFC 4568 §9.1, RFC 7714 §12) and PEERS.md interop."""

from __future__ import annotations

import base64

import pytest

from gateway.media.suites import SrtpSuite
from gateway.sdp.crypto import CryptoAttribute, new_crypto
from gateway.sdp.errors import SdpError

# RFC 4568 §8.1's example key: 40 base64 characters, 30 bytes, no padding needed.
RFC_KEY = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
RFC_MASTER = base64.b64decode(RFC_KEY)
GCM256_MASTER = bytes(range(44))
GCM256_PADDED = base64.b64encode(GCM256_MASTER).decode()  # ends with one "="
GCM128_MASTER = bytes(range(100, 128))
GCM128_PADDED = base64.b64encode(GCM128_MASTER).decode()  # ends with "=="


def test_parse_rfc_example_with_lifetime_and_mki() -> None:
    crypto = CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:32")
    assert crypto.tag == 1
    assert crypto.suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert crypto.master == RFC_MASTER
    assert crypto.key == RFC_MASTER[:16]
    assert crypto.salt == RFC_MASTER[16:]
    assert crypto.lifetime == 1 << 20
    assert crypto.mki == (1, 32)
    assert crypto.session_params == ()
    assert str(crypto) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:32"


def test_decimal_lifetime_and_mki_without_lifetime() -> None:
    crypto = CryptoAttribute.parse(f"7 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}|1048576")
    assert (crypto.lifetime, crypto.mki) == (1048576, None)
    assert crypto.format() == f"7 AES_CM_128_HMAC_SHA1_32 inline:{RFC_KEY}|1048576"
    only_mki = CryptoAttribute.parse(f"2 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:4")
    assert (only_mki.lifetime, only_mki.mki) == (None, (1, 4))
    assert only_mki.format() == f"2 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:4"


def test_unpadded_keys_are_accepted_and_padded_on_output() -> None:
    # rtpengine sends these without padding; baresip needs it back (PEERS.md).
    unpadded = GCM256_PADDED.rstrip("=")
    crypto = CryptoAttribute.parse(f"3 AEAD_AES_256_GCM inline:{unpadded}")
    assert crypto.master == GCM256_MASTER
    assert crypto.format() == f"3 AEAD_AES_256_GCM inline:{GCM256_PADDED}"
    assert crypto.format().endswith("=")
    crypto128 = CryptoAttribute.parse(f"4 AEAD_AES_128_GCM inline:{GCM128_PADDED.rstrip('=')}")
    assert crypto128.master == GCM128_MASTER
    assert crypto128.format() == f"4 AEAD_AES_128_GCM inline:{GCM128_PADDED}"
    assert GCM128_PADDED.endswith("==")


def test_padded_keys_are_accepted() -> None:
    crypto = CryptoAttribute.parse(f"3 AEAD_AES_256_GCM inline:{GCM256_PADDED}")
    assert crypto.master == GCM256_MASTER


def test_session_params_and_extra_key_params_survive() -> None:
    value = (
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4;inline:{RFC_KEY}|2^20|2:4 WSH=64 -FOO"
    )
    crypto = CryptoAttribute.parse(value)
    assert crypto.mki == (1, 4)
    assert crypto.extra_key_params == (f"inline:{RFC_KEY}|2^20|2:4",)
    assert crypto.session_params == ("WSH=64", "-FOO")
    assert crypto.format() == value


def test_tabs_and_repeated_spaces_between_fields() -> None:
    crypto = CryptoAttribute.parse(f"5\tAES_CM_128_HMAC_SHA1_80   inline:{RFC_KEY}")
    assert crypto.format() == f"5 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}"


@pytest.mark.parametrize("suite", ["NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32"])
def test_null_suites_are_refused_as_plaintext(suite: str) -> None:
    with pytest.raises(SdpError) as info:
        CryptoAttribute.parse(f"1 {suite} inline:{RFC_KEY}")
    assert info.value.status_hint == 488
    assert info.value.reason == (
        f"crypto suite {suite} refused: NULL cipher suites encrypt nothing"
    )


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_8O", "F8_128_HMAC_SHA1_80"])
def test_unknown_suites_name_the_accepted_ones(suite: str) -> None:
    with pytest.raises(SdpError) as info:
        CryptoAttribute.parse(f"1 {suite} inline:{RFC_KEY}")
    assert info.value.reason == (
        f"unknown crypto suite {suite!r} (accepted: AES_CM_128_HMAC_SHA1_80,"
        " AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)"
    )


def test_wrong_key_length_for_the_suite() -> None:
    with pytest.raises(SdpError) as info:
        CryptoAttribute.parse(f"1 AEAD_AES_256_GCM inline:{RFC_KEY}")
    assert info.value.reason == "AEAD_AES_256_GCM needs a 44-byte key and salt, got 30 bytes"
    with pytest.raises(SdpError):
        CryptoAttribute(tag=1, suite=SrtpSuite.AEAD_AES_128_GCM, master=bytes(30))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80", "a=crypto needs a tag, a suite and key parameters"),
        (f"x AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}", "crypto tag 'x' is not 1 to 9 digits"),
        (
            f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}",
            "crypto tag '1234567890' is not 1 to 9 digits",
        ),
        (f"1 AES_CM_128_HMAC_SHA1_80 uri:{RFC_KEY}", "unsupported key method 'uri' (only inline)"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64", "inline key is not base64"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^x", "bad key lifetime '2^x'"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:0", "MKI length 0 outside 1..128"),
        (
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|256:1",
            "MKI value 256 does not fit in 1 bytes",
        ),
        (
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|1:4|2^20",
            "key lifetime must come once, before the MKI",
        ),
    ],
)
def test_malformed_values(value: str, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        CryptoAttribute.parse(value)
    assert info.value.reason == reason


def test_new_crypto_is_fresh_and_the_right_size() -> None:
    first = new_crypto(1, SrtpSuite.AEAD_AES_256_GCM)
    second = new_crypto(1, SrtpSuite.AEAD_AES_256_GCM)
    assert len(first.master) == 44
    assert first.master != second.master
    assert CryptoAttribute.parse(first.format()) == first


def test_repr_never_shows_key_material() -> None:
    crypto = CryptoAttribute.parse(
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{RFC_KEY}|2^20|1:4;inline:{RFC_KEY}|2^20|2:4"
    )
    text = repr(crypto)
    assert text == (
        "CryptoAttribute(tag=1, suite=AES_CM_128_HMAC_SHA1_80, lifetime=1048576,"
        " mki=(1, 4), session_params=())"
    )
    assert RFC_KEY not in text and RFC_KEY[:8] not in text
    assert repr(RFC_MASTER)[2:12] not in text
