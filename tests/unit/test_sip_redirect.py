"""3xx targets re-homed to the gateway (gateway.sip.redirect): the caller's new request comes
back through the gateway, and nothing of the far side's hosts reaches it."""

from __future__ import annotations

import pytest

from gateway.sip.edge import Edge
from gateway.sip.message import SipResponse, parse_message
from gateway.sip.peer import Side
from gateway.sip.redirect import MAX_REDIRECT_TARGETS, redirect_contacts
from tests.unit.test_b2bua import settings

EDGE = Edge(settings())


def moved(*contacts: str, status: int = 302) -> SipResponse:
    head = (
        f"SIP/2.0 {status} Moved\r\n"
        "Via: SIP/2.0/TLS 127.0.0.21:5061;branch=z9hG4bKr1\r\n"
        "From: <sip:1001@provider.example>;tag=a\r\n"
        "To: <sip:+15551234567@provider.example>;tag=b\r\n"
        "Call-ID: redirect-1\r\n"
        "CSeq: 1 INVITE\r\n"
    )
    head += "".join(f"Contact: {contact}\r\n" for contact in contacts)
    response = parse_message((head + "Content-Length: 0\r\n\r\n").encode())
    assert isinstance(response, SipResponse)
    return response


def test_provider_target_is_rehomed_to_the_gateway_lan_side() -> None:
    response = moved("<sip:+15559876543@redirect.provider.example;transport=tls>")
    assert redirect_contacts(response, EDGE, Side.LAN) == ["<sip:+15559876543@127.0.0.20:5060>"]


def test_phone_target_is_rehomed_to_the_provider_domain() -> None:
    """A phone deflecting a provider's call: its LAN address never reaches the provider."""
    response = moved("<sip:2002@127.0.0.10:5062>")
    assert redirect_contacts(response, EDGE, Side.WAN) == ["<sip:2002@provider.example>"]


def test_q_and_expires_are_kept_other_parameters_dropped() -> None:
    response = moved(
        '"Office" <sip:2002@198.51.100.11:5060;user=phone?Subject=x>;q=0.7;expires=60;+sip.instance="<urn:x>"',
        "<sip:2003@198.51.100.11>;q=0.3",
    )
    assert redirect_contacts(response, EDGE, Side.LAN) == [
        "<sip:2002@127.0.0.20:5060>;q=0.7;expires=60",
        "<sip:2003@127.0.0.20:5060>;q=0.3",
    ]


def test_tel_targets_lose_visual_separators() -> None:
    response = moved("<tel:+1-555-987-6543>", "<tel:(212)555.0123;phone-context=+1>")
    assert redirect_contacts(response, EDGE, Side.LAN) == [
        "<sip:+15559876543@127.0.0.20:5060>",
        "<sip:2125550123@127.0.0.20:5060>",
    ]


@pytest.mark.parametrize(
    "contact",
    [
        "<sip:redirect.provider.example>",  # no user: nothing to dial
        "<mailto:sales@example.com>",
        "<sip:1001;phone-context=x@host.example>",  # a parameter riding in the user part
        "<sip:" + "1" * 65 + "@host.example>",
    ],
)
def test_targets_without_a_plain_number_or_extension_are_left_out(contact: str) -> None:
    assert redirect_contacts(moved(contact), EDGE, Side.LAN) == []


def test_only_the_user_part_is_kept() -> None:
    response = moved("<sip:1001:secret@host.example:5070;maddr=198.51.100.12?Route=%3Csip:x%3E>")
    assert redirect_contacts(response, EDGE, Side.LAN) == ["<sip:1001@127.0.0.20:5060>"]


def test_an_unparsable_contact_list_redirects_nowhere() -> None:
    assert redirect_contacts(moved(), EDGE, Side.LAN) == []
    response = moved()
    response.add("Contact", "<sip:2002@host")  # the parser refuses it on the wire
    assert redirect_contacts(response, EDGE, Side.LAN) == []


def test_duplicates_are_dropped_and_the_list_is_bounded() -> None:
    many = [f"<sip:20{n:02d}@a.example>" for n in range(20)]
    response = moved("<sip:2000@b.example>", *many)
    out = redirect_contacts(response, EDGE, Side.LAN)
    assert len(out) == MAX_REDIRECT_TARGETS
    assert out[:2] == ["<sip:2000@127.0.0.20:5060>", "<sip:2001@127.0.0.20:5060>"]


def test_a_bad_q_value_is_dropped_not_copied() -> None:
    response = moved('<sip:2002@a.example>;q="0.5, <sip:evil@x>";expires=60')
    assert redirect_contacts(response, EDGE, Side.LAN) == ["<sip:2002@127.0.0.20:5060>;expires=60"]
