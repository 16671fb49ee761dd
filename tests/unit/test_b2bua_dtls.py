"""The B2BUA core with a DTLS-SRTP keyed WAN leg (RFC 5763): what goes to the provider, what
the media workers are told, and a DTLS answer that cannot be used failing the call closed.

Uses the scripted phone and provider of ``test_b2bua``.
"""

from __future__ import annotations

from gateway.media.control import OpenStream, StreamSpec
from gateway.sip.call_events import CallAnswered, CallRefused, PlaintextDowngrade
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from tests.unit.test_b2bua import (
    PHONE_IP,
    Harness,
    only,
    phone_request,
    phone_sdp,
    register,
    respond,
)

OUR_FP = ("sha-256", ":".join(f"{n:02X}" for n in range(32)))
PROVIDER_FP = ":".join(f"{255 - n:02X}" for n in range(32))


def dtls_harness(keying: tuple[str, ...] = ("dtls",)) -> Harness:
    return Harness(keying=keying, dtls_fingerprint=lambda: OUR_FP)


def provider_dtls_sdp(setup: str, proto: str = "UDP/TLS/RTP/SAVP") -> bytes:
    return (
        "v=0\r\no=prov 5 5 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        f"m=audio 30000 {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=rtcp-mux\r\n"
        f"a=setup:{setup}\r\na=fingerprint:sha-256 {PROVIDER_FP}\r\n"
    ).encode()


def opened(h: Harness) -> StreamSpec:
    [command] = [c for c in h.media if isinstance(c, OpenStream)]
    return command.spec


def test_outbound_call_with_a_dtls_keyed_wan_leg() -> None:
    h = dtls_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    body = invite.body.decode()
    assert "RTP/AVP" not in body and " UDP/TLS/RTP/SAVP 0 101" in body
    assert f"a=fingerprint:sha-256 {OUR_FP[1]}" in body and "a=setup:actpass" in body
    assert "a=crypto" not in body and PHONE_IP not in body
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_dtls_sdp("active")))
    [ok] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    to_phone = ok.body.decode()
    assert "RTP/AVP" in to_phone and "fingerprint" not in to_phone and "setup" not in to_phone
    spec = opened(h)
    assert spec.wan_dtls is not None
    assert spec.wan_dtls.role == "server"
    assert spec.wan_dtls.fingerprints == (("sha-256", PROVIDER_FP),)
    assert spec.wan_dtls.profiles  # the trunk's suites, never NULL
    assert all("NULL" not in p for p in spec.wan_dtls.profiles)
    # No SDES key and nothing plain: the worker keys the WAN side from the handshake.
    assert spec.wan_tx is None and spec.wan_rx is None and spec.wan_plaintext is False
    assert spec.provider_addr == ("127.0.0.30", 30000) and spec.wan_rtcp_mux
    assert [type(e) for e in h.events if isinstance(e, CallAnswered)] == [CallAnswered]
    assert not any(isinstance(e, PlaintextDowngrade) for e in h.events)


def test_a_dtls_answer_with_actpass_fails_the_call_closed() -> None:
    h = dtls_harness(("dtls", "sdes"))
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    assert "RTP/SAVP 0 101" in invite.body.decode() and "a=crypto:" in invite.body.decode()
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_dtls_sdp("actpass", "RTP/SAVP")))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [488]
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["ACK", "BYE"]
    [refused] = [e for e in h.events if isinstance(e, CallRefused)]
    assert "actpass" in refused.reason
    assert not [c for c in h.media if isinstance(c, OpenStream)]


def test_a_dtls_answer_on_an_sdes_trunk_is_refused() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    assert "fingerprint" not in invite.body.decode()
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_dtls_sdp("active")))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [488]
    [refused] = [e for e in h.events if isinstance(e, CallRefused)]
    assert "SDES only" in refused.reason


def test_provider_dtls_offer_reaches_the_phone_as_plain_rtp_and_is_answered_active() -> None:
    h = dtls_harness()
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    ok = make_response(upstream, 200, to_tag="x")
    ok.add("Contact", upstream.get("Contact") or "")
    h.from_provider(ok)
    h.take_lan()
    token = upstream.contacts[0].uri.user
    raw = (
        f"INVITE sip:{token}@127.0.0.21:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKdtls1\r\nMax-Forwards: 70\r\n"
        "From: <sip:+4420123@provider.example>;tag=pf3\r\nTo: <sip:1001@provider.example>\r\n"
        "Call-ID: inbound-dtls@provider\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:pbx@127.0.0.30:5061;transport=tls>\r\nContent-Type: application/sdp\r\n\r\n"
    ).encode() + provider_dtls_sdp("actpass")
    h.from_provider(parse_message(raw))
    [to_phone] = only(h.take_lan(), SipRequest)
    offer = to_phone.body.decode()
    assert "RTP/AVP" in offer and "fingerprint" not in offer and "setup" not in offer
    answer = make_response(to_phone, 200, to_tag="phoneans")
    answer.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    answer.add("Content-Type", "application/sdp")
    answer.body = phone_sdp(8002).encode()
    h.from_phone(bytes(answer))
    [ok200] = [m for m in only(h.take_wan(), SipResponse) if m.status == 200]
    body = ok200.body.decode()
    assert " UDP/TLS/RTP/SAVP 0" in body and "a=setup:active" in body
    assert f"a=fingerprint:sha-256 {OUR_FP[1]}" in body and "a=crypto" not in body
    assert PHONE_IP not in body
    spec = opened(h)
    assert spec.wan_dtls is not None and spec.wan_dtls.role == "client"
    assert spec.wan_tx is None and spec.wan_rx is None and not spec.wan_plaintext
