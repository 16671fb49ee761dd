"""Fuzz target 2: SDP, a=crypto and offer/answer across the legs (RFC 8866, RFC 4568,
RFC 3264).

An input is a sequence of operations (engine.frame_ops) on one ``CallMedia``: the first
byte of a leading policy operation picks ``allow_plaintext`` and ``offer_rtcp_mux``; then
offers and answers from either side, rejections, confirmations of forks and re-key requests,
and bare parses. Invariants:

- only SdpError (MediaRefused included) escapes; the model's own output parses again and
  serialises to the same text; a=crypto values round-trip through ``format``;
- every body toward the WAN (our offer, our answer) has, on each active m-line, an SRTP
  profile with at least one a=crypto line and no NULL suite, unless ``allow_plaintext``;
- every body toward the LAN is RTP/AVP(F) on active m-lines, with no a=crypto (no key of the
  provider's reaches the phone);
- ``streams()`` never specifies a plaintext WAN side unless ``allow_plaintext``, and keyed
  sides carry known suites with keys of the right length;
- after ``release()`` every port went back to its allocator.
"""

from __future__ import annotations

from gateway.media.ports import PortAllocator
from gateway.media.suites import NULL_SUITE_NAMES, SrtpSuite
from gateway.sdp.crypto import CryptoAttribute
from gateway.sdp.errors import SdpError
from gateway.sdp.model import SessionDescription
from gateway.sdp.negotiation import CallMedia, MediaPolicy
from tests.fuzz.engine import Violation, frame_ops, parse_ops
from tests.fuzz.seeds import sdp_bodies

FRAMED = True
TOKENS = [
    t.encode()
    for t in (
        "\r\nm=audio 4000 RTP/AVP 0\r\n",
        "\r\nm=video 0 RTP/AVP 96\r\n",
        "RTP/SAVP",
        "RTP/AVPF",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVP",
        "udptl t38",
        "m=image 5000 udptl t38\r\n",
        "\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
        "NULL_HMAC_SHA1_80",
        "AEAD_AES_256_GCM",
        "|2^31|1:1",
        "|2^20",
        " UNENCRYPTED_SRTP",
        " KDR=1",
        "\r\na=rtcp-mux",
        "\r\na=rtcp:",
        "\r\na=sendonly",
        "\r\na=inactive",
        "\r\nc=IN IP4 0.0.0.0",
        "\r\nc=IN IP6 ::1",
        "\r\na=fingerprint:sha-256 AB",
        "\r\na=setup:actpass",
        "IN IP4 ",
        "\r\nb=AS:64",
        "\r\nt=0 0",
        "\r\no=- 1 1 IN IP4 1.2.3.4",
        "=",
        "/",
        "\r\na=rtpmap:101 telephone-event/8000",
    )
]

OFFER_LAN, ANSWER_WAN, OFFER_WAN, ANSWER_LAN, REJECT, CONFIRM, REKEY, PARSE, POLICY = range(9)

_SRTP_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})
_LAN_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})


def _is_offer(body: bytes) -> bool:
    return b"a=crypto" not in body or b"RTP/AVP " in body


def seeds() -> list[bytes]:
    bodies = sdp_bodies()
    phone = [b for b in bodies if b"RTP/AVP " in b and b"a=crypto" not in b]
    provider = [b for b in bodies if b"a=crypto" in b]
    out = [frame_ops([(PARSE, b)]) for b in bodies]
    for offer in phone[:6]:
        for answer in provider[:8]:
            out.append(frame_ops([(OFFER_LAN, offer), (ANSWER_WAN, answer)]))
    for offer in provider:
        for answer in phone[:3]:
            out.append(frame_ops([(OFFER_WAN, offer), (ANSWER_LAN, answer)]))
    if phone and provider:
        out.append(
            frame_ops(
                [
                    (POLICY, b"\x03"),
                    (OFFER_LAN, phone[0]),
                    (ANSWER_WAN, provider[0]),
                    (REKEY, b""),
                    (OFFER_LAN, phone[-1]),
                    (ANSWER_WAN, provider[-1]),
                    (OFFER_WAN, provider[0]),
                    (ANSWER_LAN, phone[0]),
                    (REJECT, b""),
                ]
            )
        )
        out.append(
            frame_ops(
                [
                    (OFFER_LAN, phone[0]),
                    (ANSWER_WAN, provider[0]),
                    (CONFIRM, b"a"),
                    (ANSWER_WAN, provider[1 % len(provider)]),
                    (CONFIRM, b"b"),
                ]
            )
        )
    return out


def _check_roundtrip(body: bytes) -> None:
    try:
        sd = SessionDescription.parse(body)
    except SdpError:
        return
    text = sd.to_text()
    try:
        again = SessionDescription.parse(text.encode("utf-8", "surrogateescape"))
    except SdpError as error:
        raise Violation(f"the model's own output does not parse: {error.reason}") from error
    if again.to_text() != text:
        raise Violation("SDP serialising is not a fixed point")
    for md in sd.media:
        for value in md.get_attributes("crypto"):
            if value is None:
                continue
            try:
                crypto = CryptoAttribute.parse(value)
            except SdpError:
                continue
            if CryptoAttribute.parse(crypto.format()).format() != crypto.format():
                raise Violation(f"a=crypto round trip changed {value!r}")


def _own_output(body: bytes, toward: str) -> SessionDescription:
    try:
        return SessionDescription.parse(body)
    except SdpError as error:
        raise Violation(f"our SDP toward the {toward} does not parse: {error.reason}") from error


def _check_wan_body(body: bytes, policy: MediaPolicy) -> None:
    for md in _own_output(body, "WAN").media:
        cryptos = [v for v in md.get_attributes("crypto") if v is not None]
        for value in cryptos:
            if value.split()[1:2] and value.split()[1] in NULL_SUITE_NAMES:
                raise Violation(f"NULL suite toward the WAN: a=crypto:{value}")
        if md.port == 0 or policy.allow_plaintext:
            continue
        if md.proto not in _SRTP_PROTOS:
            raise Violation(f"active m-line toward the WAN is {md.proto}")
        if not cryptos:
            raise Violation("active SRTP m-line toward the WAN without a=crypto")


def _check_lan_body(body: bytes) -> None:
    for md in _own_output(body, "LAN").media:
        if md.port == 0:
            continue
        if md.proto not in _LAN_PROTOS:
            raise Violation(f"active m-line toward the LAN is {md.proto}")
        if md.has_attribute("crypto"):
            raise Violation("a=crypto toward the LAN")


def _check_streams(call: CallMedia, policy: MediaPolicy) -> None:
    for spec in call.streams():
        if spec is None:
            continue
        if spec.wan_plaintext:
            if not policy.allow_plaintext:
                raise Violation("plaintext WAN stream without allow_plaintext")
            continue
        for keying in (spec.wan_tx, spec.wan_rx):
            if keying is None:
                raise Violation("WAN stream neither keyed both ways nor plaintext")
            suite = SrtpSuite.from_name(keying.suite)
            if len(keying.master) != suite.master_length:
                raise Violation(f"{suite.value} keyed with {len(keying.master)} bytes")


def check(data: bytes) -> None:
    ops = parse_ops(data)
    allow_plaintext, mux = False, True
    if ops and ops[0][0] == POLICY and ops[0][1]:
        allow_plaintext, mux = bool(ops[0][1][0] & 1), bool(ops[0][1][0] & 2)
    policy = MediaPolicy(
        lan_address="127.0.7.20",
        wan_address="127.0.7.21",
        allow_plaintext=allow_plaintext,
        offer_rtcp_mux=mux,
    )
    lan, wan = PortAllocator(10000, 10199), PortAllocator(20000, 20199)
    call = CallMedia("fuzz", policy, lan, wan)
    for kind, payload in ops[:32]:
        try:
            if kind == OFFER_LAN:
                _check_wan_body(call.offer_from_lan(payload), policy)
            elif kind == ANSWER_WAN:
                # Forks: the answer's length picks one of three early dialogs.
                tag = "abc"[len(payload) % 3]
                _check_lan_body(call.answer_from_wan(payload, early_dialog=tag))
            elif kind == OFFER_WAN:
                _check_lan_body(call.offer_from_wan(payload))
            elif kind == ANSWER_LAN:
                _check_wan_body(call.answer_from_lan(payload), policy)
            elif kind == REJECT:
                call.offer_rejected()
            elif kind == CONFIRM:
                call.confirm(payload[:1].decode("latin-1"))
            elif kind == REKEY:
                call.request_rekey()
            elif kind == PARSE:
                _check_roundtrip(payload)
        except SdpError as error:
            if "\r" in error.reason or "\n" in error.reason:
                raise Violation("SdpError reason breaks a line") from error
        _check_streams(call, policy)
    call.release()
    if lan.in_use or wan.in_use:
        raise Violation(f"ports left after release: LAN {lan.in_use}, WAN {wan.in_use}")
