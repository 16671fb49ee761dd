"""The RFC 4475 torture messages against parse_message, with one explicit verdict per file.

A new ``*.dat`` file without a verdict in EXPECTED fails the test, so nobody adds test data
without deciding what the parser must do with it. Verdicts follow INDEX.md; where the RFC lets
an element choose, the choice is written next to the entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.uri import AbsoluteUri, SipUri
from tests.testdata import RFC4475_DIR

DATA = RFC4475_DIR
FILES = sorted(DATA.glob("*.dat"))

VALID = None
#: file name -> None when the message must parse, else the status_hint of the SipParseError.
EXPECTED: dict[str, int | None] = {
    # §3.1.1 valid
    "wsinv.dat": VALID,
    "intmeth.dat": VALID,
    "esc01.dat": VALID,
    "escnull.dat": VALID,
    "esc02.dat": VALID,
    "lwsdisp.dat": VALID,
    "longreq.dat": VALID,
    "dblreq.dat": VALID,
    "semiuri.dat": VALID,
    "transports.dat": VALID,
    "mpart01.dat": VALID,
    "unreason.dat": VALID,
    "noreason.dat": VALID,
    # §3.1.2 invalid
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": 400,  # a response: dropped
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    # Our choice: a B2BUA never interprets Date, so an EST zone is not worth a 400.
    "baddate.dat": VALID,
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": 400,  # a response: dropped
    # §3.2: the parser accepts it; the transaction layer falls back to RFC 2543 matching.
    "badbranch.dat": VALID,
    # §3.3: syntax is fine except where noted; the TU gives the semantic answer.
    "insuf.dat": 400,
    "unkscm.dat": VALID,
    "novelsc.dat": VALID,
    "unksm2.dat": VALID,
    "bext01.dat": VALID,
    "invut.dat": VALID,
    "regaut01.dat": VALID,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": VALID,
    "zeromf.dat": VALID,
    "cparam01.dat": VALID,
    "cparam02.dat": VALID,
    "regescrt.dat": VALID,
    "sdp01.dat": VALID,
    # §3.4
    "inv2543.dat": VALID,
}

RESPONSES = {"scalarlg.dat", "bigcode.dat", "unreason.dat", "noreason.dat", "bcast.dat"}


def _load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_data_directory_holds_the_49_messages() -> None:
    assert len(FILES) == 49, f"expected the 49 RFC 4475 messages in {DATA}"


def test_every_file_has_a_verdict_and_every_verdict_a_file() -> None:
    assert {path.name for path in FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_verdict(path: Path) -> None:
    assert path.name in EXPECTED, f"{path.name} has no verdict in EXPECTED"
    expected = EXPECTED[path.name]
    data = path.read_bytes()
    if expected is VALID:
        message = parse_message(data)
        assert isinstance(message, SipResponse) == (path.name in RESPONSES)
        return
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    error = caught.value
    assert error.status_hint == expected
    assert error.reason and "\n" not in error.reason
    assert error.is_response == (path.name in RESPONSES)
    if not error.is_response:
        # Every invalid request can be answered: the partial message carries what §8.2.6 copies.
        assert isinstance(error.partial, SipRequest)
        answer = make_response(error.partial, error.status_hint)
        assert answer.status == expected
        assert answer.get("Via") == error.partial.get("Via")
        assert answer.get("CSeq") == error.partial.get("CSeq")


@pytest.mark.parametrize(
    "name", sorted(name for name, verdict in EXPECTED.items() if verdict is VALID)
)
def test_round_trip(name: str) -> None:
    first = parse_message(_load(name))
    second = parse_message(bytes(first))
    assert second.start_line() == first.start_line()
    # Serialising always writes Content-Length (inv2543 has none): compare the rest exactly.
    assert [h for h in second.headers if h[0] != "Content-Length"] == [
        h for h in first.headers if h[0] != "Content-Length"
    ]
    assert second.body == first.body
    assert bytes(second) == bytes(first)


# -- what the parser makes of specific messages ------------------------------------------------


def test_wsinv_folding_whitespace_and_unknown_headers() -> None:
    message = parse_message(_load("wsinv.dat"))
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE"
    assert str(message.uri) == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert message.to.tag == "1918181833n"
    assert message.from_.display == '"J Rosenberg \\\\\\""'
    assert message.from_.display_name == 'J Rosenberg \\"'
    assert message.from_.tag == "98asjd8"
    assert message.max_forwards == 68
    assert (message.cseq.seq, message.cseq.method) == (9, "INVITE")
    assert message.get("Subject") == ""
    assert message.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert message.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    vias = message.vias
    assert [(v.protocol, v.transport, v.host, v.branch) for v in vias] == [
        ("SIP/2.0", "UDP", "192.0.2.2", "390skdjuw"),
        ("SIP/2.0", "TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("SIP/2.0", "UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = message.contacts[0]
    assert contact.display == '"Quoted string \\"\\""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    route = message.routes[0].uri
    assert isinstance(route, SipUri)
    assert route.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert message.content_type == "application/sdp"
    assert len(message.body) == 150


def test_intmeth_token_characters_and_nul() -> None:
    message = parse_message(_load("intmeth.dat"))
    assert isinstance(message, SipRequest)
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(message.uri, SipUri)
    assert message.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert message.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert message.uri.host == "example.com"
    assert message.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert message.from_.display == "token1~` token2'+_ token3*%!.-"
    assert message.from_.tag == "_token~1'+`*%!-."
    assert message.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert message.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc02_has_two_contacts_and_an_unknown_header() -> None:
    message = parse_message(_load("esc02.dat"))
    assert isinstance(message, SipRequest)
    assert message.method == "RE%47IST%45R"
    assert [str(c.uri) for c in message.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert message.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_escapes_are_kept_not_decoded() -> None:
    message = parse_message(_load("escnull.dat"))
    assert [str(c.uri) for c in message.contacts] == [
        "sip:%00@host5.example.com",
        "sip:%00%00@host5.example.com",
    ]
    esc01 = parse_message(_load("esc01.dat"))
    contact = esc01.contacts[0].uri
    assert isinstance(contact, SipUri)
    assert contact.params == {"%6C%72": None, "n%61me": "v%61lue%25%34%31"}


def test_dblreq_ignores_trailing_octets() -> None:
    message = parse_message(_load("dblreq.dat"))
    assert isinstance(message, SipRequest)
    assert message.method == "REGISTER"
    assert message.body == b""
    assert b"INVITE" not in bytes(message)


def test_semiuri_user_part_keeps_semicolon() -> None:
    message = parse_message(_load("semiuri.dat"))
    assert isinstance(message, SipRequest) and isinstance(message.uri, SipUri)
    assert message.uri.user == "user;par=u%40example.net"
    assert message.uri.host == "example.com"
    assert message.uri.params == {}
    assert message.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_and_broadcast_via() -> None:
    message = parse_message(_load("transports.dat"))
    assert [v.transport for v in message.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    bcast = parse_message(_load("bcast.dat"))
    assert bcast.vias[1].host == "255.255.255.255"


def test_mpart01_binary_body_framed_exactly() -> None:
    data = _load("mpart01.dat")
    message = parse_message(data)
    assert message.content_type == "multipart/mixed"
    assert len(message.body) == 553
    assert message.body == data[data.index(b"\r\n\r\n") + 4 :][:553]
    assert b"\x00" in message.body


def test_reason_phrases() -> None:
    unreason = parse_message(_load("unreason.dat"))
    assert isinstance(unreason, SipResponse)
    assert unreason.status == 200
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(_load("noreason.dat"))
    assert isinstance(noreason, SipResponse)
    assert (noreason.status, noreason.reason) == (100, "")


def test_unknown_schemes_parse_to_absolute_uris() -> None:
    unkscm = parse_message(_load("unkscm.dat"))
    assert isinstance(unkscm, SipRequest)
    assert unkscm.uri == AbsoluteUri("nobodyKnowsThisScheme", "totallyopaquecontent")
    novelsc = parse_message(_load("novelsc.dat"))
    assert isinstance(novelsc, SipRequest)
    assert novelsc.uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    unksm2 = parse_message(_load("unksm2.dat"))
    assert unksm2.to.uri == AbsoluteUri("isbn", "2983792873")
    assert unksm2.from_.uri == AbsoluteUri("http", "//www.example.com")
    assert unksm2.contacts[0].uri == AbsoluteUri("name", "John_Smith")


def test_contact_param_versus_uri_param() -> None:
    cparam01 = parse_message(_load("cparam01.dat")).contacts[0]
    assert isinstance(cparam01.uri, SipUri)
    assert cparam01.params == {"unknownparam": None}
    assert cparam01.uri.params == {}
    cparam02 = parse_message(_load("cparam02.dat")).contacts[0]
    assert isinstance(cparam02.uri, SipUri)
    assert cparam02.params == {}
    assert cparam02.uri.params == {"unknownparam": None}
    regescrt = parse_message(_load("regescrt.dat")).contacts[0]
    assert isinstance(regescrt.uri, SipUri)
    assert regescrt.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(regescrt) == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"


def test_inv2543_body_runs_to_end_of_datagram() -> None:
    message = parse_message(_load("inv2543.dat"))
    assert isinstance(message, SipRequest)
    assert len(message.body) == 105
    assert message.top_via.branch is None
    assert message.from_.tag is None
    assert message.max_forwards is None


def test_scalar_edge_values() -> None:
    zeromf = parse_message(_load("zeromf.dat"))
    assert zeromf.max_forwards == 0
    badbranch = parse_message(_load("badbranch.dat"))
    assert badbranch.top_via.branch == "z9hG4bK"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("badinv01.dat", "empty element in Via"),
        ("clerr.dat", "Content-Length 9999 exceeds"),
        ("ncl.dat", "Content-Length"),
        ("scalar02.dat", "CSeq number too large"),
        ("quotbal.dat", "unterminated quoted string"),
        ("ltgtruri.dat", "enclosed in <>"),
        ("lwsruri.dat", "Request-Line"),
        ("lwsstart.dat", "Request-Line"),
        ("trws.dat", "Request-Line"),
        ("escruri.dat", "escaped headers"),
        ("regbadct.dat", "enclosed in <>"),
        ("badaspec.dat", "whitespace inside <URI>"),
        ("baddn.dat", "need quoting"),
        ("badvers.dat", "SIP/7.0"),
        ("mismatch01.dat", "CSeq method INVITE does not match request method OPTIONS"),
        ("mismatch02.dat", "CSeq method INVITE does not match request method NEWMETHOD"),
        ("insuf.dat", "missing mandatory header(s): From, To, Call-ID"),
        ("multi01.dat", "more than one Call-ID header"),
        ("mcl01.dat", "more than one Content-Length header"),
    ],
)
def test_invalid_request_reasons(name: str, fragment: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(_load(name))
    assert fragment in caught.value.reason


def test_baddn_with_the_missing_blank_line_added_is_still_rejected() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(_load("baddn.dat") + b"\r\n")
    assert caught.value.status_hint == 400


def test_answer_to_quotbal_copies_the_broken_to_as_received() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(_load("quotbal.dat"))
    partial = caught.value.partial
    assert isinstance(partial, SipRequest)
    answer = make_response(partial, 400, "Bad Request", to_tag="gw1")
    assert answer.get("To") == '"Mr. J. User <sip:j.user@example.com>'
    assert answer.get("Call-ID") == "quotbal.aksdj"


def test_answer_to_insuf_copies_what_is_there() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(_load("insuf.dat"))
    assert caught.value.partial is not None
    answer = make_response(caught.value.partial, 400)  # type: ignore[arg-type]
    assert answer.headers == [
        ("CSeq", "193942 INVITE"),
        ("Via", "SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf"),
    ]


def test_name_addr_of_each_valid_message_round_trips() -> None:
    for name, verdict in EXPECTED.items():
        if verdict is not VALID:
            continue
        message = parse_message(_load(name))
        for address in [message.from_, message.to, *message.contacts]:
            assert NameAddr.parse(str(address)) == address


def test_unreferenced_archive_file_is_malformed() -> None:
    # INDEX.md: no verdict in the RFC; treated as malformed (no SIP-Version, a line without ':').
    with pytest.raises(SipParseError) as caught:
        parse_message((DATA / "unreferenced" / "test.dat").read_bytes())
    assert caught.value.status_hint == 400
    assert isinstance(caught.value.partial, SipRequest)
