"""A banned LAN source's datagrams dropped before parsing: only what the core would refuse."""

from __future__ import annotations

import msgspec
import pytest

from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import PolicySettings
from gateway.sip.early_drop import droppable_when_banned
from gateway.sip.edge import request_user
from gateway.sip.message import SipRequest, parse_message

ENGINE = PolicyEngine()


def lan_engine() -> PolicyEngine:
    """An engine whose LAN is a loopback range of these tests' own (127.0.36.0/24)."""
    return PolicyEngine(msgspec.convert({"allowlist": {"lan": ["127.0.36.0/24"]}}, PolicySettings))


def _request(first_line: str) -> bytes:
    method = first_line.split(" ", 1)[0].upper()
    return (
        f"{first_line}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bK-1\r\n"
        "From: <sip:scan@192.0.2.50>;tag=a\r\nTo: <sip:6001@192.0.2.1>\r\n"
        f"Call-ID: x@192.0.2.50\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "first_line",
    [
        "OPTIONS sip:6001@192.0.2.1 SIP/2.0",
        "REGISTER sip:192.0.2.1 SIP/2.0",
        "BYE sip:6001@192.0.2.1 SIP/2.0",
        "INVITE sip:6001@192.0.2.1 SIP/2.0",
        "INVITE sip:192.0.2.1 SIP/2.0",
        "INVITE tel:+442079460000 SIP/2.0",
        "invite sip:6001@192.0.2.1 SIP/2.0",
        "GARBAGE",
    ],
)
def test_refused_whatever_it_says_is_dropped(first_line: str) -> None:
    assert droppable_when_banned(_request(first_line), ENGINE.is_emergency)


def test_plain_garbage_is_dropped() -> None:
    assert droppable_when_banned(b"\x00\x01\x02 not sip at all", ENGINE.is_emergency)
    assert droppable_when_banned(b"\r\n\r\n", ENGINE.is_emergency)


@pytest.mark.parametrize(
    "first_line",
    [
        # Emergency calls pass a ban (invariant 5): the core must see them.
        "INVITE sip:112@192.0.2.1 SIP/2.0",
        "INVITE sip:911@192.0.2.1;user=phone SIP/2.0",
        "INVITE tel:112 SIP/2.0",
        "INVITE sips:999@192.0.2.1 SIP/2.0",
        # Escapes or parameters in the user part: the parser decides.
        "INVITE sip:%31%31%32@192.0.2.1 SIP/2.0",
        "INVITE sip:112;phone-context=x@192.0.2.1 SIP/2.0",
        # A response answers one of the gateway's own requests.
        "SIP/2.0 200 OK",
    ],
)
def test_what_the_core_may_accept_is_kept(first_line: str) -> None:
    assert not droppable_when_banned(_request(first_line), ENGINE.is_emergency)


def test_leading_blank_lines_go_to_the_core() -> None:
    data = b"\r\n" + _request("INVITE sip:112@192.0.2.1 SIP/2.0")
    assert not droppable_when_banned(data, ENGINE.is_emergency)


def test_the_user_read_from_the_first_line_is_the_parsers() -> None:
    for line in ("INVITE sip:112@192.0.2.1 SIP/2.0", "INVITE tel:911;x=y SIP/2.0"):
        message = parse_message(_request(line))
        assert isinstance(message, SipRequest)
        user = request_user(message)
        assert user is not None and ENGINE.is_emergency(user)
        assert not droppable_when_banned(_request(line), ENGINE.is_emergency)


def test_banned_reads_without_counting() -> None:
    engine = lan_engine()
    assert not engine.banned("127.0.36.50", 0.0)
    for now in range(200):  # a flood from one LAN source earns a ban
        engine.check_request("lan", "127.0.36.50", "OPTIONS", None, None, True, now / 1000)
    counters = dict(engine.counters())
    assert engine.banned("127.0.36.50", 1.0)
    assert not engine.banned("127.0.36.51", 1.0)
    assert dict(engine.counters()) == counters


def test_a_drop_before_parsing_is_reported_as_a_parsed_one_folded() -> None:
    # The operator's view of a banned source does not change with where it was dropped: the
    # first drop of a fold window is a ban.active security event, the rest are its repeats.
    engine = lan_engine()
    for now in range(200):
        engine.check_request("lan", "127.0.36.50", "OPTIONS", None, None, True, now / 1000)
    engine.drain_events()
    # Within the fold window of the parsed drops that followed the ban: folded into them.
    assert not engine.note_banned_drop("127.0.36.50", 1.0)
    later = 1.0 + engine.settings.events.coalesce_seconds
    assert engine.note_banned_drop("127.0.36.50", later)
    assert not engine.note_banned_drop("127.0.36.50", later + 0.001)  # folded into that one
    assert not engine.note_banned_drop("127.0.36.51", later)  # not banned: nothing
    (event,) = engine.drain_events()
    assert (event.source, event.rule, event.action) == ("127.0.36.50", "ban.active", "drop")
