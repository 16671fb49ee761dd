"""The B2BUA core without sockets: requests and responses mapped between the two legs.

A scripted phone (LAN, UDP) and a scripted provider (WAN, TLS) exchange messages with the core
through a fake clock; every assertion is about bytes the core asked to send.
"""

from __future__ import annotations

import base64
import secrets
import urllib.parse
from datetime import datetime

import pytest

from gateway.media.control import CloseCall, OpenStream, UpdateStream
from gateway.policy import PolicyEngine, PolicySettings
from gateway.policy.settings import AllowlistSettings
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.actions import MediaCommand, SecurityNotice, SendMessage
from gateway.sip.b2bua import B2bua, EdgeSettings, PairState
from gateway.sip.call_events import (
    AckMissing,
    CallAnswered,
    CallCancelled,
    CallEnded,
    CallEvent,
    CallRefused,
    MalformedMessage,
    MediaEnded,
    PlaintextDowngrade,
)
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings

PHONE_IP = "127.0.0.10"
PHONE = Peer(Side.LAN, "udp", (PHONE_IP, 5062))
PROVIDER = Peer(Side.WAN, "tls", ("127.0.0.30", 5061))


def settings(**media: object) -> EdgeSettings:
    return EdgeSettings(
        lan_address="127.0.0.20",
        lan_port=5060,
        wan_address="127.0.0.21",
        wan_port=5061,
        provider=PROVIDER,
        domain="provider.example",
        media=MediaPolicy(lan_address="127.0.0.20", wan_address="127.0.0.21", **media),  # type: ignore[arg-type]
        lan_media_ports=(40000, 40099),
        wan_media_ports=(41000, 41099),
        timers=TimerSettings(t1=0.5, t2=4.0, t4=5.0),
    )


class Harness:
    """The core plus what it sent, split per side."""

    def __init__(self, policy: PolicyEngine | None = None, **media: object) -> None:
        self.core = B2bua(settings(**media), policy=policy)
        self.now = 0.0
        #: Local wall-clock time handed to the core with every input (dial-plan windows).
        self.wall = datetime(2026, 11, 25, 10, 0)
        self.core.wan_connection_state(True, "TLSv1.3 verified", self.now, self.wall)
        self.lan: list[SipRequest | SipResponse] = []
        self.wan: list[SipRequest | SipResponse] = []
        self.wan_bytes: list[bytes] = []
        self.media: list[object] = []
        self.events: list[CallEvent] = []
        self.notices: list[SecurityNotice] = []
        self.collect()

    def collect(self) -> None:
        for action in self.core.actions():
            if isinstance(action, SendMessage):
                message = parse_message(action.data)
                if action.peer.side == Side.LAN:
                    self.lan.append(message)
                else:
                    assert action.peer.transport == "tls", "SIP toward the WAN must be TLS"
                    self.wan.append(message)
                    self.wan_bytes.append(action.data)
            elif isinstance(action, MediaCommand):
                self.media.append(action.command)
            elif isinstance(action, SecurityNotice):
                self.notices.append(action)
            else:
                self.events.append(action)

    def from_phone(self, data: bytes | str, peer: Peer = PHONE) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.core.receive_datagram(peer, raw, self.now, self.wall)
        self.collect()

    def from_provider(self, message: SipRequest | SipResponse) -> None:
        self.core.receive_message(PROVIDER, parse_message(bytes(message)), self.now, self.wall)
        self.collect()

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            deadline = self.core.get_timer()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now, self.wall)
            self.collect()
        self.now = target

    def take_lan(self) -> list[SipRequest | SipResponse]:
        out, self.lan = self.lan, []
        return out

    def take_wan(self) -> list[SipRequest | SipResponse]:
        out, self.wan = self.wan, []
        return out


def phone_sdp(port: int = 8000) -> str:
    return (
        "v=0\r\n"
        f"o=phone 1 1 IN IP4 {PHONE_IP}\r\n"
        "s=call\r\n"
        f"c=IN IP4 {PHONE_IP}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=sendrecv\r\n"
    )


def phone_request(
    method: str,
    *,
    cseq: int = 1,
    body: str = "",
    branch: str | None = None,
    call_id: str = "call-1@phone",
    to_tag: str | None = None,
    extra: str = "",
    ruri: str = "sip:+15551234567@127.0.0.20",
) -> str:
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    to = "<sip:+15551234567@127.0.0.20>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE_IP}:5062;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Desk 1001" <sip:1001@127.0.0.20>;tag=phonetag\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:1001@{PHONE_IP}:5062>\r\n"
        f"{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n{body}"


def provider_answer(offer: bytes, *, crypto: bool = True, proto: str = "RTP/SAVP") -> bytes:
    """The provider's SDP answer: accept the first offered crypto line with a key of its own."""
    text = offer.decode()
    lines = [line for line in text.split("\r\n") if line.startswith("a=crypto:")]
    first = lines[0].split()
    tag = first[0].split(":")[1]
    suite = first[1]
    key = base64.b64encode(secrets.token_bytes(30)).decode()
    body = (
        "v=0\r\no=prov 5 5 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        f"m=audio 30000 {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    if crypto:
        body += f"a=crypto:{tag} {suite} inline:{key}\r\n"
    return body.encode()


def respond(
    request: SipRequest,
    status: int,
    *,
    tag: str = "provtag",
    body: bytes = b"",
    contact: str = "<sip:pbx@127.0.0.30:5061;transport=tls>",
) -> SipResponse:
    response = make_response(request, status, to_tag=tag if status > 100 else None)
    if status < 300 and status > 100:
        response.add("Contact", contact)
    if body:
        response.add("Content-Type", "application/sdp")
        response.body = body
    return response


def only(messages: list[SipRequest | SipResponse], kind: type) -> list:
    return [m for m in messages if isinstance(m, kind)]


def establish_outbound(h: Harness) -> tuple[SipRequest, SipResponse]:
    """Phone calls out; provider answers with SRTP. Returns the WAN INVITE and phone's 200."""
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    invite = only(h.take_wan(), SipRequest)[0]
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
    ok = only(h.take_lan(), SipResponse)[-1]
    return invite, ok


# ---------------------------------------------------------------- outbound calls


def test_outbound_invite_becomes_an_srtp_offer_that_names_only_the_gateway() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    lan = h.take_lan()
    assert [m.status for m in only(lan, SipResponse)] == [100]
    [invite] = only(h.take_wan(), SipRequest)
    assert invite.method == "INVITE"
    assert str(invite.uri) == "sip:+15551234567@provider.example"
    assert invite.call_id != "call-1@phone"
    assert invite.from_.tag != "phonetag"
    assert invite.max_forwards == 69
    body = invite.body.decode()
    assert "m=audio 41" in body and "RTP/SAVP" in body
    assert body.count("a=crypto:") == 4
    assert "NULL" not in body
    # Nothing that identifies the LAN leaves on the WAN side.
    assert all(PHONE_IP.encode() not in data for data in h.wan_bytes)
    assert all(b"127.0.0.20" not in data for data in h.wan_bytes)


def test_provider_answer_reaches_phone_as_plain_rtp_and_media_is_opened() -> None:
    h = Harness()
    invite, ok = establish_outbound(h)
    assert ok.status == 200
    assert ok.to.tag and ok.call_id == "call-1@phone"
    body = ok.body.decode()
    assert "RTP/AVP" in body and "a=crypto" not in body
    assert "c=IN IP4 127.0.0.20" in body
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK" and ack.to.tag == "provtag" and ack.cseq.seq == invite.cseq.seq
    [opened] = [c for c in h.media if isinstance(c, OpenStream)]
    spec = opened.spec
    assert spec.phone_addr == (PHONE_IP, 8000)
    assert spec.provider_addr == ("127.0.0.30", 30000)
    assert spec.wan_tx is not None and spec.wan_rx is not None
    assert spec.wan_tx.master != spec.wan_rx.master
    assert [type(e) for e in h.events if isinstance(e, CallAnswered)] == [CallAnswered]


def test_bye_from_phone_ends_both_legs_and_closes_media() -> None:
    h = Harness()
    invite, ok = establish_outbound(h)
    h.take_wan()
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.from_phone(phone_request("BYE", cseq=2, to_tag=ok.to.tag))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [200]
    [bye] = only(h.take_wan(), SipRequest)
    assert bye.method == "BYE" and bye.call_id == invite.call_id
    assert bye.cseq.seq == invite.cseq.seq + 1
    assert any(isinstance(c, CloseCall) for c in h.media)


def test_bye_from_provider_reaches_the_phone() -> None:
    h = Harness()
    invite, ok = establish_outbound(h)
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    [ack] = only(h.take_wan(), SipRequest)
    bye = SipRequest("BYE", invite.contacts[0].uri)
    for name in ("Via",):
        bye.add(name, "SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKprovbye1")
    bye.add("Max-Forwards", "70")
    bye.add("From", str(ack.to))
    bye.add("To", str(ack.from_))
    bye.add("Call-ID", invite.call_id)
    bye.add("CSeq", "7 BYE")
    h.from_provider(bye)
    assert [m.status for m in only(h.take_wan(), SipResponse)] == [200]
    [phone_bye] = only(h.take_lan(), SipRequest)
    assert phone_bye.method == "BYE" and phone_bye.call_id == "call-1@phone"
    assert phone_bye.from_.tag == ok.to.tag and phone_bye.to.tag == "phonetag"


def test_answer_without_crypto_is_refused_with_488_and_the_phone_never_sees_200() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body, crypto=False)))
    statuses = [m.status for m in only(h.take_lan(), SipResponse)]
    assert statuses == [488]
    wan = only(h.take_wan(), SipRequest)
    assert [m.method for m in wan] == ["ACK", "BYE"]
    refusal = [e for e in h.events if isinstance(e, CallRefused)]
    assert refusal and "crypto" in refusal[0].reason


def test_plain_rtp_avp_answer_is_refused() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 183, body=provider_answer(invite.body, proto="RTP/AVP")))
    [refused] = only(h.take_lan(), SipResponse)
    assert refused.status == 488
    assert refused.get("Warning") is not None
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["CANCEL"]


def test_downgrade_setting_allows_plain_answer_and_is_logged() -> None:
    h = Harness(allow_plaintext=True)
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body, crypto=False)))
    assert 200 in [m.status for m in only(h.take_lan(), SipResponse)]
    assert any(isinstance(e, PlaintextDowngrade) for e in h.events)


def test_udp_retransmission_of_invite_is_absorbed() -> None:
    h = Harness()
    request = phone_request("INVITE", body=phone_sdp(), branch="z9hG4bKsame1")
    h.from_phone(request)
    h.from_phone(request)
    h.from_phone(request)
    assert len(only(h.take_wan(), SipRequest)) == 1


def test_2xx_is_retransmitted_to_a_udp_phone_until_ack() -> None:
    h = Harness()
    _, ok = establish_outbound(h)
    h.advance(0.5)
    h.advance(1.0)
    retransmitted = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    assert len(retransmitted) == 2
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.advance(10)
    assert not [m for m in only(h.take_lan(), SipResponse) if m.status == 200]


def test_nothing_is_retransmitted_over_tls() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    assert len(only(h.take_wan(), SipRequest)) == 1
    h.advance(40)
    assert not [m for m in only(h.take_wan(), SipRequest) if m.method == "INVITE"]
    # Timer B fired: the phone hears about it.
    assert 408 in [m.status for m in only(h.take_lan(), SipResponse)]


def test_cancel_of_a_ringing_call() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), branch="z9hG4bKcan1"))
    [invite] = only(h.take_wan(), SipRequest)
    h.from_provider(respond(invite, 180))
    assert 180 in [m.status for m in only(h.take_lan(), SipResponse)]
    h.from_phone(phone_request("CANCEL", branch="z9hG4bKcan1"))
    statuses = sorted(m.status for m in only(h.take_lan(), SipResponse))
    assert statuses == [200, 487]
    [cancel] = only(h.take_wan(), SipRequest)
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq.seq == invite.cseq.seq


def test_challenge_goes_to_the_phone_and_its_credentials_come_back_unchanged() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    challenge = respond(invite, 407)
    challenge.add(
        "Proxy-Authenticate", 'Digest realm="provider.example", nonce="abc", algorithm=MD5'
    )
    h.from_provider(challenge)
    [relayed] = [m for m in only(h.take_lan(), SipResponse) if m.status == 407]
    assert (
        relayed.get("Proxy-Authenticate")
        == 'Digest realm="provider.example", nonce="abc", algorithm=MD5'
    )
    # The WAN transaction ACKed the 407 itself (RFC 3261 section 17.1.1.3).
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["ACK"]
    credentials = 'Digest username="1001", realm="provider.example", nonce="abc", uri="sip:x", response="0123"'
    h.from_phone(
        phone_request(
            "INVITE", cseq=2, body=phone_sdp(), extra=f"Proxy-Authorization: {credentials}\r\n"
        )
    )
    [retry] = only(h.take_wan(), SipRequest)
    assert retry.get("Proxy-Authorization") == credentials
    assert retry.call_id == invite.call_id and retry.from_.tag == invite.from_.tag
    assert retry.cseq.seq == invite.cseq.seq + 1


def test_wan_down_answers_503_with_the_reason() -> None:
    h = Harness()
    h.core.wan_connection_state(
        False, "certificate verification failed: hostname mismatch", 0.0, h.wall
    )
    h.collect()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [refused] = [m for m in only(h.take_lan(), SipResponse) if m.status == 503]
    warning = refused.get("Warning") or ""
    assert "certificate verification failed" in warning
    assert not h.take_wan()


# ---------------------------------------------------------------- registrations


def register(h: Harness, *, cseq: int = 1, extra: str = "") -> None:
    h.from_phone(
        "REGISTER sip:127.0.0.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE_IP}:5062;branch=z9hG4bKreg{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@127.0.0.20>;tag=r1\r\nTo: <sip:1001@127.0.0.20>\r\n"
        f"Call-ID: reg-1@phone\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:1001@{PHONE_IP}:5062>\r\nExpires: 120\r\n"
        "User-Agent: LegacyPhone/1.0\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )


def test_register_is_relayed_with_an_opaque_contact_and_auth_passes_through() -> None:
    h = Harness()
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    assert upstream.method == "REGISTER"
    assert str(upstream.uri) == "sip:provider.example"
    [contact] = upstream.contacts
    token = contact.uri.user  # type: ignore[union-attr]
    assert token and token.startswith("gw") and "1001" not in token
    assert contact.uri.host == "127.0.0.21"  # type: ignore[union-attr]
    assert PHONE_IP.encode() not in bytes(upstream)
    challenge = make_response(upstream, 401, to_tag="x")
    challenge.add("WWW-Authenticate", 'Digest realm="provider.example", nonce="n1"')
    h.from_provider(challenge)
    [to_phone] = only(h.take_lan(), SipResponse)
    assert to_phone.status == 401 and to_phone.call_id == "reg-1@phone"
    assert to_phone.get("WWW-Authenticate") == 'Digest realm="provider.example", nonce="n1"'
    auth = 'Digest username="1001", realm="provider.example", nonce="n1", uri="sip:127.0.0.20", response="ff"'
    register(h, cseq=2, extra=f"Authorization: {auth}\r\n")
    [second] = only(h.take_wan(), SipRequest)
    assert second.get("Authorization") == auth
    assert second.call_id == upstream.call_id
    assert second.cseq.seq == upstream.cseq.seq + 1
    ok = make_response(second, 200, to_tag="x")
    ok.add("Contact", f"{second.get('Contact').split(';expires')[0]};expires=120")  # type: ignore[union-attr]
    h.from_provider(ok)
    [done] = only(h.take_lan(), SipResponse)
    assert done.status == 200
    assert f"sip:1001@{PHONE_IP}:5062" in (done.get("Contact") or "")
    assert len(h.core.registrations) == 1


def test_provider_call_reaches_the_registered_phone() -> None:
    h = Harness()
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    ok = make_response(upstream, 200, to_tag="x")
    ok.add("Contact", upstream.get("Contact") or "")
    h.from_provider(ok)
    h.take_lan()
    token = upstream.contacts[0].uri.user  # type: ignore[union-attr]
    key = base64.b64encode(secrets.token_bytes(30)).decode()
    offer = (
        "v=0\r\no=prov 1 1 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        "m=audio 30002 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
    )
    invite = SipRequest(
        "INVITE",
        parse_message(
            f"OPTIONS sip:{token}@127.0.0.21:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bKa\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: a\r\nCSeq: 1 OPTIONS\r\n\r\n".encode()
        ).uri,
    )
    invite.add("Via", "SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKinbound1")
    invite.add("Max-Forwards", "70")
    invite.add("From", "<sip:+4420123@provider.example>;tag=pf1")
    invite.add("To", "<sip:1001@provider.example>")
    invite.add("Call-ID", "inbound-1@provider")
    invite.add("CSeq", "1 INVITE")
    invite.add("Contact", "<sip:pbx@127.0.0.30:5061;transport=tls>")
    invite.add("Content-Type", "application/sdp")
    invite.body = offer.encode()
    h.from_provider(invite)
    [trying] = only(h.take_wan(), SipResponse)
    assert trying.status == 100
    [to_phone] = only(h.take_lan(), SipRequest)
    assert to_phone.method == "INVITE"
    assert str(to_phone.uri) == f"sip:1001@{PHONE_IP}:5062"
    phone_offer = to_phone.body.decode()
    assert "RTP/AVP" in phone_offer and "a=crypto" not in phone_offer
    answer = make_response(to_phone, 200, to_tag="phoneans")
    answer.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    answer.add("Content-Type", "application/sdp")
    answer.body = phone_sdp(8002).encode()
    h.from_phone(bytes(answer))
    wan = h.take_wan()
    [ok200] = [m for m in only(wan, SipResponse) if m.status == 200]
    body = ok200.body.decode()
    assert "RTP/SAVP" in body and body.count("a=crypto:1 AES_CM_128_HMAC_SHA1_80") == 1
    assert PHONE_IP not in body
    # The gateway ACKed the phone's 2xx itself.
    assert [m.method for m in only(h.take_lan(), SipRequest)] == ["ACK"]


def test_provider_offer_without_crypto_is_refused_488() -> None:
    h = Harness()
    register(h)
    [upstream] = only(h.take_wan(), SipRequest)
    ok = make_response(upstream, 200, to_tag="x")
    ok.add("Contact", upstream.get("Contact") or "")
    h.from_provider(ok)
    token = upstream.contacts[0].uri.user  # type: ignore[union-attr]
    raw = (
        f"INVITE sip:{token}@127.0.0.21:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKplain1\r\nMax-Forwards: 70\r\n"
        "From: <sip:+4420123@provider.example>;tag=pf2\r\nTo: <sip:1001@provider.example>\r\n"
        "Call-ID: inbound-2@provider\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:pbx@127.0.0.30:5061;transport=tls>\r\nContent-Type: application/sdp\r\n\r\n"
        "v=0\r\no=prov 1 1 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        "m=audio 30002 RTP/AVP 0\r\n"
    )
    h.from_provider(parse_message(raw.encode()))
    statuses = [m.status for m in only(h.take_wan(), SipResponse)]
    assert 488 in statuses
    assert not only(h.take_lan(), SipRequest)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (phone_request("INVITE").replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS"), 400),
        (phone_request("FOO"), 501),
        (phone_request("INVITE", extra="Require: nosuchext\r\n"), 420),
        (phone_request("OPTIONS", ruri="nobodyKnowsThisScheme:x"), 416),
        (phone_request("OPTIONS").replace("Max-Forwards: 70", "Max-Forwards: 0"), 483),
    ],
)
def test_bad_requests_get_a_clear_answer(raw: str, status: int) -> None:
    h = Harness()
    h.from_phone(raw)
    responses = only(h.take_lan(), SipResponse)
    assert [r.status for r in responses] == [status]
    assert not h.take_wan()


def test_garbage_is_dropped_and_counted_without_disturbing_a_call() -> None:
    h = Harness()
    _, ok = establish_outbound(h)
    for junk in (b"\x00\xff" * 100, b"SIP/2.0 200\r\n\r\n", b"INVITE\r\n\r\n", b"A" * 70000):
        h.from_phone(junk)
    assert h.core.counters.get("sip_malformed_lan", 0) >= 3
    # One event per refused message, naming the source (the log line an operator reads).
    malformed = [e for e in h.events if isinstance(e, MalformedMessage)]
    assert len(malformed) >= 3
    assert all(e.source == f"{PHONE_IP}:5062" and e.side == "lan" for e in malformed)
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.from_phone(phone_request("BYE", cseq=2, to_tag=ok.to.tag))
    assert 200 in [m.status for m in only(h.take_lan(), SipResponse)]
    assert "BYE" in [m.method for m in only(h.take_wan(), SipRequest)]


# ---------------------------------------------------------------- policy


def policy_harness() -> Harness:
    settings = PolicySettings(allowlist=AllowlistSettings(lan=("127.0.0.0/8",)))
    return Harness(policy=PolicyEngine(settings))


def test_international_call_is_refused_403_naming_the_rule() -> None:
    h = policy_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), ruri="sip:011442079460000@127.0.0.20"))
    [refused] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    assert refused.status == 403
    assert "international" in (refused.get("Warning") or "")
    assert not h.take_wan()
    notices = [a for a in h.notices if isinstance(a, SecurityNotice)]
    assert [n.event.rule for n in notices] == ["dialplan.no-international"]


def test_emergency_call_goes_through_and_a_national_number_becomes_e164() -> None:
    h = policy_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), ruri="sip:911@127.0.0.20"))
    [invite] = only(h.take_wan(), SipRequest)
    assert str(invite.uri) == "sip:911@provider.example"
    h.from_phone(
        phone_request(
            "INVITE", call_id="call-2", body=phone_sdp(), ruri="sip:2125550123@127.0.0.20"
        )
    )
    [invite2] = only(h.take_wan(), SipRequest)
    assert str(invite2.uri) == "sip:+12125550123@provider.example"


def test_scanner_user_agent_is_dropped_silently_and_banned() -> None:
    h = policy_harness()
    h.from_phone(phone_request("OPTIONS", extra="User-Agent: friendly-scanner\r\n"))
    assert not h.take_lan() and not h.take_wan()
    # The ban holds for the next, innocent-looking request from that address.
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    assert not h.take_lan() and not h.take_wan()
    assert [b.address for b in h.core.policy.bans(h.now)] == [PHONE_IP]  # type: ignore[union-attr]


def test_calls_of_unregistered_phones_behind_one_address_are_not_enumeration() -> None:
    """Phones that never REGISTER (static set-ups) behind one address: a dozen calls whose
    ACKs and BYEs name a dozen different users. In-dialog requests belong to calls the
    gateway let through; counted as unknown users, the tenth phone's ACK banned the site."""
    h = policy_harness()
    for n in range(12):
        call_id = f"call-{n}@phone"

        def as_phone(text: str, n: int = n) -> str:
            return text.replace("sip:1001@", f"sip:1{n:03d}@")

        h.from_phone(as_phone(phone_request("INVITE", body=phone_sdp(), call_id=call_id)))
        [invite] = only(h.take_wan(), SipRequest)
        h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
        ok = only(h.take_lan(), SipResponse)[-1]
        assert ok.status == 200
        h.from_phone(as_phone(phone_request("ACK", call_id=call_id, to_tag=ok.to.tag)))
        h.from_phone(as_phone(phone_request("BYE", cseq=2, call_id=call_id, to_tag=ok.to.tag)))
        assert [m.method for m in only(h.take_wan(), SipRequest)] == ["ACK", "BYE"]
        h.advance(3.0)
    assert h.core.policy.bans(h.now) == []  # type: ignore[union-attr]


def test_source_outside_the_lan_allowlist_gets_nothing() -> None:
    settings = PolicySettings(allowlist=AllowlistSettings(lan=("192.0.2.0/24",)))
    h = Harness(policy=PolicyEngine(settings))
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    assert not h.take_lan() and not h.take_wan()
    assert h.core.counters.get("policy_refused_lan") == 1


# ---------------------------------------------------------------- in-dialog requests


def provider_in_dialog(
    invite: SipRequest,
    method: str,
    cseq: int,
    body: bytes = b"",
    extra: dict[str, str] | None = None,
) -> SipRequest:
    """A request from the provider inside the dialog the gateway's WAN INVITE created."""
    request = SipRequest(method, invite.contacts[0].uri)
    request.add("Via", f"SIP/2.0/TLS 127.0.0.30:5061;branch=z9hG4bKprov{method}{cseq}")
    request.add("Max-Forwards", "70")
    request.add("From", str(invite.to.with_tag("provtag")))
    request.add("To", str(invite.from_))
    request.add("Call-ID", invite.call_id)
    request.add("CSeq", f"{cseq} {method}")
    request.add("Contact", "<sip:pbx@127.0.0.30:5061;transport=tls>")
    for name, value in (extra or {}).items():
        request.add(name, value)
    if body:
        request.add("Content-Type", "application/sdp")
        request.body = body
    return request


def confirmed_call(h: Harness) -> tuple[SipRequest, SipResponse]:
    invite, ok = establish_outbound(h)
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.take_wan()
    h.take_lan()
    h.media.clear()
    return invite, ok


def test_hold_reinvite_from_phone_reaches_the_provider_as_srtp_with_the_same_key() -> None:
    h = Harness()
    invite, ok = confirmed_call(h)
    hold = phone_sdp().replace("a=sendrecv", "a=sendonly")
    h.from_phone(phone_request("INVITE", cseq=2, body=hold, to_tag=ok.to.tag))
    [reinvite] = only(h.take_wan(), SipRequest)
    assert reinvite.method == "INVITE" and reinvite.call_id == invite.call_id
    assert reinvite.cseq.seq == invite.cseq.seq + 1
    assert reinvite.to.tag == "provtag"
    body = reinvite.body.decode()
    assert "a=sendonly" in body and "RTP/SAVP" in body
    original_keys = [
        line for line in invite.body.decode().split("\r\n") if line.startswith("a=crypto")
    ]
    assert [line for line in body.split("\r\n") if line.startswith("a=crypto")] == original_keys
    answer = provider_answer(reinvite.body).replace(
        b"RTP/SAVP 0 101\r\n", b"RTP/SAVP 0 101\r\na=recvonly\r\n"
    )
    h.from_provider(respond(reinvite, 200, body=answer))
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK" and ack.cseq.seq == reinvite.cseq.seq
    [to_phone] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    assert "a=recvonly" in to_phone.body.decode() and "a=crypto" not in to_phone.body.decode()


def test_provider_rekey_on_resume_starts_a_new_inbound_srtp_context() -> None:
    h = Harness()
    invite, ok = establish_outbound(h)
    [opened] = [c for c in h.media if isinstance(c, OpenStream)]
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.take_wan()
    h.media.clear()
    offer = provider_answer(invite.body)  # fresh random key, same address
    h.from_provider(provider_in_dialog(invite, "INVITE", 10, offer))
    [to_phone] = only(h.take_lan(), SipRequest)
    assert to_phone.method == "INVITE" and "a=crypto" not in to_phone.body.decode()
    answer = make_response(to_phone, 200)
    answer.add("Contact", f"<sip:1001@{PHONE_IP}:5062>")
    answer.add("Content-Type", "application/sdp")
    answer.body = phone_sdp().encode()
    h.from_phone(bytes(answer))
    [ok200] = [m for m in only(h.take_wan(), SipResponse) if m.status == 200]
    assert ok200.body.decode().count("a=crypto:1 ") == 1
    [update] = [c for c in h.media if isinstance(c, UpdateStream)]
    assert update.spec.wan_rx is not None and opened.spec.wan_rx is not None
    assert update.spec.wan_rx.master != opened.spec.wan_rx.master
    assert update.spec.wan_rx.generation > opened.spec.wan_rx.generation
    # The provider's re-offer came with a new key of its own: ours changes too (a new
    # receiver would not know our rollover counter, docs of gateway.sdp.negotiation).
    assert update.spec.wan_tx is not None and opened.spec.wan_tx is not None
    assert update.spec.wan_tx.generation > opened.spec.wan_tx.generation


def test_info_and_update_are_carried_in_both_directions() -> None:
    h = Harness()
    invite, ok = confirmed_call(h)
    h.from_phone(
        phone_request(
            "INFO", cseq=2, to_tag=ok.to.tag, extra="Content-Type: application/dtmf-relay\r\n"
        ).replace("Content-Length: 0\r\n\r\n", "Content-Length: 10\r\n\r\nSignal=5\r\n")
    )
    [info] = only(h.take_wan(), SipRequest)
    assert info.method == "INFO" and info.body == b"Signal=5\r\n"
    assert info.get("Content-Type") == "application/dtmf-relay"
    h.from_provider(respond(info, 200))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [200]
    h.from_provider(provider_in_dialog(invite, "UPDATE", 11))
    [update] = only(h.take_lan(), SipRequest)
    assert update.method == "UPDATE" and update.call_id == "call-1@phone"
    h.from_phone(bytes(make_response(update, 200)))
    assert [m.status for m in only(h.take_wan(), SipResponse)] == [200]


def test_blind_transfer_refer_is_rehomed_and_its_notify_comes_back() -> None:
    h = Harness()
    invite, ok = confirmed_call(h)
    h.from_phone(
        phone_request(
            "REFER",
            cseq=2,
            to_tag=ok.to.tag,
            extra="Refer-To: <sip:2002@127.0.0.20>\r\nReferred-By: <sip:1001@127.0.0.20>\r\n",
        )
    )
    [refer] = only(h.take_wan(), SipRequest)
    assert refer.method == "REFER"
    assert refer.get("Refer-To") == "<sip:2002@provider.example>"
    h.from_provider(respond(refer, 202))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [202]
    notify = provider_in_dialog(
        invite,
        "NOTIFY",
        12,
        extra={"Event": "refer", "Subscription-State": "terminated;reason=noresource"},
    )
    notify.add("Content-Type", "message/sipfrag")
    notify.body = b"SIP/2.0 200 OK\r\n"
    h.from_provider(notify)
    [to_phone] = only(h.take_lan(), SipRequest)
    assert to_phone.method == "NOTIFY" and to_phone.get("Event") == "refer"
    assert to_phone.body == b"SIP/2.0 200 OK\r\n"


def test_subscribe_for_message_waiting_and_its_notify() -> None:
    h = Harness()
    h.from_phone(
        phone_request(
            "SUBSCRIBE",
            ruri="sip:1001@127.0.0.20",
            extra="Event: message-summary\r\nExpires: 3600\r\n",
        )
    )
    [subscribe] = only(h.take_wan(), SipRequest)
    assert subscribe.method == "SUBSCRIBE" and subscribe.get("Event") == "message-summary"
    h.from_provider(respond(subscribe, 200))
    [ok] = only(h.take_lan(), SipResponse)
    assert ok.status == 200 and ok.to.tag
    notify = provider_in_dialog(
        subscribe,
        "NOTIFY",
        1,
        extra={"Event": "message-summary", "Subscription-State": "active;expires=3600"},
    )
    notify.add("Content-Type", "application/simple-message-summary")
    notify.body = b"Messages-Waiting: yes\r\n"
    h.from_provider(notify)
    [to_phone] = only(h.take_lan(), SipRequest)
    assert to_phone.method == "NOTIFY" and to_phone.body == b"Messages-Waiting: yes\r\n"
    assert to_phone.to.tag == "phonetag" and to_phone.from_.tag == ok.to.tag


def test_message_outside_a_dialog_goes_upstream_and_its_answer_comes_back() -> None:
    h = Harness()
    raw = phone_request(
        "MESSAGE", ruri="sip:2002@127.0.0.20", extra="Content-Type: text/plain\r\n"
    ).replace("Content-Length: 0\r\n\r\n", "Content-Length: 5\r\n\r\nhello")
    h.from_phone(raw)
    [message] = only(h.take_wan(), SipRequest)
    assert str(message.uri) == "sip:2002@provider.example" and message.body == b"hello"
    h.from_provider(respond(message, 202))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [202]


def test_reliable_provisional_with_100rel_and_the_phones_prack() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), extra="Supported: 100rel\r\n"))
    [invite] = only(h.take_wan(), SipRequest)
    assert "100rel" in invite.get_all("Supported")
    progress = respond(invite, 183, body=provider_answer(invite.body))
    progress.add("Require", "100rel")
    progress.add("RSeq", "7")
    h.from_provider(progress)
    [to_phone] = [m for m in only(h.take_lan(), SipResponse) if m.status == 183]
    assert to_phone.get("RSeq") == "7" and to_phone.get("Require") == "100rel"
    assert "a=crypto" not in to_phone.body.decode()
    h.from_phone(
        phone_request("PRACK", cseq=2, to_tag=to_phone.to.tag, extra="RAck: 7 1 INVITE\r\n")
    )
    [prack] = only(h.take_wan(), SipRequest)
    assert prack.method == "PRACK" and prack.get("RAck") == f"7 {invite.cseq.seq} INVITE"
    assert prack.to.tag == "provtag"
    h.from_provider(respond(prack, 200))
    assert 200 in [m.status for m in only(h.take_lan(), SipResponse) if m.cseq.method == "PRACK"]


def test_gateway_pracks_for_a_phone_without_100rel() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    progress = respond(invite, 180)
    progress.add("Require", "100rel")
    progress.add("RSeq", "1")
    h.from_provider(progress)
    [prack] = only(h.take_wan(), SipRequest)
    assert prack.method == "PRACK" and prack.get("RAck") == f"1 {invite.cseq.seq} INVITE"
    [ringing] = [m for m in only(h.take_lan(), SipResponse) if m.status == 180]
    assert ringing.get("Require") is None and ringing.get("RSeq") is None


def test_late_offer_invite_without_sdp() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE"))
    [invite] = only(h.take_wan(), SipRequest)
    assert invite.body == b""
    key = base64.b64encode(secrets.token_bytes(30)).decode()
    offer = (
        "v=0\r\no=prov 1 1 IN IP4 127.0.0.30\r\ns=-\r\nc=IN IP4 127.0.0.30\r\nt=0 0\r\n"
        "m=audio 30004 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
    ).encode()
    h.from_provider(respond(invite, 200, body=offer))
    assert not only(h.take_wan(), SipRequest)  # the ACK waits for the phone's answer
    [ok] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    assert "RTP/AVP" in ok.body.decode() and "a=crypto" not in ok.body.decode()
    h.from_phone(phone_request("ACK", cseq=1, to_tag=ok.to.tag, body=phone_sdp()))
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK"
    assert "a=crypto:3 AES_CM_128_HMAC_SHA1_80" in ack.body.decode()


def test_same_invite_by_another_path_is_a_loop() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), branch="z9hG4bKpath1"))
    h.take_lan()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), branch="z9hG4bKpath2"))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [482]
    assert len(only(h.take_wan(), SipRequest)) == 1


def test_garbage_sdp_in_the_answer_fails_only_that_call_cleanly() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=b"this is not sdp\r\n"))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [488]
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["ACK", "BYE"]
    assert h.core.active_calls == []


def test_attended_transfer_replaces_is_mapped_to_the_other_legs_dialog() -> None:
    h = Harness()
    invite, ok = confirmed_call(h)
    replaces = f"call-1@phone;to-tag={ok.to.tag};from-tag=phonetag"
    escaped = urllib.parse.quote(replaces, safe="")
    h.from_phone(
        phone_request(
            "REFER",
            cseq=2,
            to_tag=ok.to.tag,
            extra=f"Refer-To: <sip:2002@127.0.0.20?Replaces={escaped}>\r\n",
        )
    )
    [refer] = only(h.take_wan(), SipRequest)
    refer_to = refer.get("Refer-To") or ""
    assert refer_to.startswith("<sip:2002@provider.example?Replaces=")
    mapped = urllib.parse.unquote(refer_to.split("Replaces=", 1)[1].rstrip(">"))
    assert mapped == f"{invite.call_id};to-tag=provtag;from-tag={invite.from_.tag}"
    assert "call-1@phone" not in bytes(refer).decode()


def test_udp_requests_get_received_and_rport_in_their_via() -> None:
    h = Harness()
    request = phone_request("OPTIONS", ruri="sip:127.0.0.20").replace(
        f"Via: SIP/2.0/UDP {PHONE_IP}:5062", "Via: SIP/2.0/UDP 192.0.2.9:5062"
    )
    h.from_phone(request)
    [response] = only(h.take_lan(), SipResponse)
    assert response.top_via.received == PHONE_IP
    assert response.top_via.rport == 5062


def test_pipelined_register_guesses_count_as_failures_and_get_banned() -> None:
    h = policy_harness()
    register(h, cseq=1)
    for cseq in range(2, 8):
        register(
            h, cseq=cseq, extra=f'Authorization: Digest username="1001", response="g{cseq}"\r\n'
        )
    relayed = only(h.take_wan(), SipRequest)
    # The unauthenticated REGISTER and 4 guesses go up; the 5th guess bans the source and
    # goes no further, nor does anything after it.
    assert len(relayed) == 5
    assert sum(1 for r in relayed if r.has("Authorization")) == 4
    assert [b.rule for b in h.core.policy.bans(h.now)] == ["auth.failures"]  # type: ignore[union-attr]


def test_a_phone_that_never_acks_the_2xx_gets_the_call_ended_on_both_sides() -> None:
    h = Harness()
    invite, _ = establish_outbound(h)
    h.take_wan()
    h.advance(64 * 0.5 + 1)  # §13.3.1.4: 64*T1 without an ACK
    lan = h.take_lan()
    retransmitted = [m for m in only(lan, SipResponse) if m.status == 200]
    assert len(retransmitted) >= 6
    byes = only(lan, SipRequest)  # the BYE and its UDP retransmissions (Timer E)
    assert byes and {m.method for m in byes} == {"BYE"}
    assert len({m.top_via.branch for m in byes}) == 1
    [bye] = only(h.take_wan(), SipRequest)
    assert bye.method == "BYE" and bye.call_id == invite.call_id
    assert any(isinstance(e, AckMissing) for e in h.events)
    assert h.core.active_calls == []


# ------------------------------------------------ forking, media problems, hang-up of all calls


def test_forked_early_dialogs_each_get_a_caller_tag_and_the_losing_answer_is_ended() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    answer = provider_answer(invite.body)
    h.from_provider(respond(invite, 180, tag="fork-a", body=answer))
    h.from_provider(respond(invite, 180, tag="fork-b", body=answer))
    ringing = [m for m in only(h.take_lan(), SipResponse) if m.status == 180]
    assert len(ringing) == 2
    tag_a, tag_b = ringing[0].to.tag, ringing[1].to.tag
    assert tag_a and tag_b and tag_a != tag_b  # one caller-side dialog per fork (§12.1.1)
    h.from_provider(respond(invite, 200, tag="fork-b", body=answer))
    [ok] = [m for m in only(h.take_lan(), SipResponse) if m.status == 200]
    assert ok.to.tag == tag_b
    [ack_b] = only(h.take_wan(), SipRequest)
    assert ack_b.method == "ACK" and ack_b.to.tag == "fork-b"
    # The other fork answers too: ACKed, then ended with BYE; the phone hears nothing of it.
    h.from_provider(respond(invite, 200, tag="fork-a", body=answer))
    late = only(h.take_wan(), SipRequest)
    assert [(m.method, m.to.tag) for m in late] == [("ACK", "fork-a"), ("BYE", "fork-a")]
    assert only(h.take_lan(), SipResponse) == []
    assert [p.state for p in h.core.active_calls] == [PairState.CONFIRMED]


def test_media_problem_on_a_confirmed_call_ends_both_legs_with_the_reason() -> None:
    h = Harness()
    establish_outbound(h)
    h.take_wan()
    [pair] = h.core.active_calls
    h.now = 12.5
    h.core.media_problem(pair.key, "media worker lost", h.now, h.wall)
    h.collect()
    [lan_bye] = only(h.take_lan(), SipRequest)
    [wan_bye] = only(h.take_wan(), SipRequest)
    assert lan_bye.method == wan_bye.method == "BYE"
    assert "media worker lost" in (wan_bye.get("Reason") or "")
    assert [e.reason for e in h.events if isinstance(e, MediaEnded)] == ["media worker lost"]
    [ended] = [e for e in h.events if isinstance(e, CallEnded)]
    assert ended.reason == "media worker lost" and ended.duration == 12.5
    assert h.core.active_calls == []
    assert any(isinstance(c, CloseCall) for c in h.media)


def test_media_problem_on_a_ringing_call_fails_the_caller_and_cancels_the_provider() -> None:
    h = Harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 180))
    h.take_lan()
    [pair] = h.core.active_calls
    h.core.media_problem(pair.key, "could not bind a media port", h.now, h.wall)
    h.collect()
    [failed] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 300]
    assert failed.status == 503
    assert "media unavailable: could not bind a media port" in (failed.get("Warning") or "")
    [cancel] = only(h.take_wan(), SipRequest)
    assert cancel.method == "CANCEL" and cancel.cseq.seq == invite.cseq.seq
    # The provider's 487 closes the pair.
    h.from_provider(respond(invite, 487))
    assert h.core.active_calls == []


def test_hang_up_all_ends_confirmed_calls_with_bye_and_fails_ringing_ones() -> None:
    h = Harness()
    establish_outbound(h)
    h.take_wan()
    h.from_phone(phone_request("INVITE", body=phone_sdp(8002), call_id="call-2@phone", cseq=7))
    [second] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.core.hang_up_all(h.now, h.wall, "gateway shutting down")
    h.collect()
    lan = h.take_lan()
    assert [m.method for m in only(lan, SipRequest)] == ["BYE"]
    assert [m.status for m in only(lan, SipResponse)] == [503]
    # No provisional came for the second call yet: its CANCEL waits for one (§9.1).
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["BYE"]
    h.from_provider(respond(second, 100))
    [cancel] = only(h.take_wan(), SipRequest)
    assert cancel.method == "CANCEL" and cancel.call_id == second.call_id
    h.from_provider(respond(second, 487))
    assert h.core.active_calls == []


def test_cancel_crossing_the_providers_answer_acks_and_ends_the_provider_leg() -> None:
    h = Harness()
    branch = "z9hG4bKcrossing"
    h.from_phone(phone_request("INVITE", body=phone_sdp(), branch=branch))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_phone(phone_request("CANCEL", cseq=1, branch=branch))
    assert sorted(m.status for m in only(h.take_lan(), SipResponse)) == [200, 487]
    assert only(h.take_wan(), SipRequest) == []  # no provisional yet: no CANCEL either
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
    late = only(h.take_wan(), SipRequest)
    assert [m.method for m in late] == ["ACK", "BYE"]
    assert only(h.take_lan(), SipResponse) == []  # the phone already had its 487
    assert h.core.active_calls == []
    assert any(isinstance(e, CallCancelled) for e in h.events)


def test_a_call_ended_by_the_core_is_charged_at_the_time_given() -> None:
    """The core keeps no clock: the caps' running totals use the time of the input that ended
    the call (a cached time once charged calls ended by a media problem too little)."""
    h = policy_harness()
    h.from_phone(phone_request("INVITE", body=phone_sdp(), ruri="sip:2025550123@127.0.0.20"))
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
    [pair] = h.core.active_calls
    h.now = 600.0  # ten minutes later, with no message in between
    h.core.media_problem(pair.key, "no media in either direction", h.now, h.wall)
    h.collect()
    policy = h.core.policy
    assert policy is not None
    assert policy.minutes_today("1001", h.now) == pytest.approx(10.0)


def test_a_malformed_request_gets_a_400_saying_why_and_an_event_with_its_call_id() -> None:
    h = Harness()
    bad = phone_request("OPTIONS", call_id="bad-1@phone").replace(
        "Max-Forwards: 70", "Max-Forwards: seventy"
    )
    h.from_phone(bad)
    [answer] = only(h.take_lan(), SipResponse)
    assert answer.status == 400 and "Max-Forwards" in (answer.get("Warning") or "")
    [event] = [e for e in h.events if isinstance(e, MalformedMessage)]
    assert (event.call_id, event.status) == ("bad-1@phone", 400)
    assert "Max-Forwards" in event.reason


def test_a_cancelled_call_whose_callee_never_answers_is_given_up_after_64_t1() -> None:
    """RFC 3261 §9.1: the CANCEL went after a provisional, and the provider never sends the
    final response: after 64*T1 the INVITE is over and the call leaves no state behind
    (found by the B2BUA fuzzer: such a call was kept forever)."""
    h = Harness()
    branch = "z9hG4bKsilent"
    h.from_phone(phone_request("INVITE", body=phone_sdp(), branch=branch))
    [invite] = only(h.take_wan(), SipRequest)
    h.from_provider(respond(invite, 180))
    h.from_phone(phone_request("CANCEL", cseq=1, branch=branch))
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["CANCEL"]
    h.from_provider(respond(invite, 183))  # more ringing does not restart the wait
    assert h.core.active_calls != []
    h.advance(64 * 0.5 + 1)
    assert h.core.active_calls == []
    assert h.core.get_timer() is None or h.core.get_timer() > h.now  # nothing left due


def test_a_reinvite_left_unanswered_when_the_call_ends_leaves_no_state() -> None:
    """The provider answers a re-INVITE with 100 only, and the phone hangs up: the re-INVITE's
    transaction is given up after 64*T1 like a cancelled INVITE (found by the B2BUA fuzzer:
    its relay stayed forever)."""
    h = Harness()
    _, ok = confirmed_call(h)
    hold = phone_sdp().replace("a=sendrecv", "a=sendonly")
    h.from_phone(phone_request("INVITE", cseq=2, body=hold, to_tag=ok.to.tag))
    [reinvite] = only(h.take_wan(), SipRequest)
    h.from_provider(respond(reinvite, 100))
    h.from_phone(phone_request("BYE", cseq=3, to_tag=ok.to.tag))
    assert h.core.active_calls == []
    h.advance(64 * 0.5 + 1)
    assert h.core._out.relays == {}
