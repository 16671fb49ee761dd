"""Framing SIP messages on a stream transport (TCP, TLS), and keep-alives.

Follows RFC 3261 §18.3 (on a stream, Content-Length is mandatory and is the only way to find
where a message ends), §7.5 (CRLFs before a start line are ignored) and RFC 5626 §4.4.1
(a double CRLF "ping" is answered with a single CRLF "pong"). RFC 4475 §3.1.2.3 and §3.3.9: a
negative, malformed or duplicated Content-Length leaves no way to find the next message, so the
framer stops and the connection must be closed.

A message that is framed correctly but invalid inside comes out as a SipParseError item: the
connection owner answers it (400, 505 ...) and carries on with the next message.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.errors import SipFramingError, SipParseError
from gateway.sip.message import SipRequest, SipResponse, build_partial, parse_message, split_message

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"


@dataclass
class KeepAlive:
    """A keep-alive between messages (RFC 5626 §4.4.1)."""

    #: True for a CRLFCRLF ping (answer with a CRLF pong); False for a lone CRLF pong.
    ping: bool


FramedItem = SipRequest | SipResponse | SipParseError | KeepAlive


class StreamFramer:
    """Turns the bytes of one stream connection into messages, parse errors and keep-alives.

    A ping split across reads comes out as a pong and then a ping: a lone CRLF at the end of
    the data is reported at once (a pong must not wait for the next read), and a CRLF right
    after it completes the ping.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = 16384,
        max_body_bytes: int = 65536,
        max_headers: int | None = None,
    ) -> None:
        #: Limit on the start line and headers, CRLFCRLF included.
        self.max_header_bytes = max_header_bytes
        #: Limit on Content-Length.
        self.max_body_bytes = max_body_bytes
        #: Limit on the number of header fields; a message over it is a 513 item, and the
        #: stream goes on (its framing is intact).
        self.max_headers = max_headers
        self._buffer = bytearray()
        self._lone_crlf = False
        self._lost: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet framed."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramedItem]:
        """Add received bytes; return every item now complete, in order.

        Raises SipFramingError once framing is lost (and on every later call): answer with its
        ``status_hint`` if ``partial`` allows, handle ``framed_before``, then close.
        """
        if self._lost is not None:
            raise SipFramingError(f"framing already lost: {self._lost}")
        self._buffer += data
        items: list[FramedItem] = []
        try:
            while self._frame_next(items):
                pass
        except SipFramingError as error:
            self._lost = error.reason
            error.framed_before = list(items)
            raise
        return items

    def _frame_next(self, items: list[FramedItem]) -> bool:
        buffer = self._buffer
        if not buffer:
            return False
        if buffer[0] == 0x0D:
            if len(buffer) < 2:
                return False
            if buffer[:2] == _CRLF:
                return self._frame_keepalive(items)
        self._lone_crlf = False
        end = buffer.find(_PING)
        if end < 0 or end + 4 > self.max_header_bytes:
            if len(buffer) > self.max_header_bytes or end >= 0:
                raise self._error(
                    f"headers longer than {self.max_header_bytes} bytes",
                    513,
                    min(len(buffer), self.max_header_bytes),
                    limit="limit_max_header_bytes",
                )
            return False
        head_length = end + 4
        length = self._content_length(head_length)
        if length > self.max_body_bytes:
            raise self._error(
                f"Content-Length {length} exceeds {self.max_body_bytes}",
                513,
                head_length,
                limit="limit_max_message_bytes",
            )
        total = head_length + length
        if len(buffer) < total:
            return False
        chunk = bytes(buffer[:total])
        del buffer[:total]
        try:
            items.append(parse_message(chunk, max_size=total, max_headers=self.max_headers))
        except SipParseError as error:
            items.append(error)
        return True

    def _frame_keepalive(self, items: list[FramedItem]) -> bool:
        buffer = self._buffer
        if buffer[:4] == _PING or self._lone_crlf:
            del buffer[: 4 if buffer[:4] == _PING else 2]
            self._lone_crlf = False
            items.append(KeepAlive(ping=True))
            return True
        if len(buffer) == 3 and buffer[2] == 0x0D:
            return False  # may be the start of a whole ping
        del buffer[:2]
        self._lone_crlf = not buffer
        items.append(KeepAlive(ping=False))
        return True

    def _content_length(self, head_length: int) -> int:
        split = split_message(bytes(self._buffer[:head_length]))
        values = [value for name, value in split.headers if name == "Content-Length"]
        if not values:
            raise self._error("missing Content-Length on a stream transport", 400, head_length)
        if len(values) > 1:
            raise self._error("more than one Content-Length header", 400, head_length)
        text = values[0]
        if not text.isdigit() or not text.isascii() or len(text.lstrip("0")) > 12:
            raise self._error(
                f"negative or malformed Content-Length {text[:20]!r}", 400, head_length
            )
        return int(text)

    def _error(
        self, reason: str, status: int, head_length: int, *, limit: str = ""
    ) -> SipFramingError:
        split = split_message(bytes(self._buffer[:head_length]))
        partial, looks_like_response = build_partial(split, b"")
        error = SipFramingError(reason, status, partial, looks_like_response=looks_like_response)
        error.limit = limit
        return error
