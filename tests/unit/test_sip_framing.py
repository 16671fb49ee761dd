"""Stream framing (RFC 3261 §18.3) and keep-alives (RFC 5626 §4.4.1)."""

from __future__ import annotations

import pytest

from gateway.sip.errors import SipFramingError, SipParseError
from gateway.sip.framing import KeepAlive, StreamFramer
from gateway.sip.message import SipRequest, SipResponse
from tests.testdata import RFC4475_DIR

DATA = RFC4475_DIR

OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP a.example.com;branch=z9hG4bK1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)
RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP a.example.com;branch=z9hG4bK1\r\n"
    b"To: <sip:bob@example.com>;tag=2\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"l: 0\r\n"
    b"\r\n"
)


def test_two_messages_in_one_read() -> None:
    framer = StreamFramer()
    items = framer.feed(OPTIONS + RESPONSE)
    assert len(items) == 2
    request, response = items
    assert isinstance(request, SipRequest) and request.body == b"hello"
    assert isinstance(response, SipResponse) and response.status == 200
    assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = StreamFramer()
    stream = OPTIONS + b"\r\n\r\n" + RESPONSE + OPTIONS[:20]
    items = []
    for index in range(len(stream)):
        items.extend(framer.feed(stream[index : index + 1]))
    # The ping arrives split, so it shows as a pong and then the ping (see StreamFramer).
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["SipRequest", "KeepAlive", "KeepAlive", "SipResponse"]
    assert items[1] == KeepAlive(ping=False) and items[2] == KeepAlive(ping=True)
    assert framer.buffered == 20


def test_keepalives_between_messages() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [KeepAlive(ping=True)]
    assert framer.feed(b"\r\n") == [KeepAlive(ping=False)]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [KeepAlive(ping=True), KeepAlive(ping=True)]
    items = framer.feed(b"\r\n\r\n" + OPTIONS)
    assert items[0] == KeepAlive(ping=True) and isinstance(items[1], SipRequest)


def test_waits_for_the_whole_body() -> None:
    framer = StreamFramer()
    assert framer.feed(OPTIONS[:-2]) == []
    assert framer.buffered == len(OPTIONS) - 2
    [request] = framer.feed(OPTIONS[-2:])
    assert isinstance(request, SipRequest) and request.body == b"hello"


def test_clerr_on_a_stream_waits_for_more_data() -> None:
    data = (DATA / "clerr.dat").read_bytes()
    framer = StreamFramer()
    assert framer.feed(data) == []
    assert framer.buffered == len(data)


def test_framed_but_invalid_message_is_an_item_and_the_stream_goes_on() -> None:
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    framer = StreamFramer()
    items = framer.feed(bad + RESPONSE)
    assert isinstance(items[0], SipParseError)
    assert items[0].status_hint == 400
    assert items[0].partial is not None and items[0].partial.call_id == "c1"
    assert isinstance(items[1], SipResponse)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"Content-Length: 5\r\n", b"", "missing Content-Length on a stream transport"),
        (b"Content-Length: 5", b"Content-Length: -5", "negative or malformed Content-Length '-5'"),
        (b"Content-Length: 5", b"l: 5\r\nContent-Length: 5", "more than one Content-Length header"),
    ],
)
def test_lost_framing_raises_with_partial(old: bytes, new: bytes, reason: str) -> None:
    framer = StreamFramer()
    with pytest.raises(SipFramingError) as caught:
        framer.feed(RESPONSE + OPTIONS.replace(old, new))
    error = caught.value
    assert error.reason == reason
    assert error.status_hint == 400
    assert isinstance(error.partial, SipRequest) and error.partial.call_id == "c1"
    assert [type(item) for item in error.framed_before] == [SipResponse]
    with pytest.raises(SipFramingError):
        framer.feed(OPTIONS)


def test_ncl_and_mcl01_lose_framing() -> None:
    for name in ("ncl.dat", "mcl01.dat"):
        with pytest.raises(SipFramingError) as caught:
            StreamFramer().feed((DATA / name).read_bytes())
        assert caught.value.status_hint == 400


def test_oversize_headers_and_body() -> None:
    with pytest.raises(SipFramingError) as caught:
        StreamFramer(max_header_bytes=64).feed(OPTIONS[:65])
    assert caught.value.status_hint == 513
    framer = StreamFramer(max_header_bytes=64)
    assert framer.feed(OPTIONS[:64]) == []
    with pytest.raises(SipFramingError) as caught:
        StreamFramer(max_body_bytes=4).feed(OPTIONS)
    assert caught.value.reason == "Content-Length 5 exceeds 4"
    assert caught.value.status_hint == 513
