"""What a phone call carries through the B2BUA core besides voice: SIP INFO DTMF both ways
(application/dtmf-relay, application/dtmf), T.38 switch-overs refused with 488 (the fax stays
G.711 in the audio), 181/182/183 relayed with early media opened on the 183's answer, and a
302 from the provider whose targets lead the phone back through the gateway.

Uses the scripted phone and provider of ``tests/unit/test_b2bua.py`` (its ``Harness``).
"""

from __future__ import annotations

import pytest

from gateway.media.control import OpenStream, UpdateStream
from gateway.sdp.negotiation import FAX_REFUSAL
from gateway.sip.call_events import CallAnswered, CallRefused
from gateway.sip.message import SipRequest, SipResponse, make_response
from gateway.sip.uri import SipUri, parse_uri
from tests.unit.test_b2bua import (
    PHONE_IP,
    Harness,
    confirmed_call,
    only,
    phone_request,
    phone_sdp,
    policy_harness,
    provider_answer,
    provider_in_dialog,
    register,
    respond,
)

T38 = (
    "v=0\r\n"
    "o={who} 1 2 IN IP4 {ip}\r\n"
    "s=-\r\n"
    "c=IN IP4 {ip}\r\n"
    "t=0 0\r\n"
    "m=image 4600 udptl t38\r\n"
    "a=T38FaxVersion:0\r\n"
    "a=T38MaxBitRate:14400\r\n"
    "a=T38FaxRateManagement:transferredTCF\r\n"
    "a=T38FaxUdpEC:t38UDPRedundancy\r\n"
)


def phone_info(body: str, content_type: str, *, cseq: int, to_tag: str | None) -> str:
    """An INFO from the phone inside its call, with a non-SDP body."""
    request = phone_request("INFO", cseq=cseq, to_tag=to_tag)
    return request.replace(
        "Content-Length: 0\r\n\r\n",
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n{body}",
    )


# --------------------------------------------------------------------------- SIP INFO DTMF


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        ("application/dtmf-relay", "Signal=#\r\nDuration=250\r\n"),
        ("application/dtmf", "7"),
    ],
)
def test_info_dtmf_from_the_phone_reaches_the_provider_unchanged(
    content_type: str, body: str
) -> None:
    h = Harness()
    invite, ok = confirmed_call(h)
    h.from_phone(phone_info(body, content_type, cseq=2, to_tag=ok.to.tag))
    [info] = only(h.take_wan(), SipRequest)
    assert info.method == "INFO" and info.call_id == invite.call_id
    assert info.get("Content-Type") == content_type
    assert info.body == body.encode()
    assert info.to.tag == "provtag"
    h.from_provider(respond(info, 200))
    [answered] = only(h.take_lan(), SipResponse)
    assert (answered.status, answered.cseq.method, answered.cseq.seq) == (200, "INFO", 2)
    assert not h.media  # DTMF in signalling touches no stream


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", "Signal=9\r\nDuration=100\r\n"),
        ("application/dtmf", "*"),
    ],
)
def test_info_dtmf_from_the_provider_reaches_the_phone_unchanged(
    content_type: str, body: str
) -> None:
    h = Harness()
    invite, _ = confirmed_call(h)
    info = provider_in_dialog(invite, "INFO", 20, extra={"Content-Type": content_type})
    info.body = body.encode()
    h.from_provider(info)
    [to_phone] = only(h.take_lan(), SipRequest)
    assert to_phone.method == "INFO" and to_phone.call_id == "call-1@phone"
    assert to_phone.get("Content-Type") == content_type
    assert to_phone.body == body.encode()
    assert str(to_phone.uri) == f"sip:1001@{PHONE_IP}:5062"
    h.from_phone(bytes(make_response(to_phone, 200)))
    [answered] = only(h.take_wan(), SipResponse)
    assert (answered.status, answered.cseq.seq) == (200, 20)
    assert not h.media


def test_info_dtmf_answered_with_an_error_reaches_its_sender() -> None:
    """A far end without INFO DTMF says 415 or 469: the phone must learn it and fall back."""
    h = Harness()
    _, ok = confirmed_call(h)
    h.from_phone(phone_info("Signal=1\r\n", "application/dtmf-relay", cseq=2, to_tag=ok.to.tag))
    [info] = only(h.take_wan(), SipRequest)
    h.from_provider(make_response(info, 415))
    [answered] = only(h.take_lan(), SipResponse)
    assert answered.status == 415


# -------------------------------------------------------------------------------- T.38


def test_t38_reinvite_from_the_phone_gets_488_and_nothing_reaches_the_provider() -> None:
    h = Harness()
    _, ok = confirmed_call(h)
    body = T38.format(who="phone", ip=PHONE_IP)
    h.from_phone(phone_request("INVITE", cseq=2, body=body, to_tag=ok.to.tag))
    finals = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    [refused] = finals
    assert refused.status == 488
    assert "T.38" in (refused.get("Warning") or "")
    assert FAX_REFUSAL in (refused.get("Warning") or "")
    assert not h.take_wan()
    assert not h.media  # the audio stream stays as it was
    assert [e.status for e in h.events if isinstance(e, CallRefused)] == [488]
    # The fax machine falls back to G.711: its next re-INVITE (audio) goes through as usual.
    h.from_phone(phone_request("ACK", cseq=2, to_tag=ok.to.tag))
    h.from_phone(phone_request("INVITE", cseq=3, body=phone_sdp(), to_tag=ok.to.tag))
    [reinvite] = only(h.take_wan(), SipRequest)
    assert reinvite.method == "INVITE" and b"RTP/SAVP 0 101" in reinvite.body


def inbound_call(h: Harness) -> tuple[SipRequest, SipResponse]:
    """The provider calls the registered phone, which answers: the provider's INVITE and the
    gateway's 200 to it (the provider made the first offer)."""
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    registered = make_response(upstream, 200, to_tag="reg")
    registered.add("Contact", upstream.get("Contact") or "")
    h.from_provider(registered)
    h.take_lan()
    registered_uri = upstream.contacts[0].uri
    assert isinstance(registered_uri, SipUri)
    token = registered_uri.user
    invite = SipRequest("INVITE", parse_uri(f"sip:{token}@127.0.0.21:5061;transport=tls"))
    invite.add("Via", "SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKin1")
    invite.add("Max-Forwards", "70")
    invite.add("From", "<sip:+4420123@provider.example>;tag=pf1")
    invite.add("To", "<sip:1001@provider.example>")
    invite.add("Call-ID", "inbound-1@provider")
    invite.add("CSeq", "1 INVITE")
    invite.add("Contact", "<sip:pbx@127.0.0.30:5061;transport=tls>")
    invite.add("Content-Type", "application/sdp")
    # provider_answer() takes tag and suite from the first crypto line it is given.
    invite.body = provider_answer(b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n")
    h.from_provider(invite)
    [to_phone] = only(h.take_lan(), SipRequest)
    answer = make_response(to_phone, 200, to_tag="phoneans")
    answer.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    answer.add("Content-Type", "application/sdp")
    answer.body = phone_sdp(8002).encode()
    h.from_phone(bytes(answer))
    [ok] = [m for m in only(h.take_wan(), SipResponse) if m.status == 200]
    h.take_lan()
    h.media.clear()
    return invite, ok


def provider_reinvite(invite: SipRequest, ok: SipResponse, cseq: int, body: bytes) -> SipRequest:
    """The provider's re-INVITE in the dialog of its own INVITE (``ok``: our 200 to it)."""
    request = SipRequest("INVITE", ok.contacts[0].uri)
    request.add("Via", f"SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKre{cseq}")
    request.add("Max-Forwards", "70")
    request.add("From", str(invite.from_))
    request.add("To", str(ok.to))
    request.add("Call-ID", invite.call_id)
    request.add("CSeq", f"{cseq} INVITE")
    request.add("Contact", "<sip:pbx@127.0.0.30:5061;transport=tls>")
    request.add("Content-Type", "application/sdp")
    request.body = body
    return request


def test_t38_reinvite_from_the_provider_gets_488_and_nothing_reaches_the_phone() -> None:
    h = Harness()
    invite, ok = inbound_call(h)
    body = T38.format(who="prov", ip="127.0.0.30").encode()
    h.from_provider(provider_reinvite(invite, ok, 2, body))
    finals = [m for m in only(h.take_wan(), SipResponse) if m.status >= 200]
    [refused] = finals
    assert refused.status == 488 and refused.cseq.seq == 2
    assert FAX_REFUSAL in (refused.get("Warning") or "")
    assert not h.take_lan()
    assert not h.media


def test_provider_reinvite_on_an_outbound_call_is_taken_as_an_offer() -> None:
    """After the phone's INVITE offer and the provider's 200 answer, the provider's own
    re-INVITE is a new offer (RFC 3264 §8): it must be re-keyed as one and answered with a
    single crypto line, and a T.38 one refused as fax, not as a bad answer."""
    h = Harness()
    invite, _ = confirmed_call(h)
    body = T38.format(who="prov", ip="127.0.0.30").encode()
    h.from_provider(provider_in_dialog(invite, "INVITE", 30, body))
    [refused] = [m for m in only(h.take_wan(), SipResponse) if m.status >= 200]
    assert refused.status == 488
    assert FAX_REFUSAL in (refused.get("Warning") or "")


def test_t38_stream_offered_beside_audio_reaches_the_provider_disabled() -> None:
    h = Harness()
    _, ok = confirmed_call(h)
    body = phone_sdp() + "m=image 4600 udptl t38\r\na=T38FaxVersion:0\r\n"
    h.from_phone(phone_request("INVITE", cseq=2, body=body, to_tag=ok.to.tag))
    [reinvite] = only(h.take_wan(), SipRequest)
    text = reinvite.body.decode()
    assert "m=image 0 udptl t38\r\n" in text and "T38FaxVersion" not in text
    assert "m=audio 41" in text and "RTP/SAVP" in text


# ------------------------------------------------------------------ 181, 182, 183 and early media


def test_181_182_and_183_reach_the_phone_and_early_media_opens_on_the_183() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 181))
    h.from_provider(respond(invite, 182))
    assert not h.media  # no SDP yet: nothing to open
    answer = provider_answer(invite.body)
    h.from_provider(respond(invite, 183, body=answer))
    lan = only(h.take_lan(), SipResponse)
    assert [(m.status, m.reason) for m in lan] == [
        (181, "Call Is Being Forwarded"),
        (182, "Queued"),
        (183, "Session Progress"),
    ]
    assert len({m.to.tag for m in lan}) == 1  # one early dialog toward the phone
    progress = lan[2]
    assert progress.get("Content-Type") == "application/sdp"
    sdp = progress.body.decode()
    assert "RTP/AVP 0 101" in sdp and "a=crypto" not in sdp and "c=IN IP4 127.0.0.20" in sdp
    # Early media: the stream is open (SRTP keyed both ways) before any answer.
    [opened] = h.media
    assert isinstance(opened, OpenStream)
    assert opened.spec.provider_addr == ("127.0.0.30", 30000)
    assert opened.spec.phone_addr == (PHONE_IP, 8000)
    assert opened.spec.wan_tx is not None and opened.spec.wan_rx is not None
    assert not [e for e in h.events if isinstance(e, CallAnswered)]
    # The 200 repeats the 183's answer: the stream goes on as it is.
    h.from_provider(respond(invite, 200, body=answer))
    [ok] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    assert ok.to.tag == progress.to.tag
    assert [c for c in h.media if isinstance(c, OpenStream | UpdateStream)] == [opened]
    assert [type(e) for e in h.events if isinstance(e, CallAnswered)] == [CallAnswered]


def test_183_without_sdp_is_relayed_and_opens_nothing() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 183))
    [progress] = only(h.take_lan(), SipResponse)
    assert progress.status == 183 and progress.body == b""
    assert not h.media


# ---------------------------------------------------------------------------------- 302


def redirect(invite: SipRequest, contact: str) -> SipResponse:
    response = make_response(invite, 302, to_tag="provtag")
    response.add("Contact", contact)
    return response


def test_302_reaches_the_phone_with_its_target_rehomed_to_the_gateway() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(redirect(invite, "<sip:+15559876543@redirect.example;transport=tls>;q=0.5"))
    [moved] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    assert moved.status == 302
    assert moved.get_all("Contact") == ["<sip:+15559876543@127.0.0.20:5060>;q=0.5"]
    assert b"redirect.example" not in bytes(moved)


def test_a_redirected_call_is_checked_by_the_dial_plan_like_any_other() -> None:
    """The phone follows the re-homed target through the gateway: an international target
    is refused (403) and nothing reaches the provider, as if the phone had dialled it."""
    h = policy_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), ruri="sip:2125550123@127.0.0.20"))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(redirect(invite, "<sip:+442079460000@redirect.example>"))
    [moved] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    assert moved.status == 302
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK"
    # What the phone does with <sip:+442079460000@127.0.0.20:5060>:
    h.from_phone(
        phone_request(
            "INVITE",
            call_id="call-2@phone",
            body=phone_sdp(),
            ruri="sip:+442079460000@127.0.0.20:5060",
        )
    )
    [refused] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    assert refused.status == 403
    assert "international" in (refused.get("Warning") or "")
    assert not h.take_wan()
