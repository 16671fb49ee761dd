"""Stream glue for SIP over TCP and TLS (RFC 3261 §18.3, RFC 5626 §4.4.1).

A ``SipStreamConnection`` frames bytes with the sans-IO ``StreamFramer`` and hands whole
messages to the core. It also enforces what a stream peer cannot be trusted to do:
- a connection that sends part of a message and stalls is closed after ``idle_timeout``;
- an accepted connection that carries no SIP message within ``idle_timeout`` of being
  established (``close_if_unused``) is closed: a socket held open for nothing is a slot taken
  from the listener's limits ([limits], ``gateway.limits``);
- framing that cannot be recovered (bad Content-Length, oversize) is answered if possible and
  the connection closed, since the next message's start can no longer be found;
- CRLF CRLF keep-alive pings are answered with a CRLF pong.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import cast

from gateway.limits import IDLE_TIMEOUT
from gateway.sip.errors import SipFramingError, SipParseError
from gateway.sip.framing import KeepAlive, StreamFramer
from gateway.sip.message import SipRequest, SipResponse

log = logging.getLogger("gateway.transport")

_ids = itertools.count(1)

MessageHandler = Callable[["SipStreamConnection", SipRequest | SipResponse], None]
ErrorHandler = Callable[["SipStreamConnection", SipParseError], None]
CloseHandler = Callable[["SipStreamConnection", str], None]
#: Told the counter name of a limit that closed the connection (``gateway.limits``).
LimitHandler = Callable[[str], None]


class SipStreamConnection(asyncio.Protocol):
    """One TCP or TLS connection carrying SIP."""

    def __init__(
        self,
        *,
        on_message: MessageHandler,
        on_error: ErrorHandler,
        on_close: CloseHandler,
        idle_timeout: float = 30.0,
        max_message_bytes: int = 65535,
        max_header_bytes: int = 16384,
        max_headers: int | None = None,
        close_if_unused: bool = False,
        on_limit: LimitHandler | None = None,
    ) -> None:
        self.id = next(_ids)
        self._on_message = on_message
        self._on_error = on_error
        self._on_close = on_close
        self._framer = StreamFramer(
            max_header_bytes=max_header_bytes,
            max_body_bytes=max_message_bytes,
            max_headers=max_headers,
        )
        self._idle_timeout = idle_timeout
        self._stall_timer: asyncio.TimerHandle | None = None
        self._unused_timer: asyncio.TimerHandle | None = None
        self._close_if_unused = close_if_unused
        self._on_limit = on_limit
        #: Called once when the connection ends, established or not (a listener's lease).
        self.close_hooks: list[Callable[[], None]] = []
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_pong = 0.0
        self.closed = False
        self.close_reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport (the CLI runs uvloop): cast.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        if self._close_if_unused:
            self._unused_timer = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._limit_close, "no SIP message on the connection"
            )

    def data_received(self, data: bytes) -> None:
        try:
            items = self._framer.feed(data)
        except SipFramingError as exc:
            self._on_error(self, exc)
            self.close(f"framing lost: {exc.reason}")
            return
        for item in items:
            if isinstance(item, KeepAlive):
                if item.ping:
                    self.write(b"\r\n")
                else:
                    self.last_pong = asyncio.get_running_loop().time()
            elif isinstance(item, SipParseError):
                self._on_error(self, item)
            else:
                if self._unused_timer is not None:
                    self._unused_timer.cancel()
                    self._unused_timer = None
                self._on_message(self, item)
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._framer.buffered and not self.closed:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(
                self._idle_timeout, self._limit_close, "incomplete message stalled"
            )

    def _limit_close(self, reason: str) -> None:
        if self.closed or self.close_reason:
            return
        if self._on_limit is not None:
            self._on_limit(IDLE_TIMEOUT)
        self.close(reason)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        for timer in (self._stall_timer, self._unused_timer):
            if timer is not None:
                timer.cancel()
        self.closed = True
        reason = self.close_reason or (str(exc) if exc else "closed by peer")
        self._on_close(self, reason)
        hooks, self.close_hooks = self.close_hooks, []
        for hook in hooks:
            hook()

    def abandon(self, reason: str) -> None:
        """The connection never got established (a TLS handshake that failed or timed out):
        tell the owner it is gone, as if it had been lost."""
        self.close_reason = self.close_reason or reason
        self.connection_lost(None)
