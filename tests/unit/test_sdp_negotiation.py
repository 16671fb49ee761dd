"""Offer/answer across the B2BUA's legs (RFC 3264, RFC 4568, RFC 5761) and port allocation."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media import ports as ports_module
from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.ports import PortAllocator, PortsExhausted
from gateway.media.suites import SrtpSuite
from gateway.sdp import negotiation, rewrite
from gateway.sdp.crypto import CryptoAttribute
from gateway.sdp.errors import SdpError
from gateway.sdp.negotiation import CallMedia, MediaPolicy, MediaRefused

LAN_GW = "192.0.2.1"
WAN_GW = "203.0.113.1"
PHONE = "192.0.2.23"
PROVIDER = "198.51.100.7"
SESS = "100000000000"

CM80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80
CM32 = SrtpSuite.AES_CM_128_HMAC_SHA1_32
GCM128 = SrtpSuite.AEAD_AES_128_GCM
GCM256 = SrtpSuite.AEAD_AES_256_GCM


def b64(master: bytes) -> str:
    return base64.b64encode(master).decode()


def fake_master(n: int, suite: SrtpSuite) -> bytes:
    return bytes([n]) * suite.master_length


@pytest.fixture(autouse=True)
def deterministic(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Keys 0x01.., 0x02.. in creation order; a fixed o= session id."""
    counter = [0]

    def fresh(tag: int, suite: SrtpSuite) -> CryptoAttribute:
        counter[0] += 1
        return CryptoAttribute(tag=tag, suite=suite, master=fake_master(counter[0], suite))

    monkeypatch.setattr(negotiation, "new_crypto", fresh)
    monkeypatch.setattr(rewrite, "secrets", SimpleNamespace(randbelow=lambda n: 0))
    yield counter


def make_call(**policy: object) -> tuple[CallMedia, PortAllocator, PortAllocator]:
    lan = PortAllocator(10000, 10099)
    wan = PortAllocator(20000, 20099)
    pol = MediaPolicy(lan_address=LAN_GW, wan_address=WAN_GW, **policy)  # type: ignore[arg-type]
    return CallMedia("call-1", pol, lan, wan), lan, wan


def crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


PHONE_OFFER = crlf(
    "v=0",
    f"o=phone 100 200 IN IP4 {PHONE}",
    "s=call",
    f"c=IN IP4 {PHONE}",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    f"a=rtcp:4001 IN IP4 {PHONE}",
    "a=sendrecv",
)


def provider_answer(
    tag: int = 2,
    suite: SrtpSuite = CM32,
    master: bytes | None = None,
    *,
    port: int = 30000,
    address: str = PROVIDER,
    mux: bool = True,
    direction: str = "sendrecv",
    proto: str = "RTP/SAVP",
    version: int = 1,
) -> bytes:
    key = master if master is not None else fake_master(0xA0, suite)
    lines = [
        "v=0",
        f"o=prov 77 {version} IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {proto} 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        f"a=crypto:{tag} {suite.value} inline:{b64(key)}",
    ]
    if mux:
        lines.append("a=rtcp-mux")
    lines.append(f"a={direction}")
    return crlf(*lines)


def expected_wan_offer(direction: str = "sendrecv", version: int = 1, first_key: int = 1) -> bytes:
    return crlf(
        "v=0",
        f"o=- {SESS} {version} IN IP4 {WAN_GW}",
        "s=-",
        f"c=IN IP4 {WAN_GW}",
        "t=0 0",
        "m=audio 20000 RTP/SAVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        f"a={direction}",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(first_key, CM80))}",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{b64(fake_master(first_key + 1, CM32))}",
        f"a=crypto:3 AEAD_AES_128_GCM inline:{b64(fake_master(first_key + 2, GCM128))}",
        f"a=crypto:4 AEAD_AES_256_GCM inline:{b64(fake_master(first_key + 3, GCM256))}",
        "a=rtcp-mux",
    )


def assert_no_lan_address(body: bytes) -> None:
    text = body.decode()
    assert PHONE not in text
    assert LAN_GW not in text
    assert "192.0.2." not in text


# ---------------------------------------------------------------- phone offers, provider answers


def test_phone_offer_becomes_exact_provider_offer() -> None:
    call, _, _ = make_call()
    out = call.offer_from_lan(PHONE_OFFER)
    assert out == expected_wan_offer()
    assert_no_lan_address(out)
    assert call.streams() == [None]  # nothing agreed before the answer


def test_provider_answer_selecting_suite_2_gives_exact_phone_answer_and_keys() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    out = call.answer_from_wan(provider_answer())
    assert out == crlf(
        "v=0",
        f"o=- {SESS} 1 IN IP4 {LAN_GW}",
        "s=-",
        f"c=IN IP4 {LAN_GW}",
        "t=0 0",
        "m=audio 10000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
    )
    assert call.streams() == [
        StreamSpec(
            lan_port=10000,
            wan_port=20000,
            phone_addr=(PHONE, 4000),
            provider_addr=(PROVIDER, 30000),
            provider_rtcp_addr=None,
            phone_rtcp_addr=(PHONE, 4001),
            wan_rtcp_mux=True,
            wan_tx=SrtpKeying("AES_CM_128_HMAC_SHA1_32", fake_master(2, CM32), 0),
            wan_rx=SrtpKeying("AES_CM_128_HMAC_SHA1_32", fake_master(0xA0, CM32), 0),
            wan_plaintext=False,
            direction="sendrecv",
        )
    ]
    assert call.chosen_suite() is CM32
    assert call.uses_plaintext_downgrade is False


def test_answer_without_crypto_is_refused_with_warning() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    body = provider_answer().replace(b"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:", b"a=x:")
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(body)
    assert info.value.status_hint == 488
    assert info.value.warning == (
        "provider answer has no acceptable crypto for m=audio (offered AES_CM_128_HMAC_SHA1_80,"
        " AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM;"
        " the answer has no a=crypto line)"
    )
    assert call.streams() == [None]


def test_answer_with_tag_not_offered_or_suite_mismatch_is_refused() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(provider_answer(tag=1, suite=CM32))
    assert info.value.warning.endswith(
        "; tag 1 AES_CM_128_HMAC_SHA1_32 matches no offered crypto line)"
    )
    # Neither the provider's key nor ours may end up in a Warning header or a log line.
    assert b64(fake_master(0xA0, CM32)) not in info.value.warning
    assert "inline" not in info.value.warning


def test_rtp_avp_answer_is_refused() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(provider_answer(proto="RTP/AVP"))
    assert info.value.warning == (
        "provider answered plaintext RTP/AVP for m=audio; SRTP is required (offered"
        " AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)"
    )


@pytest.mark.parametrize("suite", ["NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32"])
def test_null_suite_answer_is_refused(suite: str) -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    body = provider_answer(tag=1, suite=CM80).replace(b"AES_CM_128_HMAC_SHA1_80", suite.encode())
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(body)
    assert f"crypto suite {suite} refused: NULL cipher suites encrypt nothing" in (
        info.value.warning
    )


def test_rtp_avp_answer_accepted_only_under_explicit_downgrade() -> None:
    call, _, _ = make_call(allow_plaintext=True)
    call.offer_from_lan(PHONE_OFFER)
    body = provider_answer(proto="RTP/AVP").replace(
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{b64(fake_master(0xA0, CM32))}\r\n".encode(),
        b"",
    )
    call.answer_from_wan(body)
    [spec] = call.streams()
    assert spec is not None
    assert (spec.wan_plaintext, spec.wan_tx, spec.wan_rx) == (True, None, None)
    assert call.uses_plaintext_downgrade is True
    assert call.chosen_suite() is None


def test_unpadded_provider_key_is_accepted() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    key = fake_master(0xB0, GCM256)
    body = provider_answer(tag=4, suite=GCM256, master=key)
    assert b64(key).endswith("=")
    body = body.replace(b64(key).encode(), b64(key).rstrip("=").encode())
    call.answer_from_wan(body)
    [spec] = call.streams()
    assert spec is not None and spec.wan_rx == SrtpKeying("AEAD_AES_256_GCM", key, 0)
    assert spec.wan_tx == SrtpKeying("AEAD_AES_256_GCM", fake_master(4, GCM256), 0)


def test_lifetime_is_accepted_mki_is_refused() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    key = b64(fake_master(0xA0, CM32))
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(provider_answer().replace(key.encode(), f"{key}|2^31|1:4".encode()))
    assert "tag 2: MKI is not supported" in info.value.warning
    call.answer_from_wan(provider_answer().replace(key.encode(), f"{key}|2^31".encode()))
    [spec] = call.streams()
    assert spec is not None and spec.wan_rx == SrtpKeying(CM32.value, fake_master(0xA0, CM32))


def test_unencrypted_session_parameter_is_refused() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    key = b64(fake_master(0xA0, CM32))
    body = provider_answer().replace(key.encode(), f"{key} UNENCRYPTED_SRTP".encode())
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(body)
    assert "tag 2: UNENCRYPTED_SRTP turns protection off" in info.value.warning


def test_rtcp_mux_accepted_vs_not() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer(mux=False))
    [spec] = call.streams()
    assert spec is not None
    assert spec.wan_rtcp_mux is False
    assert spec.provider_rtcp_addr == (PROVIDER, 30001)

    no_mux_call, _, _ = make_call(offer_rtcp_mux=False)
    offer = no_mux_call.offer_from_lan(PHONE_OFFER)
    assert b"a=rtcp-mux" not in offer
    # The provider says rtcp-mux although we never offered it: not used.
    no_mux_call.answer_from_wan(provider_answer(mux=True))
    [spec] = no_mux_call.streams()
    assert spec is not None and spec.wan_rtcp_mux is False
    assert spec.provider_rtcp_addr == (PROVIDER, 30001)


def test_provider_rtcp_attribute_is_used() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    body = provider_answer(mux=False).replace(
        b"a=sendrecv", b"a=rtcp:30011 IN IP4 198.51.100.8\r\na=sendrecv"
    )
    out = call.answer_from_wan(body)
    [spec] = call.streams()
    assert spec is not None and spec.provider_rtcp_addr == ("198.51.100.8", 30011)
    assert b"198.51.100" not in out  # nor do provider addresses reach the phone


def test_hold_then_resume_with_new_provider_key_bumps_generation() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer())

    hold = PHONE_OFFER.replace(b"a=sendrecv", b"a=sendonly").replace(b" 200 IN", b" 201 IN")
    out = call.offer_from_lan(hold)
    # Same ports and same keys; o= version raised because the body changed.
    assert out == expected_wan_offer(direction="sendonly", version=2)
    call.answer_from_wan(provider_answer(direction="recvonly", version=2))
    [spec] = call.streams()
    assert spec is not None
    assert spec.direction == "sendonly"
    assert spec.wan_tx == SrtpKeying(CM32.value, fake_master(2, CM32), 0)
    assert spec.wan_rx == SrtpKeying(CM32.value, fake_master(0xA0, CM32), 0)

    resume = PHONE_OFFER.replace(b" 200 IN", b" 202 IN")
    assert call.offer_from_lan(resume) == expected_wan_offer(version=3)
    new_key = fake_master(0xC0, CM32)
    phone_answer = call.answer_from_wan(provider_answer(master=new_key, version=3))
    assert b"a=sendrecv" in phone_answer
    [spec] = call.streams()
    assert spec is not None
    assert spec.direction == "sendrecv"
    assert spec.wan_tx == SrtpKeying(CM32.value, fake_master(2, CM32), 0)
    assert spec.wan_rx == SrtpKeying(CM32.value, new_key, 1)


def test_hold_with_zero_address_means_sendonly() -> None:
    call, _, _ = make_call()
    hold = PHONE_OFFER.replace(f"c=IN IP4 {PHONE}".encode(), b"c=IN IP4 0.0.0.0")
    out = call.offer_from_lan(hold)
    assert b"a=sendonly" in out and b"0.0.0.0" not in out
    call.answer_from_wan(provider_answer(direction="recvonly"))
    [spec] = call.streams()
    assert spec is not None and spec.phone_addr is None and spec.direction == "sendonly"


def test_operator_rekey_gives_new_outgoing_key() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer())
    call.request_rekey()
    out = call.offer_from_lan(PHONE_OFFER)
    assert f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{b64(fake_master(6, CM32))}" in (
        out.decode()
    )
    call.answer_from_wan(provider_answer())
    [spec] = call.streams()
    assert spec is not None and spec.wan_tx == SrtpKeying(CM32.value, fake_master(6, CM32), 1)
    assert spec.wan_rx is not None and spec.wan_rx.generation == 0


def test_forking_two_early_answers_then_confirm() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    key_a, key_b = fake_master(0xA1, CM80), fake_master(0xB1, CM32)
    call.answer_from_wan(
        provider_answer(tag=1, suite=CM80, master=key_a, address="198.51.100.10"),
        early_dialog="tag-a",
    )
    second = call.answer_from_wan(
        provider_answer(tag=2, suite=CM32, master=key_b, address="198.51.100.20"),
        early_dialog="tag-b",
    )
    assert f"o=- {SESS} 1 IN IP4 {LAN_GW}".encode() in second  # same body shape
    [spec] = call.streams()
    assert spec is not None and spec.provider_addr == ("198.51.100.20", 30000)
    # Fork b's keys replaced fork a's in the relay: a new context each way.
    assert spec.wan_tx == SrtpKeying(CM32.value, fake_master(2, CM32), 1)
    assert spec.wan_rx == SrtpKeying(CM32.value, key_b, 1)

    call.confirm("tag-a")
    [spec] = call.streams()
    assert spec is not None
    assert spec.provider_addr == ("198.51.100.10", 30000)
    # Back to fork a's keys: one more change in each direction.
    assert spec.wan_tx == SrtpKeying(CM80.value, fake_master(1, CM80), 2)
    assert spec.wan_rx == SrtpKeying(CM80.value, key_a, 2)
    assert call.chosen_suite() is CM80
    with pytest.raises(SdpError) as info:
        call.confirm("tag-b")  # its state is gone
    assert info.value.reason == "no provider answer for dialog 'tag-b'"


def test_18x_then_200_with_the_same_answer_changes_nothing() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    first = call.answer_from_wan(provider_answer(), early_dialog="t1")
    again = call.answer_from_wan(provider_answer(), early_dialog="t1")
    call.confirm("t1")
    assert first == again
    [spec] = call.streams()
    assert spec is not None and spec.wan_rx is not None and spec.wan_rx.generation == 0


# ------------------------------------------------------------- provider offers, phone answers

PROVIDER_OFFER = crlf(
    "v=0",
    f"o=prov 5 5 IN IP4 {PROVIDER}",
    "s=-",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "m=audio 31000 RTP/SAVP 8 0",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    f"a=crypto:1 NULL_HMAC_SHA1_80 inline:{b64(fake_master(0xD0, CM80))}",
    f"a=crypto:2 AEAD_AES_256_GCM inline:{b64(fake_master(0xD1, GCM256)).rstrip('=')}",
    f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(0xD2, CM80))}",
    "a=rtcp-mux",
    f"a=candidate:1 1 UDP 2130706431 {PROVIDER} 31000 typ host",
    "a=sendrecv",
)

PHONE_ANSWER = crlf(
    "v=0",
    f"o=phone 300 300 IN IP4 {PHONE}",
    "s=-",
    f"c=IN IP4 {PHONE}",
    "t=0 0",
    "m=audio 4100 RTP/AVP 8",
    "a=rtpmap:8 PCMA/8000",
    "a=sendrecv",
)


def test_provider_offer_becomes_exact_phone_offer() -> None:
    call, _, _ = make_call()
    out = call.offer_from_wan(PROVIDER_OFFER)
    assert out == crlf(
        "v=0",
        f"o=- {SESS} 1 IN IP4 {LAN_GW}",
        "s=-",
        f"c=IN IP4 {LAN_GW}",
        "t=0 0",
        "m=audio 10000 RTP/AVP 8 0",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=sendrecv",
    )


def test_phone_answer_becomes_provider_answer_with_same_tag() -> None:
    call, _, _ = make_call()
    call.offer_from_wan(PROVIDER_OFFER)
    out = call.answer_from_lan(PHONE_ANSWER)
    # Policy order puts AES_CM_128_HMAC_SHA1_80 first: the provider's tag 3 wins.
    assert out == crlf(
        "v=0",
        f"o=- {SESS} 1 IN IP4 {WAN_GW}",
        "s=-",
        f"c=IN IP4 {WAN_GW}",
        "t=0 0",
        "m=audio 20000 RTP/SAVP 8",
        "a=rtpmap:8 PCMA/8000",
        "a=sendrecv",
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(1, CM80))}",
        "a=rtcp-mux",
    )
    assert_no_lan_address(out)
    assert call.streams() == [
        StreamSpec(
            lan_port=10000,
            wan_port=20000,
            phone_addr=(PHONE, 4100),
            provider_addr=(PROVIDER, 31000),
            provider_rtcp_addr=None,
            phone_rtcp_addr=(PHONE, 4101),
            wan_rtcp_mux=True,
            wan_tx=SrtpKeying(CM80.value, fake_master(1, CM80), 0),
            wan_rx=SrtpKeying(CM80.value, fake_master(0xD2, CM80), 0),
            direction="sendrecv",
        )
    ]


def test_a_dtls_profile_offer_with_sdes_lines_is_keyed_by_sdes_and_answered_rtp_savp() -> None:
    """rtpengine's default offer: UDP/TLS/RTP/SAVP with a fingerprint, NULL suites and SDES
    lines. The gateway keys by SDES (never NULL), answers RTP/SAVP, and sends no fingerprint."""
    offer = PROVIDER_OFFER.replace(b"RTP/SAVP 8 0", b"UDP/TLS/RTP/SAVP 8 0").replace(
        b"a=sendrecv", b"a=setup:actpass\r\na=fingerprint:sha-256 AB:CD:EF\r\na=sendrecv"
    )
    call, _, _ = make_call()
    to_phone = call.offer_from_wan(offer)
    assert b"m=audio 10000 RTP/AVP 8 0" in to_phone
    assert b"fingerprint" not in to_phone and b"setup" not in to_phone
    out = call.answer_from_lan(PHONE_ANSWER)
    assert b"m=audio 20000 RTP/SAVP 8" in out
    assert b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 " in out and b"NULL" not in out
    assert b"fingerprint" not in out and b"setup" not in out


def test_a_dtls_only_offer_is_refused_with_the_reason() -> None:
    offer = crlf(
        "v=0",
        f"o=prov 5 5 IN IP4 {PROVIDER}",
        "s=-",
        f"c=IN IP4 {PROVIDER}",
        "t=0 0",
        "m=audio 31000 UDP/TLS/RTP/SAVP 0",
        "a=setup:actpass",
        "a=fingerprint:sha-256 AB:CD:EF",
    )
    call, _, _ = make_call()
    with pytest.raises(MediaRefused, match="DTLS keying only"):
        call.offer_from_wan(offer)


def test_provider_offer_follows_policy_order() -> None:
    call, _, _ = make_call(suites=(GCM256, CM80))
    call.offer_from_wan(PROVIDER_OFFER)
    out = call.answer_from_lan(PHONE_ANSWER)
    assert f"a=crypto:2 AEAD_AES_256_GCM inline:{b64(fake_master(1, GCM256))}" in out.decode()
    [spec] = call.streams()
    assert spec is not None and spec.wan_rx == SrtpKeying(GCM256.value, fake_master(0xD1, GCM256))


def test_provider_offer_without_acceptable_crypto_is_refused() -> None:
    call, lan, wan = make_call()
    only_null = b"\r\n".join(
        line
        for line in PROVIDER_OFFER.split(b"\r\n")
        if not line.startswith((b"a=crypto:2", b"a=crypto:3"))
    )
    with pytest.raises(MediaRefused) as info:
        call.offer_from_wan(only_null)
    assert info.value.warning == (
        "provider offer refused: no acceptable crypto for m=audio (accepted"
        " AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM;"
        " crypto suite NULL_HMAC_SHA1_80 refused: NULL cipher suites encrypt nothing)"
    )
    assert (lan.in_use, wan.in_use) == (0, 0)


def test_provider_rtp_avp_offer_is_refused() -> None:
    call, _, _ = make_call()
    with pytest.raises(MediaRefused) as info:
        call.offer_from_wan(PROVIDER_OFFER.replace(b"RTP/SAVP", b"RTP/AVP"))
    assert info.value.warning == (
        "provider offer refused: plaintext RTP/AVP offered for m=audio; SRTP is required"
    )


def test_provider_re_offer_with_new_key_rekeys_both_directions() -> None:
    call, _, _ = make_call()
    call.offer_from_wan(PROVIDER_OFFER)
    call.answer_from_lan(PHONE_ANSWER)
    # Same offer again (a session refresh): nothing changes, o= version stays.
    call.offer_from_wan(PROVIDER_OFFER)
    refresh = call.answer_from_lan(PHONE_ANSWER)
    assert f"o=- {SESS} 1 IN IP4 {WAN_GW}".encode() in refresh
    [spec] = call.streams()
    assert spec is not None and spec.wan_tx is not None and spec.wan_tx.generation == 0

    new_key = b64(fake_master(0xE0, CM80))
    changed = PROVIDER_OFFER.replace(b64(fake_master(0xD2, CM80)).encode(), new_key.encode())
    call.offer_from_wan(changed)
    out = call.answer_from_lan(PHONE_ANSWER)
    assert f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(2, CM80))}" in (
        out.decode()
    )
    assert f"o=- {SESS} 2 IN IP4 {WAN_GW}".encode() in out
    [spec] = call.streams()
    assert spec is not None
    assert spec.wan_tx == SrtpKeying(CM80.value, fake_master(2, CM80), 1)
    assert spec.wan_rx == SrtpKeying(CM80.value, fake_master(0xE0, CM80), 1)


def test_provider_hold_passes_direction_through() -> None:
    call, _, _ = make_call()
    call.offer_from_wan(PROVIDER_OFFER)
    call.answer_from_lan(PHONE_ANSWER)
    to_phone = call.offer_from_wan(PROVIDER_OFFER.replace(b"a=sendrecv", b"a=sendonly"))
    assert b"a=sendonly" in to_phone
    to_provider = call.answer_from_lan(PHONE_ANSWER.replace(b"a=sendrecv", b"a=recvonly"))
    assert b"a=recvonly" in to_provider
    [spec] = call.streams()
    assert spec is not None and spec.direction == "recvonly"
    assert spec.wan_tx is not None and spec.wan_tx.generation == 0


def test_late_offer_invite_without_sdp() -> None:
    # Phone INVITE without SDP -> WAN INVITE without SDP; the provider's 200 carries the
    # offer and the phone's ACK the answer.
    call, _, _ = make_call()
    to_phone = call.offer_from_wan(PROVIDER_OFFER)
    assert b"m=audio 10000 RTP/AVP 8 0" in to_phone
    ack_body = call.answer_from_lan(PHONE_ANSWER)
    assert b"a=crypto:3 AES_CM_128_HMAC_SHA1_80" in ack_body
    [spec] = call.streams()
    assert spec is not None and spec.provider_addr == (PROVIDER, 31000)
    # And afterwards the phone may re-offer (hold) as usual, keeping our key.
    call.offer_from_lan(PHONE_OFFER.replace(b"a=sendrecv", b"a=sendonly"))
    call.answer_from_wan(
        provider_answer(tag=1, suite=CM80, master=fake_master(0xD2, CM80), direction="recvonly")
    )
    [spec] = call.streams()
    assert spec is not None
    assert spec.wan_tx == SrtpKeying(CM80.value, fake_master(1, CM80), 0)
    assert spec.wan_rx == SrtpKeying(CM80.value, fake_master(0xD2, CM80), 0)
    assert spec.direction == "sendonly"


# ------------------------------------------------------------------------- several m-lines

MULTI_OFFER = crlf(
    "v=0",
    f"o=phone 1 1 IN IP4 {PHONE}",
    "s=-",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0",
    f"c=IN IP4 {PHONE}",
    "a=rtpmap:0 PCMU/8000",
    "m=video 4002 RTP/AVP 96",
    f"c=IN IP4 {PHONE}",
    "a=rtpmap:96 H264/90000",
    f"a=candidate:1 1 UDP 1 {PHONE} 4002 typ host",
    f"a=ssrc:1234 cname:user@{PHONE}",
    "m=image 4004 udptl t38",
    f"c=IN IP4 {PHONE}",
    "a=T38FaxVersion:0",
)


def multi_answer(video_port: int = 32000, image_port: int = 0) -> bytes:
    return crlf(
        "v=0",
        f"o=prov 1 1 IN IP4 {PROVIDER}",
        "s=-",
        f"c=IN IP4 {PROVIDER}",
        "t=0 0",
        "m=audio 30000 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(0xA0, CM80))}",
        f"m=video {video_port} RTP/SAVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=crypto:3 AEAD_AES_128_GCM inline:{b64(fake_master(0xA1, GCM128))}",
        f"m=image {image_port} udptl t38",
    )


def test_audio_and_video_relayed_image_disabled() -> None:
    call, lan, wan = make_call(suites=(CM80, GCM128), offer_rtcp_mux=False)
    out = call.offer_from_lan(MULTI_OFFER)
    assert out == crlf(
        "v=0",
        f"o=- {SESS} 1 IN IP4 {WAN_GW}",
        "s=-",
        # The image line lost its c=, so a session-level default is added for it.
        f"c=IN IP4 {WAN_GW}",
        "t=0 0",
        "m=audio 20000 RTP/SAVP 0",
        f"c=IN IP4 {WAN_GW}",
        "a=rtpmap:0 PCMU/8000",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(1, CM80))}",
        f"a=crypto:2 AEAD_AES_128_GCM inline:{b64(fake_master(2, GCM128))}",
        "m=video 20002 RTP/SAVP 96",
        f"c=IN IP4 {WAN_GW}",
        "a=rtpmap:96 H264/90000",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(3, CM80))}",
        f"a=crypto:2 AEAD_AES_128_GCM inline:{b64(fake_master(4, GCM128))}",
        "m=image 0 udptl t38",
    )
    assert_no_lan_address(out)
    assert (lan.in_use, wan.in_use) == (2, 2)
    to_phone = call.answer_from_wan(multi_answer().replace(b"crypto:3", b"crypto:2"))
    assert to_phone == crlf(
        "v=0",
        f"o=- {SESS} 1 IN IP4 {LAN_GW}",
        "s=-",
        f"c=IN IP4 {LAN_GW}",
        "t=0 0",
        "m=audio 10000 RTP/AVP 0",
        "m=video 10002 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "m=image 0 udptl t38",
    )
    audio, video, image = call.streams()
    assert image is None
    assert audio is not None and video is not None
    assert audio.wan_tx == SrtpKeying(CM80.value, fake_master(1, CM80))
    assert video.wan_tx == SrtpKeying(GCM128.value, fake_master(4, GCM128))
    assert video.wan_rx == SrtpKeying(GCM128.value, fake_master(0xA1, GCM128))
    assert (video.lan_port, video.wan_port, video.provider_rtcp_addr) == (
        10002,
        20002,
        (PROVIDER, 32001),
    )


def test_answer_with_wrong_number_of_m_lines_is_refused() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(MULTI_OFFER)
    with pytest.raises(MediaRefused) as info:
        call.answer_from_wan(provider_answer())
    assert info.value.warning == "provider answer has 1 m-lines, the offer had 3"


def test_provider_offer_image_is_disabled_towards_phone_and_answered_with_port_0() -> None:
    call, _, _ = make_call()
    offer = PROVIDER_OFFER + crlf("m=image 31002 udptl t38", "a=T38FaxVersion:0")
    to_phone = call.offer_from_wan(offer)
    assert to_phone.endswith(b"m=image 0 udptl t38\r\n")
    to_provider = call.answer_from_lan(PHONE_ANSWER + crlf("m=image 0 udptl t38"))
    assert to_provider.endswith(b"a=rtcp-mux\r\nm=image 0 udptl t38\r\n")
    assert call.streams()[1] is None


def test_provider_offer_video_without_crypto_disables_only_video() -> None:
    call, _, _ = make_call()
    offer = PROVIDER_OFFER + crlf("m=video 31002 RTP/SAVP 96", "a=rtpmap:96 H264/90000")
    to_phone = call.offer_from_wan(offer)
    assert to_phone.endswith(b"a=sendrecv\r\nm=video 0 RTP/SAVP 96\r\n")
    to_provider = call.answer_from_lan(PHONE_ANSWER + crlf("m=video 0 RTP/AVP 96"))
    assert to_provider.endswith(b"a=rtcp-mux\r\nm=video 0 RTP/SAVP 96\r\n")
    audio, video = call.streams()
    assert audio is not None and video is None


def test_provider_offer_audio_without_crypto_refuses_the_call_even_with_video() -> None:
    call, _, _ = make_call()
    offer = PROVIDER_OFFER.replace(b"a=crypto", b"a=x-crypto") + crlf(
        "m=video 31002 RTP/SAVP 96",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64(fake_master(5, CM80))}",
    )
    with pytest.raises(MediaRefused) as info:
        call.offer_from_wan(offer)
    assert info.value.warning == (
        "provider offer refused: no acceptable crypto for m=audio (accepted"
        " AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM;"
        " no a=crypto line)"
    )


def test_provider_plaintext_offer_under_explicit_downgrade() -> None:
    call, _, _ = make_call(allow_plaintext=True)
    plain = b"\r\n".join(
        line for line in PROVIDER_OFFER.split(b"\r\n") if not line.startswith(b"a=crypto")
    ).replace(b"RTP/SAVP", b"RTP/AVP")
    call.offer_from_wan(plain)
    out = call.answer_from_lan(PHONE_ANSWER)
    assert b"m=audio 20000 RTP/AVP 8\r\n" in out
    assert b"a=crypto" not in out
    [spec] = call.streams()
    assert spec is not None and spec.wan_plaintext and spec.wan_tx is None
    assert call.uses_plaintext_downgrade is True


def test_refused_re_offer_answer_keeps_the_previous_agreement() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer())
    before = call.streams()
    call.offer_from_lan(PHONE_OFFER.replace(b"a=sendrecv", b"a=sendonly"))
    with pytest.raises(MediaRefused):
        call.answer_from_wan(provider_answer(proto="RTP/AVP", direction="recvonly"))
    assert call.streams() == before
    # The exchange is over: the phone may offer again.
    assert call.offer_from_lan(PHONE_OFFER) == expected_wan_offer(version=3)


def test_rejected_offers_return_to_stable() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer())
    before = call.streams()
    call.offer_from_wan(PROVIDER_OFFER)
    call.offer_rejected()  # the phone answered the re-INVITE with 488
    assert call.streams() == before
    with pytest.raises(SdpError):
        call.answer_from_lan(PHONE_ANSWER)
    call.offer_from_lan(PHONE_OFFER)  # no glare any more
    bad_answer = PHONE_ANSWER.replace(b"c=IN IP4", b"c=IN")
    call.offer_rejected()
    call.offer_from_wan(PROVIDER_OFFER)
    with pytest.raises(SdpError) as info:
        call.answer_from_lan(bad_answer)
    assert info.value.status_hint == 400
    assert call.streams() == before
    call.offer_from_lan(PHONE_OFFER)


# ----------------------------------------------------------------------- state and resources


def test_offer_while_offer_pending_is_glare() -> None:
    call, _, _ = make_call()
    call.offer_from_lan(PHONE_OFFER)
    with pytest.raises(SdpError) as info:
        call.offer_from_wan(PROVIDER_OFFER)
    assert info.value.status_hint == 491


def test_answer_without_offer() -> None:
    call, _, _ = make_call()
    with pytest.raises(SdpError) as info:
        call.answer_from_wan(provider_answer())
    assert info.value.reason == "answer from the provider without an offer to it"


def test_release_returns_ports() -> None:
    call, lan, wan = make_call()
    call.offer_from_lan(MULTI_OFFER)
    assert (lan.in_use, wan.in_use) == (2, 2)
    call.release()
    assert (lan.in_use, wan.in_use) == (0, 0)
    assert call.streams() == []
    with pytest.raises(SdpError):
        call.offer_from_lan(PHONE_OFFER)


def test_garbage_from_a_peer_is_400() -> None:
    call, lan, wan = make_call()
    with pytest.raises(SdpError) as info:
        call.offer_from_lan(b"not sdp")
    assert info.value.status_hint == 400
    assert (lan.in_use, wan.in_use) == (0, 0)


def test_single_allocator_serves_both_sides() -> None:
    shared = PortAllocator(10000, 10099)
    call = CallMedia("c", MediaPolicy(LAN_GW, WAN_GW), shared)
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(provider_answer())
    [spec] = call.streams()
    assert spec is not None and (spec.lan_port, spec.wan_port) == (10000, 10002)


def test_real_keys_are_random_and_fresh_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real secrets module and new_crypto
    keys = set()
    for _ in range(2):
        call, _, _ = make_call()
        out = call.offer_from_lan(PHONE_OFFER).decode()
        keys.update(re.findall(r"inline:(\S+)", out))
    assert len(keys) == 8
    assert all(k.endswith("=") for k in keys if len(k) != 40)


# ---------------------------------------------------------------------------- PortAllocator


def test_ports_are_even_pairs_and_rotate() -> None:
    alloc = PortAllocator(40001, 40008)  # pairs 40002, 40004, 40006 (40008 lacks 40009)
    assert alloc.capacity == 3
    first = alloc.allocate()
    second = alloc.allocate()
    assert (first, second) == (40002, 40004)
    alloc.release(first)
    # The just-released pair goes to the back of the queue.
    assert alloc.allocate() == 40006
    assert alloc.allocate() == 40002
    with pytest.raises(PortsExhausted) as info:
        alloc.allocate()
    assert str(info.value) == "no free RTP port pair in 40001-40008 (all 3 pairs in use)"
    assert ports_module.PortsExhausted.status_hint == 503


def test_port_misuse_is_reported() -> None:
    alloc = PortAllocator(40000, 40003)
    with pytest.raises(ValueError):
        alloc.release(40000)
    with pytest.raises(ValueError):
        PortAllocator(40000, 40000)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_mangled_peer_sdp_only_raises_sdp_errors(data: st.DataObject) -> None:
    lines = PROVIDER_OFFER.split(b"\r\n")
    index = data.draw(st.integers(0, len(lines) - 1))
    junk = data.draw(st.binary(max_size=30))
    lines[index] = lines[index][: data.draw(st.integers(0, 40))] + junk
    body = b"\r\n".join(lines)
    call, lan, wan = make_call()
    for method in (call.offer_from_wan, call.offer_from_lan):
        with contextlib.suppress(SdpError):
            method(body)
        call.offer_rejected()
    call.release()
    assert (lan.in_use, wan.in_use) == (0, 0)


def test_nothing_naming_the_phone_crosses_to_the_provider() -> None:
    call, _, _ = make_call()
    offer = PHONE_OFFER.replace(
        b"s=call\r\n",
        b"s=Polycom SoundPoint IP 650\r\ni=Desk of J. Smith\r\ne=jsmith@corp.example\r\n",
    ).replace(b"a=sendrecv\r\n", b"a=sendrecv\r\na=tool:LegacyPhone 3.2.1\r\n")
    out = call.offer_from_lan(offer)
    assert b"s=-\r\n" in out
    for leak in (b"Polycom", b"Smith", b"jsmith", b"tool", PHONE.encode()):
        assert leak not in out
