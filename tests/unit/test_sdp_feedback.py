"""A provider's feedback-profile offer (RTP/SAVPF, UDP/TLS/RTP/SAVPF: RFC 5124, RFC 5764 §8)
reaches a legacy phone as RTP/AVP without a=rtcp-fb or a=rtcp-rsize (a plain phone refuses
RTP/AVPF), and the gateway's answer keeps the offered profile (RFC 3264 §6)."""

from __future__ import annotations

import re

import pytest

from gateway.media.ports import PortAllocator
from gateway.sdp.negotiation import CallMedia, MediaPolicy

PROVIDER = "198.51.100.7"
PHONE = "192.0.2.23"
OUR_FP = ("sha-256", ":".join(f"{n:02X}" for n in range(32)))
KEY = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyBrZXkgbWF0dGVy"


def crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def offer(proto: str, keying_line: str) -> bytes:
    return crlf(
        "v=0",
        f"o=- 1 1 IN IP4 {PROVIDER}",
        "s=-",
        f"c=IN IP4 {PROVIDER}",
        "t=0 0",
        "a=rtcp-fb:* nack",  # session level is not where RFC 4585 puts it: dropped all the same
        f"m=audio 30000 {proto} 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtcp-fb:* trr-int 100",
        "a=rtcp-fb:0 nack",
        "a=rtcp-rsize",
        keying_line,
        "a=sendrecv",
    )


PHONE_ANSWER = crlf(
    "v=0",
    f"o=phone 3 3 IN IP4 {PHONE}",
    "s=-",
    f"c=IN IP4 {PHONE}",
    "t=0 0",
    "m=audio 4100 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "a=sendrecv",
)


@pytest.mark.parametrize(
    ("proto", "keying_line", "keying"),
    [
        ("RTP/SAVPF", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY[:40]}", ("sdes",)),
        ("UDP/TLS/RTP/SAVPF", f"a=fingerprint:sha-256 {OUR_FP[1]}", ("dtls",)),
    ],
    ids=["sdes", "dtls"],
)
def test_feedback_offer_reaches_the_phone_as_avp(
    proto: str, keying_line: str, keying: tuple[str, ...]
) -> None:
    policy = MediaPolicy(
        lan_address="192.0.2.1",
        wan_address="203.0.113.1",
        keying=keying,
        dtls_fingerprint=lambda: OUR_FP,
    )
    call = CallMedia("c", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))
    to_phone = call.offer_from_wan(offer(proto, keying_line)).decode()
    assert re.findall(r"(?m)^m=audio \d+ (\S+) ", to_phone) == ["RTP/AVP"]
    assert "rtcp-fb" not in to_phone and "rtcp-rsize" not in to_phone
    assert "a=rtpmap:101 telephone-event/8000" in to_phone  # codecs still pass
    out = call.answer_from_lan(PHONE_ANSWER).decode()
    assert re.findall(r"(?m)^m=audio \d+ (\S+) ", out) == [proto]
    [spec] = call.streams()
    assert spec is not None and spec.phone_addr == (PHONE, 4100)
    if keying == ("sdes",):
        assert spec.wan_tx is not None and spec.wan_rx is not None and "a=crypto:1 " in out
    else:
        assert spec.wan_dtls is not None and "a=setup:passive" in out  # no a=setup: active


def test_a_phone_that_offers_avpf_keeps_it() -> None:
    """Only offers from the WAN are narrowed: a phone that offers RTP/AVPF itself knows it."""
    policy = MediaPolicy(lan_address="192.0.2.1", wan_address="203.0.113.1")
    call = CallMedia("c", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))
    phone_offer = PHONE_ANSWER.replace(b"RTP/AVP", b"RTP/AVPF") + b"a=rtcp-fb:0 nack\r\n"
    out = call.offer_from_lan(phone_offer).decode()
    assert " RTP/SAVPF " in out and "a=rtcp-fb:0 nack" in out
