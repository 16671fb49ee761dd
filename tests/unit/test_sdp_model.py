"""SDP model: lossless round trip, targeted rebuilds, attribute helpers (RFC 8866)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sdp.errors import SdpError
from gateway.sdp.model import (
    Connection,
    RtcpAttribute,
    RtpMap,
    SessionDescription,
)

# Odd spacing, a vendor attribute, b= and i= lines, Latin-1 in s=: all must survive.
PHONE_OFFER = (
    b"v=0\r\n"
    b"o=Polycom  1234 5678 IN IP4 192.0.2.23\r\n"
    b"s=Caf\xe9 phone\r\n"
    b"i=desk\r\n"
    b"c=IN IP4 192.0.2.23\r\n"
    b"b=AS:84\r\n"
    b"t=0 0\r\n"
    b"a=X-vendor:thing\r\n"
    b"m=audio 2222 RTP/AVP 0 8 101\r\n"
    b"b=TIAS:64000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=ptime:20\r\n"
    b"a=rtcp:2229 IN IP4 192.0.2.23\r\n"
    b"a=sendrecv\r\n"
    b"m=video 2224/2 RTP/AVP 96\r\n"
    b"c=IN IP4 192.0.2.24\r\n"
    b"a=rtpmap:96 H264/90000\r\n"
    b"a=empty:\r\n"
)


def test_round_trip_is_byte_for_byte() -> None:
    assert bytes(SessionDescription.parse(PHONE_OFFER)) == PHONE_OFFER


def test_round_trip_keeps_lf_line_endings() -> None:
    lf = PHONE_OFFER.replace(b"\r\n", b"\n")
    sd = SessionDescription.parse(lf)
    assert sd.eol == "\n"
    assert bytes(sd) == lf


def test_round_trip_of_str_input() -> None:
    text = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"
    assert str(SessionDescription.parse(text)) == text


def test_parsed_fields() -> None:
    sd = SessionDescription.parse(PHONE_OFFER)
    assert sd.version == 0
    assert (sd.origin.username, sd.origin.sess_id, sd.origin.sess_version) == (
        "Polycom",
        "1234",
        5678,
    )
    assert sd.origin.address == "192.0.2.23"
    assert sd.connection is not None and sd.connection.address == "192.0.2.23"
    assert sd.attributes == [("X-vendor", "thing")]
    audio, video = sd.media
    assert (audio.media, audio.port, audio.port_count, audio.proto) == (
        "audio",
        2222,
        None,
        "RTP/AVP",
    )
    assert audio.formats == ["0", "8", "101"]
    assert audio.connection is None
    assert audio.effective_connection is sd.connection
    assert (video.port, video.port_count, video.formats) == (2224, 2, ["96"])
    assert video.connection is not None and video.connection.host == "192.0.2.24"
    assert video.get_attribute("empty") == ""
    assert audio.get_attribute("missing") is None


def test_only_changed_lines_are_rebuilt() -> None:
    sd = SessionDescription.parse(PHONE_OFFER)
    sd.origin.bump_version()
    sd.media[0].port = 40000
    out = bytes(sd)
    expected = PHONE_OFFER.replace(
        b"o=Polycom  1234 5678 IN IP4 192.0.2.23", b"o=Polycom 1234 5679 IN IP4 192.0.2.23"
    ).replace(b"m=audio 2222 RTP/AVP 0 8 101", b"m=audio 40000 RTP/AVP 0 8 101")
    assert out == expected


def test_connection_replace_add_and_remove() -> None:
    sd = SessionDescription.parse(PHONE_OFFER)
    sd.connection = Connection("203.0.113.5")
    sd.media[0].connection = Connection("2001:db8::1")
    sd.media[1].connection = None
    text = bytes(sd).decode("utf-8", errors="surrogateescape")
    assert "c=IN IP4 203.0.113.5\r\nb=AS:84\r\n" in text
    # A new media-level c= goes after i= and before b= (RFC 8866 §5 order).
    assert "m=audio 2222 RTP/AVP 0 8 101\r\nc=IN IP6 2001:db8::1\r\nb=TIAS:64000\r\n" in text
    assert "192.0.2.24" not in text


def test_session_connection_added_before_t_line() -> None:
    sd = SessionDescription.parse("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\nm=audio 1 RTP/AVP 0\n")
    sd.connection = Connection("192.0.2.1")
    assert str(sd) == (
        "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 1 RTP/AVP 0\n"
    )


def test_attribute_helpers() -> None:
    sd = SessionDescription.parse(PHONE_OFFER)
    audio = sd.media[0]
    assert audio.get_attributes("rtpmap") == ["0 PCMU/8000", "101 telephone-event/8000"]
    audio.set_attribute("ptime", "30")
    assert audio.remove_attribute("rtpmap") == 2
    audio.add_attribute("crypto", "1 X inline:abc")
    assert audio.attributes == [
        ("fmtp", "101 0-15"),
        ("ptime", "30"),
        ("rtcp", "2229 IN IP4 192.0.2.23"),
        ("sendrecv", None),
        ("crypto", "1 X inline:abc"),
    ]
    audio.set_attribute("fresh")
    assert audio.attributes[-1] == ("fresh", None)
    assert "a=fresh\r\nm=video" in str(sd)


def test_rtpmap_fmtp_rtcp_lookups() -> None:
    audio = SessionDescription.parse(PHONE_OFFER).media[0]
    assert audio.rtpmap("101") == RtpMap("101", "telephone-event", 8000, None)
    assert audio.rtpmap("8") is None
    assert audio.fmtp("101") == "0-15"
    assert audio.rtcp == RtcpAttribute(2229, "192.0.2.23", "IN", "IP4")
    audio.rtcp = RtcpAttribute(40001)
    assert audio.get_attribute("rtcp") == "40001"
    audio.rtcp = None
    assert audio.rtcp is None


def test_rtpmap_with_channels() -> None:
    sd = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\nm=audio 1 RTP/AVP 111\n"
        "a=rtpmap:111 opus/48000/2\n"
    )
    assert sd.media[0].rtpmap("111") == RtpMap("111", "opus", 48000, 2)


def test_direction_defaults_and_session_level() -> None:
    sd = SessionDescription.parse(
        "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\na=recvonly\n"
        "m=audio 1 RTP/AVP 0\nm=audio 3 RTP/AVP 0\na=inactive\n"
    )
    first, second = sd.media
    assert first.direction == "recvonly"  # inherited from the session level
    assert second.direction == "inactive"
    second.direction = "sendonly"
    assert second.attributes == [("sendonly", None)]
    plain = SessionDescription.parse("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 1 RTP/AVP 0\n")
    assert plain.media[0].direction == "sendrecv"
    with pytest.raises(ValueError):
        first.direction = "sideways"


def test_rtcp_mux_flag() -> None:
    sd = SessionDescription.parse("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nm=audio 1 RTP/AVP 0\n")
    md = sd.media[0]
    assert md.rtcp_mux is False
    md.rtcp_mux = True
    md.rtcp_mux = True
    assert md.attributes == [("rtcp-mux", None)]
    md.rtcp_mux = False
    assert md.attributes == []


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "empty SDP body"),
        (b"hello world\r\n", 400, "SDP must start with a v= line"),
        (b"v=0\r\ns=-\r\n", 400, "SDP has no o= line"),
        (b"v=0\r\no=- 1 1 IN IP4\r\n", 400, "o= line needs 6 fields, got 5"),
        (b"v=0\r\no=- 1 x IN IP4 1.1.1.1\r\n", 400, "o= session version 'x' is not a number"),
        (
            b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 70000 RTP/AVP 0\r\n",
            400,
            "m= port '70000' is not a port number",
        ),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nc=IN IP4\r\n", 400, "c= line needs 3 fields, got 2"),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nxyz\r\n", 400, "not an SDP line: 'xyz'"),
        (b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\na=\r\n", 400, "attribute line without a name: 'a='"),
    ],
)
def test_garbage_is_refused_with_a_reason(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(body)
    assert info.value.status_hint == status
    assert info.value.reason == reason


def test_limits() -> None:
    head = b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\n"
    many = head + b"m=audio 1 RTP/AVP 0\r\n" * 65
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(many)
    assert info.value.reason == "more than 64 m= lines"
    assert info.value.status_hint == 488
    assert len(SessionDescription.parse(head + b"m=audio 1 RTP/AVP 0\r\n" * 64).media) == 64
    big = head + b"a=x:" + b"y" * 65536 + b"\r\n"
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(big)
    assert info.value.reason == f"SDP body of {len(big)} bytes exceeds 65536"


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_parse_or_raise_sdp_error(data: bytes) -> None:
    try:
        sd = SessionDescription.parse(data)
    except SdpError as exc:
        assert exc.status_hint in (400, 488)
        return
    bytes(sd)


@given(st.lists(st.sampled_from(PHONE_OFFER.split(b"\r\n")[1:-1]), max_size=25))
@settings(max_examples=300, deadline=None)
def test_shuffled_real_lines_never_crash(lines: list[bytes]) -> None:
    data = b"v=0\r\n" + b"\r\n".join(lines) + b"\r\n"
    try:
        sd = SessionDescription.parse(data)
    except SdpError:
        return
    again = SessionDescription.parse(bytes(sd))
    assert bytes(again) == bytes(sd)


def test_out_of_order_connection_keeps_its_place() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nb=AS:84\r\nc=IN IP4 1.1.1.2\r\nt=0 0\r\n"
    sd = SessionDescription.parse(body)
    assert bytes(sd) == body
    sd.connection = Connection("1.1.1.3")
    assert bytes(sd) == body.replace(b"1.1.1.2", b"1.1.1.3")
