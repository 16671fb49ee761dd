"""What real phones and ATAs send, and what the gateway answers: one test per quirk.

Each message is written by hand after the vendor's usual header order, header forms, Expires
style and Via habits (Cisco/Linksys SPA, Grandstream HT/GXP, Polycom SoundPoint, Yealink, Snom,
Panasonic KX-UT, Avaya 96xx in SIP mode, baresip 1.0), not captured from a device. The gateway
is liberal where the meaning is unambiguous (RFC 3261 §7.3.1 whitespace and case, compact forms
§7.3.3, repeated identical parameters) and still refuses, with a 400 whose reason phrase says
what is wrong, anything that could mean two things. Every test feeds the sans-IO core and
asserts the bytes it asked to send, and where to.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.actions import SendMessage
from gateway.sip.b2bua import B2bua, EdgeSettings
from gateway.sip.call_events import PhoneRegistered
from gateway.sip.errors import SipParseError
from gateway.sip.keepalive import is_keepalive_notify
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings
from gateway.sip.uri import SipUri

GW = "127.0.4.20"  # the gateway's LAN address
GW_WAN = "127.0.4.21"
PROVIDER = Peer(Side.WAN, "tls", ("127.0.4.30", 5061))

SDP = (
    "v=0\r\n"
    "o=- 8000 8000 IN IP4 {ip}\r\n"
    "s=SIP Call\r\n"
    "c=IN IP4 {ip}\r\n"
    "t=0 0\r\n"
    "m=audio 16384 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=sendrecv\r\n"
)


class Site:
    """The core between scripted phones and a scripted provider, with a fake clock."""

    def __init__(self) -> None:
        self.core = B2bua(
            EdgeSettings(
                lan_address=GW,
                lan_port=5060,
                wan_address=GW_WAN,
                wan_port=5061,
                provider=PROVIDER,
                domain="provider.example",
                media=MediaPolicy(lan_address=GW, wan_address=GW_WAN),
                lan_media_ports=(40000, 40099),
                wan_media_ports=(41000, 41099),
                timers=TimerSettings(t1=0.5, t2=4.0, t4=5.0),
            )
        )
        self.now = 0.0
        self.wall = datetime(2026, 12, 4, 10, 0)
        self.core.wan_connection_state(True, "TLSv1.3 verified", self.now, self.wall)
        #: (destination, message) the core sent, per side.
        self.lan: list[tuple[Peer, SipRequest | SipResponse]] = []
        self.wan: list[SipRequest | SipResponse] = []
        self.registered: list[PhoneRegistered] = []
        self.collect()

    def collect(self) -> None:
        for action in self.core.actions():
            if isinstance(action, SendMessage):
                try:
                    message = parse_message(action.data)
                except SipParseError as error:
                    # A 400 copies the phone's broken header (§8.2.6.2): read what split.
                    assert isinstance(error.partial, SipRequest | SipResponse)
                    message = error.partial
                if action.peer.side == Side.LAN:
                    self.lan.append((action.peer, message))
                else:
                    self.wan.append(message)
            elif isinstance(action, PhoneRegistered):
                self.registered.append(action)

    def from_phone(self, text: str, source: tuple[str, int]) -> None:
        data = text.replace("\n", "\r\n").encode()
        self.core.receive_datagram(Peer(Side.LAN, "udp", source), data, self.now, self.wall)
        self.collect()

    def from_provider(self, message: SipRequest | SipResponse) -> None:
        self.core.receive_message(PROVIDER, parse_message(bytes(message)), self.now, self.wall)
        self.collect()

    def take_lan(self) -> list[tuple[Peer, SipRequest | SipResponse]]:
        out, self.lan = self.lan, []
        return out

    def take_wan(self) -> list[SipRequest | SipResponse]:
        out, self.wan = self.wan, []
        return out

    def answers(self) -> list[SipResponse]:
        return [m for _, m in self.take_lan() if isinstance(m, SipResponse)]

    def upstream(self) -> SipRequest:
        """The one request the core sent to the provider since the last look."""
        (request,) = [m for m in self.take_wan() if isinstance(m, SipRequest)]
        return request

    def register(
        self, text: str, source: tuple[str, int], granted: int | None = None
    ) -> tuple[SipRequest, SipResponse]:
        """A phone's REGISTER through the gateway; the provider grants what was asked (or
        ``granted``). Returns the REGISTER sent upstream and the final answer to the phone."""
        self.from_phone(text, source)
        upstream = self.upstream()
        ok = make_response(upstream, 200, to_tag="prov-reg")
        (contact,) = upstream.contacts
        if granted is not None:
            contact.set_param("expires", str(granted))
        ok.add("Contact", str(contact))
        self.from_provider(ok)
        answers = [m for m in self.answers() if m.status >= 200]
        assert len(answers) == 1, answers
        return upstream, answers[0]

    def call_to_phone(self, token: str) -> tuple[Peer, SipRequest]:
        """The provider calls a registered phone's binding; where the gateway rings it."""
        raw = (
            f"INVITE sip:{token}@{GW_WAN}:5061;transport=tls SIP/2.0\r\n"
            "Via: SIP/2.0/TLS 127.0.4.30:5061;branch=z9hG4bKprov1\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:+442071234567@provider.example>;tag=pf1\r\n"
            "To: <sip:1001@provider.example>\r\n"
            "Call-ID: inbound-1@provider\r\n"
            "CSeq: 1 INVITE\r\n"
            "Contact: <sip:pbx@127.0.4.30:5061;transport=tls>\r\n"
            "Content-Type: application/sdp\r\n\r\n"
            "v=0\r\no=prov 1 1 IN IP4 127.0.4.30\r\ns=-\r\nc=IN IP4 127.0.4.30\r\nt=0 0\r\n"
            "m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
            "inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e\r\n"
        )
        self.from_provider(parse_message(raw.encode()))
        (ring,) = [(p, m) for p, m in self.take_lan() if isinstance(m, SipRequest)]
        assert ring[1].method == "INVITE"
        return ring


def token_of(upstream: SipRequest) -> str:
    (contact,) = upstream.contacts
    assert isinstance(contact.uri, SipUri) and contact.uri.user
    return contact.uri.user


def upstream_expires(upstream: SipRequest) -> int:
    (contact,) = upstream.contacts
    value = contact.param("expires")
    assert value is not None
    return int(value)


def invite_with_sdp(head: str, ip: str) -> str:
    body = SDP.format(ip=ip).replace("\r\n", "\n")
    return head.replace("@LENGTH@", str(len(body.replace("\n", "\r\n")))) + "\n" + body


# ---------------------------------------------------------------------------------------------
# Route headers: the gateway is the phones' outbound proxy


def test_route_with_lr_twice_is_consumed() -> None:
    """baresip 1.0 with ``outbound="sip:GW;lr"`` writes ``;lr;lr``: same flag twice, same
    meaning. The REGISTER registers; the Route naming the gateway goes no further."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW}:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:44123;branch=z9hG4bK9bd2c6a3a1e77a71;rport
Contact: <sip:2001-0x5591c0a8f0@127.0.4.10:44123>;expires=60
Max-Forwards: 70
Route: <sip:{GW}:5060;lr;lr>
To: <sip:2001@{GW}:5060>
From: <sip:2001@{GW}:5060>;tag=6f0b2e3c4ddc0a1a
Call-ID: 2a0f8a95d1e0f0c3
CSeq: 12345 REGISTER
User-Agent: baresip v1.0.0 (x86_64/linux)
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE
Supported: replaces,norefersub
Content-Length: 0

""",
        ("127.0.4.10", 44123),
    )
    assert answer.status == 200
    assert not upstream.has("Route")
    assert GW not in bytes(upstream).decode()


@pytest.mark.parametrize(
    "route",
    [
        f"<sip:{GW};lr>",  # LAN address, no port
        f"<sip:{GW}:5060;lr>",  # LAN address and port
        "<sip:gateway.office.lan;lr>",  # the gateway's host name, as the phone knows it
        f"<sip:{GW}:5060;transport=udp;lr;lr>, <sip:{GW};lr>",  # twice, one line
    ],
)
def test_route_naming_the_gateway_is_consumed_on_a_call(route: str) -> None:
    """Whatever name the phone's outbound proxy setting gives the gateway, an INVITE with that
    Route is carried to the provider as the gateway's own request, without the Route."""
    site = Site()
    site.from_phone(
        invite_with_sdp(
            f"""INVITE sip:+15551234567@{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:5060;branch=z9hG4bK.route1;rport
Route: {route}
Max-Forwards: 70
From: <sip:2001@{GW}>;tag=r1
To: <sip:+15551234567@{GW}>
Call-ID: route-call-1
CSeq: 1 INVITE
Contact: <sip:2001@127.0.4.10:5060>
Content-Type: application/sdp
Content-Length: @LENGTH@
""",
            "127.0.4.10",
        ),
        ("127.0.4.10", 5060),
    )
    assert [m.status for m in site.answers()] == [100]
    invite = site.upstream()
    assert invite.method == "INVITE" and str(invite.uri) == "sip:+15551234567@provider.example"
    assert not invite.has("Route")


def test_route_with_conflicting_transports_is_refused_with_reason() -> None:
    """Two values for one URI parameter could route two ways: 400, and the reason says so."""
    site = Site()
    site.from_phone(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:5060;branch=z9hG4bK.conflict;rport
Route: <sip:{GW};transport=udp;transport=tcp;lr>
Max-Forwards: 70
From: <sip:2001@{GW}>;tag=c1
To: <sip:2001@{GW}>
Call-ID: conflict-1
CSeq: 1 REGISTER
Contact: <sip:2001@127.0.4.10:5060>
Content-Length: 0

""",
        ("127.0.4.10", 5060),
    )
    (answer,) = site.answers()
    assert answer.status == 400
    assert answer.reason == "conflicting duplicate URI parameter 'transport'"
    assert "conflicting duplicate URI parameter" in (answer.get("Warning") or "")
    assert not site.take_wan()
    assert site.core.counters["sip_malformed_lan"] == 1


def test_header_parameter_repeated_with_same_value_is_accepted() -> None:
    """``;rport;rport`` in a Via (seen from ATAs that add rport in two layers) asks for the
    same thing twice: answered once, at the source port, as RFC 3581 says."""
    site = Site()
    site.from_phone(
        f"""OPTIONS sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:5060;rport;branch=z9hG4bK.twice;rport
Max-Forwards: 70
From: <sip:2001@{GW}>;tag=t1
To: <sip:{GW}>
Call-ID: twice-1
CSeq: 1 OPTIONS
Content-Length: 0

""",
        ("127.0.4.10", 5070),
    )
    ((peer, answer),) = site.take_lan()
    assert isinstance(answer, SipResponse) and answer.status == 200
    assert peer.address == ("127.0.4.10", 5070)
    assert answer.top_via.rport == 5070


def test_tag_repeated_with_another_value_is_refused_with_reason() -> None:
    site = Site()
    site.from_phone(
        f"""OPTIONS sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:5060;branch=z9hG4bK.tags
Max-Forwards: 70
From: <sip:2001@{GW}>;tag=a;tag=b
To: <sip:{GW}>
Call-ID: tags-1
CSeq: 1 OPTIONS
Content-Length: 0

""",
        ("127.0.4.10", 5060),
    )
    (answer,) = site.answers()
    assert (answer.status, answer.reason) == (
        400,
        "conflicting duplicate parameter 'tag' in address",
    )


# ---------------------------------------------------------------------------------------------
# Via, Expires and Contact habits of desk phones and ATAs

SPA_REGISTER = f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.11:5060;branch=z9hG4bK-7a1c42d9
From: "Front Desk" <sip:1001@{GW}>;tag=ad4f6a7e8c1b2d3e
To: "Front Desk" <sip:1001@{GW}>
Call-ID: 5d2b9c1e-8f3a4b6c@127.0.4.11
CSeq: {{cseq}} REGISTER
Max-Forwards: 70
Contact: "Front Desk" <sip:1001@127.0.4.11:5060>;expires=3600
User-Agent: Linksys/SPA941-5.1.8
Content-Length: 0
Allow: ACK, BYE, CANCEL, INFO, INVITE, NOTIFY, OPTIONS, REFER
Supported: x-sipura

"""


def test_via_without_rport_is_answered_at_the_source() -> None:
    """A Linksys/Cisco SPA sends no rport and a ``z9hG4bK-`` branch: the answer goes back to
    the address and port the REGISTER came from, and its Via gets no rport added."""
    site = Site()
    site.from_phone(SPA_REGISTER.format(cseq=60245), ("127.0.4.11", 5060))
    upstream = site.upstream()
    assert upstream_expires(upstream) == 3600
    ok = make_response(upstream, 200, to_tag="p")
    ok.add("Contact", upstream.get("Contact") or "")
    site.from_provider(ok)
    ((peer, answer),) = [(p, m) for p, m in site.take_lan() if isinstance(m, SipResponse)]
    assert answer.status == 200 and peer.address == ("127.0.4.11", 5060)
    via = answer.top_via
    assert via.branch == "z9hG4bK-7a1c42d9" and not via.has_rport and via.received is None


def test_expires_as_header_only() -> None:
    """Grandstream HT/GXP: ``Expires: 3600`` as a header, a Contact without expires."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.12:5062;branch=z9hG4bK1804289383;rport
From: <sip:1002@{GW}>;tag=846930886
To: <sip:1002@{GW}>
Call-ID: 1681692777-5062-1@127.0.4.12
CSeq: 2000 REGISTER
Contact: <sip:1002@127.0.4.12:5062;transport=udp>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000b82a1b2c3>"
X-GS-Device: HT802
Max-Forwards: 70
User-Agent: Grandstream HT802 1.0.23.5
Supported: path
Expires: 3600
Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, SUBSCRIBE, NOTIFY, INFO, REFER, UPDATE
Content-Length: 0

""",
        ("127.0.4.12", 5062),
    )
    assert upstream_expires(upstream) == 3600
    assert answer.status == 200
    (contact,) = answer.contacts
    assert str(contact.uri) == "sip:1002@127.0.4.12:5062;transport=udp"
    assert contact.param("expires") == "3600"


def test_expires_as_contact_parameter_only() -> None:
    """Panasonic KX-UT: ``;expires=`` on the Contact, no Expires header, rport before branch."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.16:5060;rport;branch=z9hG4bKfe1c30e9b3a8
Max-Forwards: 70
From: <sip:1006@{GW}>;tag=b9f5a2f7e7c4d1e
To: <sip:1006@{GW}>
Call-ID: 3a6f2c5b1d4e7f8a9b0c@127.0.4.16
CSeq: 2 REGISTER
Contact: <sip:1006@127.0.4.16:5060>;expires=1800
Supported: 100rel,replaces
User-Agent: Panasonic-KX-UT133/01.133 (0080f0a1b2c3)
Content-Length: 0

""",
        ("127.0.4.16", 5060),
    )
    assert upstream_expires(upstream) == 1800
    assert not upstream.has("Expires")
    assert answer.status == 200 and answer.contacts[0].param("expires") == "1800"


def test_contact_expires_wins_over_expires_header() -> None:
    """Avaya 96xx in SIP mode sends both; the Contact's value is the one that counts
    (RFC 3261 §10.2.1.1)."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW};transport=udp SIP/2.0
Via: SIP/2.0/UDP 127.0.4.17:5060;branch=z9hG4bK8d7e9f0a1b2c3d4e5
From: "Ext 1007" <sip:1007@{GW}>;tag=f4b2e81c3a
To: "Ext 1007" <sip:1007@{GW}>
Call-ID: 1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d
CSeq: 1 REGISTER
Max-Forwards: 70
Contact: <sip:1007@127.0.4.17:5060;transport=udp;avaya-sc-enabled>;q=1;expires=900;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-2cf4c5a1b2c3>"
Expires: 3600
Max-Breadth: 60
Allow: INVITE,CANCEL,BYE,ACK,SUBSCRIBE,NOTIFY,MESSAGE,INFO,PUBLISH,REFER,UPDATE,PRACK
Supported: eventlist
User-Agent: Avaya one-X Deskphone 7.1.2.0.14 (27)
Content-Length: 0

""",
        ("127.0.4.17", 5060),
    )
    assert upstream_expires(upstream) == 900
    assert answer.status == 200 and answer.contacts[0].param("expires") == "900"


def test_contact_without_port_is_reached_at_5060() -> None:
    """Polycom SoundPoint: no port in Via or Contact (5060 implied), a quoted ``methods``
    list with commas in the Contact. A call from the provider rings it at port 5060."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.13;branch=z9hG4bK6a1d7b3e0C9E6B7A
From: "1003" <sip:1003@{GW}>;tag=5C8B2A5A-A3D2B1C4
To: <sip:1003@{GW}>
CSeq: 1 REGISTER
Call-ID: 8f2d3e4c-a1b2c3d4-e5f6a7b8@127.0.4.13
Contact: <sip:1003@127.0.4.13>;methods="INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER"
User-Agent: PolycomSoundPointIP-SPIP_331-UA/3.3.5.0247
Accept-Language: en
Max-Forwards: 70
Expires: 3600
Content-Length: 0

""",
        ("127.0.4.13", 5060),
    )
    assert answer.status == 200
    peer, invite = site.call_to_phone(token_of(upstream))
    assert peer.address == ("127.0.4.13", 5060)
    assert str(invite.uri) == "sip:1003@127.0.4.13"


def test_contact_on_its_own_port_with_uri_and_feature_parameters() -> None:
    """Snom: SIP on port 2048, ``;line=`` in the Contact URI and a long run of feature tags
    (valueless ``audio``, quoted values with commas). Calls reach it at its Contact, line
    parameter kept."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.15:2048;branch=z9hG4bK-kd3ncsxk0y3x;rport
From: "Reception" <sip:1005@{GW}>;tag=ihp1wd6u6y
To: "Reception" <sip:1005@{GW}>
Call-ID: 3c2670b5a1c9-c7ys2xf1e2k4
CSeq: 1 REGISTER
Max-Forwards: 70
Contact: <sip:1005@127.0.4.15:2048;line=u7ndtf3a>;reg-id=1;q=1.0;+sip.instance="<urn:uuid:1e8d4f1b-6a35-4d86-9d6e-000413a1b2c3>";audio;mobility="fixed";duplex="full";description="snom320";actor="principal";events="dialog";methods="INVITE,ACK,CANCEL,BYE,REFER,OPTIONS,NOTIFY,SUBSCRIBE,PRACK,MESSAGE,INFO"
User-Agent: snom320/8.7.3.25
Supported: gruu
Allow-Events: dialog
Expires: 3600
Content-Length: 0

""",
        ("127.0.4.15", 2048),
    )
    assert answer.status == 200
    peer, invite = site.call_to_phone(token_of(upstream))
    assert peer.address == ("127.0.4.15", 2048)
    assert str(invite.uri) == "sip:1005@127.0.4.15:2048;line=u7ndtf3a"


def test_re_register_before_expiry_refreshes_the_same_binding() -> None:
    """Yealink re-registers well before expiry with the same Call-ID and the next CSeq: the
    provider sees a refresh of the same registration (same Call-ID, next CSeq, same token)."""
    site = Site()
    register = f"""REGISTER sip:{GW}:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.4.14:5060;branch=z9hG4bK{{branch}}
From: "1004" <sip:1004@{GW}:5060>;tag=1098765432
To: "1004" <sip:1004@{GW}:5060>
Call-ID: 0_1234567890@127.0.4.14
CSeq: {{cseq}} REGISTER
Contact: <sip:1004@127.0.4.14:5060>
X-Yealink-Device: T46S
Max-Forwards: 70
User-Agent: Yealink SIP-T46S 66.85.0.5
Expires: 300
Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, REFER, PUBLISH, UPDATE, MESSAGE
Allow-Events: talk,hold,conference,refer,check-sync
Content-Length: 0

"""
    first, answer = site.register(
        register.format(branch="1593478201", cseq=1), ("127.0.4.14", 5060)
    )
    assert answer.status == 200
    site.now += 150  # half the granted time, as the phone refreshes
    again, answer = site.register(
        register.format(branch="1593478202", cseq=2), ("127.0.4.14", 5060)
    )
    assert answer.status == 200
    assert again.call_id == first.call_id
    assert again.cseq.seq == first.cseq.seq + 1
    assert token_of(again) == token_of(first)
    (contact,) = answer.contacts
    assert contact.param("expires") == "300"  # counted from the refresh
    assert [r.expires for r in site.registered] == [300, 300]


def test_missing_max_forwards_and_user_agent() -> None:
    """An old ATA without Max-Forwards (RFC 2543 habit) or User-Agent registers and calls."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.18:5060;branch=z9hG4bK.nomf1
From: <sip:1008@{GW}>;tag=nm1
To: <sip:1008@{GW}>
Call-ID: nomf-1@127.0.4.18
CSeq: 1 REGISTER
Contact: <sip:1008@127.0.4.18:5060>
Expires: 600
Content-Length: 0

""",
        ("127.0.4.18", 5060),
    )
    assert answer.status == 200 and upstream.max_forwards == 70
    assert site.registered[-1].user_agent is None
    site.from_phone(
        invite_with_sdp(
            f"""INVITE sip:+15551234567@{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.18:5060;branch=z9hG4bK.nomf2
From: <sip:1008@{GW}>;tag=nm2
To: <sip:+15551234567@{GW}>
Call-ID: nomf-2@127.0.4.18
CSeq: 1 INVITE
Contact: <sip:1008@127.0.4.18:5060>
Content-Type: application/sdp
Content-Length: @LENGTH@
""",
            "127.0.4.18",
        ),
        ("127.0.4.18", 5060),
    )
    assert [m.status for m in site.answers()] == [100]
    assert site.upstream().max_forwards == 69  # absent counts as 70 (§8.1.1.6), one hop taken


# ---------------------------------------------------------------------------------------------
# header forms, whitespace and case


def test_compact_header_forms() -> None:
    """An ATA writing every header it can in its compact form (§7.3.3 and later RFCs): v, f,
    t, i, m, l, c, k, s, u, x, o; the call goes out as usual."""
    site = Site()
    site.from_phone(
        invite_with_sdp(
            f"""INVITE sip:+15551234567@{GW} SIP/2.0
v: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.compact1
f: "Lobby" <sip:1009@{GW}>;tag=cf1
t: <sip:+15551234567@{GW}>
i: compact-1@127.0.4.19
CSeq: 1 INVITE
m: <sip:1009@127.0.4.19:5060>
k: replaces, timer
s: lobby phone
u: talk, hold
x: 1800;refresher=uac
Max-Forwards: 70
c: application/sdp
l: @LENGTH@
""",
            "127.0.4.19",
        ),
        ("127.0.4.19", 5060),
    )
    (trying,) = site.answers()
    assert trying.status == 100 and trying.call_id == "compact-1@127.0.4.19"
    invite = site.upstream()
    assert invite.method == "INVITE" and b"RTP/SAVP" in invite.body


def test_whitespace_around_colons_and_folded_lines() -> None:
    """Blanks before and after the colon, a tab, and a Contact folded over two lines (§7.3.1:
    a line starting with blanks continues the one before)."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via :SIP/2.0/UDP 127.0.4.19:5060 ; branch=z9hG4bK.ws1
From:\t<sip:1009@{GW}>;tag=ws1
To   :   <sip:1009@{GW}>
Call-ID: ws-1@127.0.4.19
CSeq:1 REGISTER
Contact: <sip:1009@127.0.4.19:5060>
  ;expires=1200
Max-Forwards: 70
Content-Length:0

""",
        ("127.0.4.19", 5060),
    )
    assert answer.status == 200 and upstream_expires(upstream) == 1200


def test_header_names_in_any_case() -> None:
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:{GW} SIP/2.0
VIA: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.case1;rport
from: <sip:1009@{GW}>;tag=case1
TO: <sip:1009@{GW}>
CALL-ID: case-1@127.0.4.19
Cseq: 1 REGISTER
CONTACT: <sip:1009@127.0.4.19:5060>
EXPIRES: 900
max-forwards: 70
content-length: 0

""",
        ("127.0.4.19", 5060),
    )
    assert answer.status == 200 and upstream_expires(upstream) == 900
    assert answer.call_id == "case-1@127.0.4.19"


def test_cseq_method_in_lower_case() -> None:
    """``CSeq: 1 invite`` on an INVITE can mean nothing else: the call goes out, and the
    answers echo the phone's CSeq text as it was sent."""
    site = Site()
    site.from_phone(
        invite_with_sdp(
            f"""INVITE sip:+15551234567@{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.lower1
From: <sip:1009@{GW}>;tag=lc1
To: <sip:+15551234567@{GW}>
Call-ID: lower-1@127.0.4.19
CSeq: 1 invite
Contact: <sip:1009@127.0.4.19:5060>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: @LENGTH@
""",
            "127.0.4.19",
        ),
        ("127.0.4.19", 5060),
    )
    (trying,) = site.answers()
    assert trying.status == 100 and trying.get("CSeq") == "1 invite"
    assert site.upstream().method == "INVITE"


def test_cseq_naming_another_method_is_still_refused_with_reason() -> None:
    site = Site()
    site.from_phone(
        f"""OPTIONS sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.mismatch
From: <sip:1009@{GW}>;tag=mm1
To: <sip:{GW}>
Call-ID: mismatch-1
CSeq: 1 invite
Content-Length: 0

""",
        ("127.0.4.19", 5060),
    )
    (answer,) = site.answers()
    assert (answer.status, answer.reason) == (
        400,
        "CSeq method INVITE does not match request method OPTIONS",
    )


def test_scheme_and_protocol_in_any_case() -> None:
    """``SIP:`` URIs and ``sip/2.0/udp`` in the Via and the Request-Line (§19.1.4, §7.1)."""
    site = Site()
    _, answer = site.register(
        f"""REGISTER SIP:{GW} sip/2.0
Via: sip/2.0/udp 127.0.4.19:5060;branch=z9hG4bK.scheme1
From: <SIP:1009@{GW}>;tag=sc1
To: <Sip:1009@{GW}>
Call-ID: scheme-1@127.0.4.19
CSeq: 1 REGISTER
Contact: <SIP:1009@127.0.4.19:5060>
Expires: 600
Max-Forwards: 70
Content-Length: 0

""",
        ("127.0.4.19", 5060),
    )
    assert answer.status == 200
    assert answer.contacts[0].uri.scheme == "sip"
    assert answer.top_via.branch == "z9hG4bK.scheme1"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # The RFC 4475 §3.1.2.15 case: a comma in an unquoted display name.
        ("From: Desk, Front <sip:1009@127.0.4.20>;tag=r1", "has characters that need quoting"),
        # A space inside the URI: where does it end?
        ("From: <sip:1009 @127.0.4.20>;tag=r1", "whitespace inside <URI>"),
        # An unterminated quoted display name (RFC 4475 §3.1.2.6).
        ('From: "Desk <sip:1009@127.0.4.20>;tag=r1', "unterminated quoted string"),
    ],
)
def test_what_stays_refused_says_why(line: str, reason: str) -> None:
    site = Site()
    site.from_phone(
        f"""OPTIONS sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.refused
{line}
To: <sip:{GW}>
Call-ID: refused-1
CSeq: 1 OPTIONS
Content-Length: 0

""",
        ("127.0.4.19", 5060),
    )
    (answer,) = site.answers()
    assert answer.status == 400 and reason in answer.reason, answer.reason
    assert reason in (answer.get("Warning") or "")


def test_via_without_branch_rfc2543_ata() -> None:
    """An RFC 2543 ATA: no branch in the Via, no Max-Forwards. It registers (the transaction is
    matched the RFC 2543 way, §17.2.3) and its retransmission is absorbed, not relayed again."""
    site = Site()
    register = f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.19:5060
From: <sip:1009@{GW}>;tag=old1
To: <sip:1009@{GW}>
Call-ID: 2543-1@127.0.4.19
CSeq: 1 REGISTER
Contact: <sip:1009@127.0.4.19:5060>
Expires: 600
Content-Length: 0

"""
    site.from_phone(register, ("127.0.4.19", 5060))
    upstream = site.upstream()
    site.from_phone(register, ("127.0.4.19", 5060))  # retransmitted before the answer
    assert not site.take_wan()
    ok = make_response(upstream, 200, to_tag="p")
    ok.add("Contact", upstream.get("Contact") or "")
    site.from_provider(ok)
    assert [m.status for m in site.answers()] == [200]


def test_register_request_uri_with_a_user_part() -> None:
    """§10.2 says the REGISTER Request-URI names the domain only; many ATAs put the user in it
    too. The binding is the To's, so it registers just the same."""
    site = Site()
    upstream, answer = site.register(
        f"""REGISTER sip:1009@{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.19:5060;branch=z9hG4bK.ruser1;rport
From: <sip:1009@{GW}>;tag=ru1
To: <sip:1009@{GW}>
Call-ID: ruser-1@127.0.4.19
CSeq: 1 REGISTER
Contact: <sip:1009@127.0.4.19:5060>;expires=600
Max-Forwards: 70
Content-Length: 0

""",
        ("127.0.4.19", 5060),
    )
    assert answer.status == 200 and str(upstream.uri) == "sip:provider.example"


# ---------------------------------------------------------------------------------------------
# keep-alives

SPA_KEEPALIVE = f"""NOTIFY sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.11:5060;branch=z9hG4bK-ka{{n}}
From: <sip:1001@{GW}>;tag=ka{{n}}
To: <sip:{GW}>
Call-ID: ka-{{n}}@127.0.4.11
CSeq: {{n}} NOTIFY
Max-Forwards: 70
Event: {{event}}
User-Agent: Linksys/SPA941-5.1.8
Content-Length: 0

"""


@pytest.mark.parametrize(
    ("event", "to_tag", "expected"),
    [
        ("keep-alive", None, True),
        ("Keep-Alive;id=1", None, True),
        ("keep-alive", "t1", False),  # inside a dialog: not a keep-alive, relayed as usual
        ("dialog", None, False),
        (None, None, False),
    ],
)
def test_keepalive_notify_is_recognised(
    event: str | None, to_tag: str | None, expected: bool
) -> None:
    text = SPA_KEEPALIVE.format(n=1, event=event or "x").replace("\n", "\r\n")
    if event is None:
        text = text.replace("Event: x\r\n", "")
    if to_tag is not None:
        text = text.replace(f"To: <sip:{GW}>", f"To: <sip:{GW}>;tag={to_tag}")
    request = parse_message(text.encode())
    assert isinstance(request, SipRequest)
    assert is_keepalive_notify(request) is expected


def test_keepalive_notify_is_answered_by_the_gateway() -> None:
    """A Linksys/Cisco SPA with NAT keep-alive on (``$NOTIFY``) sends one every 15 s: the
    gateway answers it 200 itself and the provider never sees it."""
    site = Site()
    site.from_phone(SPA_KEEPALIVE.format(n=1, event="keep-alive"), ("127.0.4.11", 5060))
    assert not site.take_wan()
    assert [m.status for m in site.answers()] == [200]


# ---------------------------------------------------------------------------------------------
# tel: Request-URIs (RFC 3966), which some ATAs and soft phones send


@pytest.mark.parametrize(
    ("uri", "goes_up_as"),
    [
        ("tel:+1-201-555-0123", "sip:+1-201-555-0123@provider.example"),  # as dialled here
        # Found by the b2bua fuzz target: the parser keeps a tel: body opaque, and its '@'
        # landed in the user part of the provider's Request-URI (an INVITE nobody can parse).
        ("tel:+15551234567@127.0.4.20", None),
        ("sip:127.0.4.20", None),  # nothing to dial at all
    ],
)
def test_a_request_uri_without_a_number_is_refused_not_sent_up(
    uri: str, goes_up_as: str | None
) -> None:
    site = Site()
    site.from_phone(
        invite_with_sdp(
            f"""INVITE {uri} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.10:5062;branch=z9hG4bKtel1;rport
Max-Forwards: 70
From: "Desk" <sip:1001@{GW}>;tag=ph1
To: <{uri}>
Call-ID: tel-1@phone
CSeq: 1 INVITE
Contact: <sip:1001@127.0.4.10:5062>
Content-Type: application/sdp
Content-Length: @LENGTH@
""",
            "127.0.4.10",
        ),
        ("127.0.4.10", 5062),
    )
    sent = [m for m in site.take_wan() if isinstance(m, SipRequest)]
    if goes_up_as is None:
        assert sent == []
        finals = [m for m in site.answers() if m.status >= 200]
        assert [m.status for m in finals] == [484]
        assert "no number to dial" in (finals[0].get("Warning") or "")
    else:
        (invite,) = sent
        assert str(invite.uri) == goes_up_as
