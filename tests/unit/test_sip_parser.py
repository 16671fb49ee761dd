"""URIs, headers and messages: parsing, the header API, serialising, building responses."""

from __future__ import annotations

import pytest

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    split_header_list,
)
from gateway.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from gateway.sip.uri import AbsoluteUri, SipUri, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"v: SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bKp1;received=192.0.2.9, "
    b"SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bKp2;rport=5063\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice A." <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Supported: replaces,\r\n timer\r\n"
    b'Authorization: Digest username="alice", realm="atlanta.example.com"\r\n'
    b"Content-Type: application/sdp; charset=utf-8\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def _invite() -> SipRequest:
    message = parse_message(INVITE)
    assert isinstance(message, SipRequest)
    return message


# -- URIs ----------------------------------------------------------------------------------


def test_sip_uri_components() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=TLS;lr?Subject=hi&X=1")
    assert uri == SipUri(
        "sips",
        "alice",
        "secret",
        "[2001:db8::1]",
        5061,
        {"transport": "TLS", "lr": None},
        "Subject=hi&X=1",
    )
    assert uri.host_port == ("2001:db8::1", 5061)
    assert uri.param("TRANSPORT") == "TLS"
    assert uri.has_param("LR") and not uri.has_param("maddr")
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=TLS;lr?Subject=hi&X=1"


def test_uri_scheme_lowercased_and_copy_is_independent() -> None:
    uri = parse_uri("SIP:host.example.com")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", None, "host.example.com", None)
    clone = uri.copy()
    clone.params["lr"] = None
    assert uri.params == {}


def test_absolute_uri_kept_opaque() -> None:
    assert parse_uri("tel:+1-201-555-0123") == AbsoluteUri("tel", "+1-201-555-0123")
    assert str(parse_uri("tel:+1-201-555-0123")) == "tel:+1-201-555-0123"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:port",
        "sip:us er@host",
        "sip:user@host;;lr",
        "sip:user@host;transport=udp;TRANSPORT=tcp",  # a repeat with another value
        "sip:%4@host",
        "sip:user@host?",
        "sip:[2001:db8::1",
        "<sip:user@host>",
        "no-colon",
        "1sip:host",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


# -- header values -------------------------------------------------------------------------


def test_compact_forms_and_canonical_names() -> None:
    assert len(COMPACT_FORMS) == 20
    assert canonical_name("i") == "Call-ID"
    assert canonical_name("CALL-ID") == "Call-ID"
    assert canonical_name("cseq") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("X-Custom-thing") == "X-Custom-thing"


def test_split_header_list_honours_quotes_escapes_and_brackets() -> None:
    value = '"Bell, A." <sip:a@x;p=1,2>;q=0.5 , <sip:b@y>, "x\\",y" <sip:c@z>,,'
    assert split_header_list(value) == [
        '"Bell, A." <sip:a@x;p=1,2>;q=0.5',
        "<sip:b@y>",
        '"x\\",y" <sip:c@z>',
        "",
        "",
    ]
    assert split_header_list("  ") == []


def test_name_addr_forms() -> None:
    quoted = NameAddr.parse('"Alice \\"A\\"" <sip:alice@a.example.com>;tag=1;expires=60')
    assert quoted.display == '"Alice \\"A\\""'
    assert quoted.display_name == 'Alice "A"'
    assert quoted.tag == "1"
    assert quoted.param("EXPIRES") == "60"
    tokens = NameAddr.parse("Bob   Smith<sip:bob@b.example.com>")
    assert tokens.display == "Bob   Smith"
    assert str(tokens) == "Bob   Smith <sip:bob@b.example.com>"
    spec = NameAddr.parse("sip:carol@c.example.com;transport=tcp;tag=9")
    assert isinstance(spec.uri, SipUri)
    assert spec.uri.params == {}
    assert spec.params == {"transport": "tcp", "tag": "9"}
    assert str(spec) == "<sip:carol@c.example.com>;transport=tcp;tag=9"


def test_with_tag_replaces_and_copies() -> None:
    original = NameAddr.parse("<sip:bob@b.example.com>;TAG=old")
    tagged = original.with_tag("new")
    assert tagged.params == {"TAG": "new"}
    assert original.tag == "old"


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@b>',
        "Bell, Alexander <sip:a@b>",
        "< sip:a@b >",
        "<sip:a@b",
        "<sip:a@b>;;",
        "<sip:a@b>;tag=1;tag=2",
        "<sip:a@b>;tag=",
        "sip:a@b?Route=x",
        '"quoted" sip:a@b',
        "*",
    ],
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


def test_via_parse_and_format() -> None:
    via = Via.parse("SIP / 2.0 / udp  host.example.com : 5060 ; branch = z9hG4bKx ; rport")
    assert via == Via("UDP", "host.example.com", 5060, {"branch": "z9hG4bKx", "rport": None})
    assert via.has_rport and via.rport is None
    assert str(via) == "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKx;rport"
    via.set_param("rport", "5062")
    via.set_param("received", "192.0.2.1")
    assert (via.rport, via.received) == (5062, "192.0.2.1")
    assert str(via) == (
        "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKx;rport=5062;received=192.0.2.1"
    )
    ipv6 = Via.parse("SIP/2.0/TLS [2001:db8::5];branch=z9hG4bKy;received=2001:db8::6")
    assert ipv6.sent_by == ("2001:db8::5", None)
    assert ipv6.received == "2001:db8::6"


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:70000", "SIP/2.0/UDP host;;", "host"],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_cseq_limits() -> None:
    assert CSeq.parse(" 0009  INVITE ") == CSeq(9, "INVITE")
    assert str(CSeq(2**31 - 1, "BYE")) == "2147483647 BYE"
    for bad in ("2147483648 INVITE", "1", "x INVITE", "1 IN VITE", "-1 INVITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


# -- messages ------------------------------------------------------------------------------


def test_typed_accessors() -> None:
    message = _invite()
    assert message.method == "INVITE"
    assert message.uri == SipUri("sip", "bob", None, "biloxi.example.com")
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert message.cseq == CSeq(314159, "INVITE")
    assert [via.branch for via in message.vias] == ["z9hG4bK776asdhds", "z9hG4bKp1", "z9hG4bKp2"]
    assert message.vias[2].sent_by == ("2001:db8::9", 5062)
    assert message.vias[2].rport == 5063
    assert message.top_via.host == "pc33.atlanta.example.com"
    assert message.from_.display == '"Alice A."' and message.from_.tag == "1928301774"
    assert message.to.tag is None
    assert [str(c) for c in message.contacts] == ["<sip:alice@pc33.atlanta.example.com>"]
    assert message.max_forwards == 70
    assert message.content_type == "application/sdp"
    assert message.body == b"v=0\n"


def test_get_and_get_all_split_only_list_headers() -> None:
    message = _invite()
    assert message.get("via") == "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
    assert len(message.get_all("v")) == 3
    assert message.get_all("Supported") == ["replaces", "timer"]
    assert message.get_all("Authorization") == [
        'Digest username="alice", realm="atlanta.example.com"'
    ]
    assert message.get("X-Absent") is None
    assert message.get_all("X-Absent") == []
    # Header lines stay as they came: the compact "v" line is one entry with its comma list.
    assert [name for name, _ in message.headers].count("Via") == 2


def test_set_add_prepend_remove() -> None:
    message = _invite()
    message.prepend("Via", "SIP/2.0/TLS gw.example.com;branch=z9hG4bKgw")
    assert message.top_via.host == "gw.example.com"
    message.set("supported", "100rel")
    assert message.get_all("Supported") == ["100rel"]
    message.add("X-Trace", "a")
    message.add("X-Trace", "b")
    assert message.get_all("X-Trace") == ["a", "b"]
    message.set("X-Trace", "c")
    assert message.get_all("X-Trace") == ["c"]
    message.remove("x-trace")
    assert not message.has("X-Trace")
    message.set("Subject", "new at end")
    assert message.headers[-1] == ("Subject", "new at end")
    with pytest.raises(ValueError):
        message.add("X-Evil", "a\r\nVia: injected")


def test_remove_first_pops_the_top_via_element() -> None:
    message = _invite()
    assert message.remove_first("Via") == (
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
    )
    assert message.remove_first("Via") == (
        "SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bKp1;received=192.0.2.9"
    )
    assert [via.branch for via in message.vias] == ["z9hG4bKp2"]


def test_bytes_rewrites_content_length_and_expands_compact_names() -> None:
    message = _invite()
    message.body = b"v=0\r\no=x\r\n"
    data = bytes(message)
    assert data.startswith(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP ")
    assert b"\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n" in data
    assert b"\r\nv: " not in data
    assert b"\r\nSupported: replaces, timer\r\n" in data
    again = parse_message(data)
    assert again.headers == [(n, "10" if n == "Content-Length" else v) for n, v in message.headers]


def test_bytes_appends_content_length_when_absent() -> None:
    response = SipResponse(200, "OK", [("Call-ID", "x")], b"abc")
    assert bytes(response) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\nabc"


def test_copy_is_deep_enough() -> None:
    message = _invite()
    clone = message.copy()
    clone.set("Max-Forwards", "69")
    assert isinstance(clone.uri, SipUri)
    clone.uri.user = "carol"
    assert message.max_forwards == 70
    assert str(message.uri) == "sip:bob@biloxi.example.com"


def test_leading_crlf_ignored_and_bare_lf_rejected() -> None:
    assert parse_message(b"\r\n\r\n" + INVITE).method == "INVITE"  # type: ignore[union-attr]
    with pytest.raises(SipParseError) as caught:
        parse_message(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\nX: y\r\n"))
    assert caught.value.reason == "bare CR or LF in header section"


def test_malformed_header_line_still_gives_partial() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(INVITE.replace(b"Max-Forwards: 70\r\n", b"Foobar roobar\r\n"))
    assert caught.value.reason == "malformed header line 'Foobar roobar'"
    assert caught.value.partial is not None
    assert caught.value.partial.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


def test_oversize_datagram() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(INVITE, max_size=100)
    assert caught.value.status_hint == 513
    assert isinstance(caught.value.partial, SipRequest)


def test_bad_scalars() -> None:
    for old, new, reason in [
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Max-Forwards too large (limit 255)"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", "malformed Max-Forwards '-1'"),
        (b"Content-Length: 4", b"Content-Length: 4x", "malformed Content-Length '4x'"),
        (b"Call-ID: a84b", b"Call-ID: a 84b", "malformed Call-ID"),
    ]:
        with pytest.raises(SipParseError) as caught:
            parse_message(INVITE.replace(old, new))
        assert caught.value.reason == reason


def test_response_errors_are_flagged_as_responses() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(b"SIP/2.0 99 Odd\r\n\r\n")
    assert caught.value.is_response
    with pytest.raises(SipParseError) as caught:
        parse_message(b"SIP/2.0 OK\r\n\r\n")
    assert caught.value.is_response and caught.value.partial is None


def test_make_response_copies_section_8_2_6_headers() -> None:
    request = _invite()
    request.add("Timestamp", "54")
    response = make_response(request, 180, to_tag="as83kd", headers=[("Contact", "<sip:gw>")])
    assert (response.status, response.reason) == (180, "Ringing")
    assert response.headers == [
        ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"),
        (
            "Via",
            "SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bKp1;received=192.0.2.9, "
            "SIP/2.0/UDP [2001:db8::9]:5062;branch=z9hG4bKp2;rport=5063",
        ),
        ("To", "Bob <sip:bob@biloxi.example.com>;tag=as83kd"),
        ("From", '"Alice A." <sip:alice@atlanta.example.com>;tag=1928301774'),
        ("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com"),
        ("CSeq", "314159 INVITE"),
        ("Contact", "<sip:gw>"),
    ]
    trying = make_response(request, 100, to_tag="ignored")
    assert trying.reason == "Trying"
    assert trying.get("To") == "Bob <sip:bob@biloxi.example.com>"
    assert trying.get("Timestamp") == "54"
    assert make_response(request, 499).reason == "Bad Request"
    assert make_response(request, 486, "Busy Now").reason == "Busy Now"


def test_make_response_keeps_an_existing_to_tag() -> None:
    request = _invite()
    request.set("To", "<sip:bob@biloxi.example.com>;tag=existing")
    assert make_response(request, 200, to_tag="new").get("To") == (
        "<sip:bob@biloxi.example.com>;tag=existing"
    )


def test_identifiers() -> None:
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) == 7 + 24
    assert new_branch() != branch
    assert len(new_tag()) == 16 and len(new_call_id()) == 24
    # They must survive as header parameter tokens.
    assert Via.parse(f"SIP/2.0/UDP h;branch={branch}").branch == branch
    assert NameAddr.parse(f"<sip:a@b>;tag={new_tag()}").tag is not None
