"""Fuzz target 1: the SIP parser and the stream framer (RFC 3261 §7, §18.3, §25).

Invariants checked on every input:

- ``parse_message`` either returns a message or raises SipParseError whose ``status_hint`` is
  a 4xx (or 501, 505, 513, the 5xx the parser documents); nothing else escapes.
- A parsed message, serialised and parsed again, gives an equal message (start line, headers
  but Content-Length, which serialising always writes, and body), and serialising that one
  gives the same bytes (a fixed point).
- ``StreamFramer`` fed the input in one piece, and again cut at points the input chooses,
  yields only messages, SipParseError items and keep-alives (or raises SipFramingError), and
  the same messages and errors either way.
"""

from __future__ import annotations

from gateway.sip.errors import SipFramingError, SipParseError
from gateway.sip.framing import KeepAlive, StreamFramer
from gateway.sip.message import SipRequest, SipResponse, parse_message
from tests.fuzz.engine import Violation
from tests.fuzz.seeds import sip_messages

FRAMED = False
TOKENS = [
    t.encode()
    for t in (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "SIP/2.0",
        "SIP/2.0 200 OK",
        "Via: ",
        "From: ",
        "To: ",
        "Call-ID: ",
        "CSeq: ",
        "Contact: ",
        "Route: ",
        "Record-Route: ",
        "Content-Length: ",
        "Content-Type: ",
        "Max-Forwards: ",
        "Expires: ",
        ";tag=",
        ";branch=z9hG4bK",
        ";lr",
        ";rport",
        ";received=",
        ";transport=tls",
        "sip:",
        "sips:",
        "tel:",
        "<sip:a@b>",
        "%00",
        "%41",
        "[::1]",
        ":5060",
        '"a\\"b"',
        "v: ",
        "f: ",
        "t: ",
        "i: ",
        "m: ",
        "l: ",
        "k: ",
        "c: ",
        "*",
        "Require: ",
        "Supported: ",
    )
]

#: Statuses a parse error may hint besides 4xx: 501 (unknown method in a CSeq mismatch),
#: 505 (SIP version), 513 (too large).
_ALLOWED_5XX = frozenset({501, 505, 513})


def seeds() -> list[bytes]:
    return sip_messages()


def _status_ok(error: SipParseError) -> None:
    if not (400 <= error.status_hint <= 499 or error.status_hint in _ALLOWED_5XX):
        raise Violation(f"parse error with status hint {error.status_hint}: {error.reason}")
    if "\r" in error.reason or "\n" in error.reason:
        raise Violation("parse error reason breaks a line")


def _key(message: SipRequest | SipResponse) -> tuple[object, ...]:
    headers = [(n, v) for n, v in message.headers if n != "Content-Length"]
    return type(message), message.start_line(), headers, message.body


def check_parse(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as error:
        _status_ok(error)
        return
    wire = bytes(message)
    try:
        again = parse_message(wire, max_size=len(wire) + 1)
    except SipParseError as error:
        raise Violation(f"serialised message does not parse again: {error.reason}") from error
    if _key(again) != _key(message):
        raise Violation(f"round trip changed the message:\n{_key(message)}\n{_key(again)}")
    if bytes(again) != wire:
        raise Violation("serialising is not a fixed point")


def _frame(pieces: list[bytes]) -> list[object]:
    framer = StreamFramer()
    seen: list[object] = []
    for piece in pieces:
        try:
            items = framer.feed(piece)
        except SipFramingError as error:
            _status_ok(error)
            seen += [_item(i) for i in error.framed_before]
            seen.append(("lost", error.status_hint))
            return seen
        seen += [_item(i) for i in items]
    return seen


def _item(item: object) -> object:
    if isinstance(item, SipParseError):
        _status_ok(item)
        return ("error", item.status_hint, item.reason)
    if isinstance(item, SipRequest | SipResponse):
        return ("message", bytes(item))
    if isinstance(item, KeepAlive):
        return None  # a ping split across reads comes out as pong + ping: not compared
    raise Violation(f"framer produced {type(item).__name__}")


def check_framing(data: bytes) -> None:
    whole = [i for i in _frame([data]) if i is not None]
    # Cut points from the input itself, so a mutation moves them.
    step = 1 + (data[0] % 97 if data else 0)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    cut = [i for i in _frame(pieces) if i is not None]
    if whole != cut:
        raise Violation(f"framer differs when fed in pieces of {step}:\n{whole}\n{cut}")


def check(data: bytes) -> None:
    check_parse(data)
    check_framing(data)
