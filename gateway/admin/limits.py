"""Limits of the admin HTTP(S) listener and of the control socket ([limits]; docs/robustness.md
"Limits").

aiohttp's server has none of the SIP listeners' limits: it accepts every connection, does a TLS
handshake for anyone, keeps an idle keep-alive connection for an hour and waits for ever for
the end of a request's headers (slow-loris). ``AdminListener`` accepts sockets itself, as
``gateway.transport.listener.StreamListener`` does: a source over
``admin_connections_per_source`` or a listener at ``admin_connections_total`` is closed at
accept, before any TLS; an admitted socket goes to the loop with the TLS context and
``tls_handshake_timeout``, and its aiohttp protocol is wrapped in a ``GuardedProtocol`` that

- closes the connection when no complete request head (RFC 9112 §2.1: request line, fields,
  empty line) came within ``idle_timeout`` of the connection opening or of the previous
  request's end: an idle keep-alive connection and a slow-loris alike (``HeadWatch``);
- answers 431 (RFC 6585 §5) and closes when a request head grows past
  ``admin_max_header_bytes``;
- gives its place back when the connection ends, however it ends.

``limits_middleware`` answers 413 (RFC 9110 §15.5.14) to a declared body over
``admin_max_body_bytes`` and 429 (RFC 6585 §4) to a source over ``admin_requests_per_second``
(``RequestRate``). Every refusal is counted (``gateway_limit_hits_total{limit="admin_..."}``);
the per-source ones are reported once per source and minute, the rest folded into ``repeats``.

The control socket is local and group-checked: only its total is bounded
(``control_connections``), by ``limited_factory`` around its aiohttp protocol factory.

``HeadWatch`` and ``RequestRate`` are sans-IO (bytes and the time in, a verdict out); the rest
is the asyncio glue around them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from gateway.config import LimitsSettings
from gateway.limits import (
    ADMIN_CONNECTIONS_PER_SOURCE,
    ADMIN_CONNECTIONS_TOTAL,
    ADMIN_IDLE_TIMEOUT,
    ADMIN_MAX_BODY_BYTES,
    ADMIN_MAX_HEADER_BYTES,
    ADMIN_REQUEST_RATE,
    ADMIN_TLS_HANDSHAKE_TIMEOUT,
    CONTROL_CONNECTIONS,
    ConnectionLimiter,
    Lease,
    LimitCounters,
)
from gateway.policy.events import SecurityEvent

__all__ = [
    "AdminListener",
    "GuardedProtocol",
    "HeadWatch",
    "RequestRate",
    "limited_factory",
    "limits_middleware",
]

log = logging.getLogger("gateway.admin")

SecurityHandler = Callable[[SecurityEvent], None]
ProtocolFactory = Callable[[], asyncio.Protocol]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Pending connections the kernel queues for the accept loop.
BACKLOG = 128
#: Seconds between two reports of the same source hitting the same limit.
REPORT_INTERVAL = 60.0
_END_OF_HEAD = b"\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\n"
    b"request header fields too large\n"
)


# --------------------------------------------------------------------------- sans-IO


class HeadWatch:
    """One connection's wait for a request head.

    Waiting (since the connection opened, or since the previous request ended) the connection
    has ``idle_timeout`` seconds to deliver a complete head of at most ``max_header_bytes``;
    once the head is complete the request is the application's, until ``request_done``.
    """

    def __init__(self, now: float, *, max_header_bytes: int, idle_timeout: float) -> None:
        self._max = max_header_bytes
        self._idle = idle_timeout
        #: When the wait for a head began; None while a request is being handled.
        self._waiting_since: float | None = now
        self._head_bytes = 0
        #: The last bytes seen, so an end of head split across two reads is still found.
        self._tail = b""
        self._requests = 0

    def received(self, data: bytes) -> bool:
        """Bytes from the client; False when the head being read is over the limit."""
        if self._waiting_since is None:
            return True  # a body, or a pipelined request: the application reads it
        seen = self._tail + data
        end = seen.find(_END_OF_HEAD)
        if end < 0:
            self._head_bytes += len(data)
            self._tail = seen[-3:]
            return self._head_bytes <= self._max
        head = self._head_bytes + end + len(_END_OF_HEAD) - len(self._tail)
        self._head_bytes, self._tail = 0, b""
        if head > self._max:
            return False
        self._waiting_since = None
        return True

    def request_started(self) -> None:
        """The application took a request (its head is complete, whatever the bytes said)."""
        self._requests += 1
        self._waiting_since = None

    def request_done(self, now: float) -> None:
        """The application answered; the wait for the next head starts now."""
        self._requests = max(0, self._requests - 1)
        if self._requests == 0:
            self._waiting_since = now
            self._head_bytes, self._tail = 0, b""

    def deadline(self) -> float | None:
        """When the connection is to be closed unless a head completes; None: no deadline."""
        if self._waiting_since is None:
            return None
        return self._waiting_since + self._idle


class RequestRate:
    """Requests per second from each source: a token bucket each (bursts of twice the rate).

    ``allow`` says whether a request may go on, and ``should_report`` whether a refusal is the
    first of its source within ``REPORT_INTERVAL`` (the others are folded into the next one).
    """

    def __init__(self, rate: float, *, max_sources: int = 10_000) -> None:
        self.rate = rate
        # At least one request, however low the rate (a bucket under 1 would refuse all).
        self.burst = max(2 * rate, 1.0)
        self._max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}
        self._reported: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def allow(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if source not in self._buckets and len(self._buckets) >= self._max_sources:
            # Many sources: forget those whose bucket has refilled (they lose nothing).
            full = now - self.burst / self.rate
            self._buckets = {s: b for s, b in self._buckets.items() if b[1] > full}
        self._buckets[source] = (tokens, now)
        return allowed

    def should_report(self, source: str, now: float) -> int | None:
        """None: fold this refusal; else report it with this many folded before it."""
        last = self._reported.get(source)
        if last is not None and now - last < REPORT_INTERVAL:
            self._folded[source] = self._folded.get(source, 0) + 1
            return None
        if len(self._reported) >= self._max_sources:
            self._reported = {s: t for s, t in self._reported.items() if now - t < REPORT_INTERVAL}
        self._reported[source] = now
        return self._folded.pop(source, 0)


# --------------------------------------------------------------------------- glue


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the head watch and the lease."""

    def __init__(self, inner: asyncio.Protocol, listener: AdminListener, lease: Lease) -> None:
        self._inner = inner
        self._listener = listener
        self._lease = lease
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.watch = HeadWatch(
            self._loop.time(),
            max_header_bytes=listener.limits.admin_max_header_bytes,
            idle_timeout=listener.limits.idle_timeout,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._cut = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._listener.guards[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._cut:
            return
        if not self.watch.received(data):
            self._listener.counters.hit(ADMIN_MAX_HEADER_BYTES)
            self._cut = True
            assert self._transport is not None
            self._transport.write(_TOO_LARGE)
            self._transport.close()
            return
        self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._listener.guards.pop(self._transport, None)
        self._lease.release()
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self.watch.request_started()
        self._arm()

    def request_done(self) -> None:
        self.watch.request_done(self._loop.time())
        self._arm()

    def _arm(self) -> None:
        deadline = self.watch.deadline()
        if deadline == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._cut or self._transport is None:
            return
        self._cut = True
        self._listener.counters.hit(ADMIN_IDLE_TIMEOUT)
        # abort, not close: a client that reads nothing must not hold a TLS close_notify.
        self._transport.abort()


@dataclass
class AdminListener:
    """One admin (or metrics) listening socket with its connection limits."""

    name: str
    limits: LimitsSettings
    counters: LimitCounters
    factory: ProtocolFactory
    tls: ssl.SSLContext | None = None
    on_security: SecurityHandler | None = None

    def __post_init__(self) -> None:
        self.limiter = ConnectionLimiter(
            self.name,
            "admin",
            per_source=self.limits.admin_connections_per_source,
            total=self.limits.admin_connections_total,
            counters=self.counters,
            report_interval=REPORT_INTERVAL,
            per_source_counter=ADMIN_CONNECTIONS_PER_SOURCE,
            total_counter=ADMIN_CONNECTIONS_TOTAL,
        )
        #: Open connections by transport, for the middleware to find their head watch.
        self.guards: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self.rate = RequestRate(self.limits.admin_requests_per_second)
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    def close(self) -> None:
        """Stop accepting; open connections are aiohttp's to shut down (runner cleanup)."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for task in list(self._pending):
            task.cancel()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def report(self, event: SecurityEvent) -> None:
        if self.on_security is not None:
            self.on_security(event)
        else:
            log.warning("%s: %s from %s (%s)", self.name, event.rule, event.source, event.detail)

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:
                # Out of descriptors: the backlog waits; retrying at once would spin.
                log.warning("%s: accept failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            lease = self.limiter.admit(str(address[0]), loop.time())
            for event in self.limiter.drain_events():
                self.report(event)
            if lease is None:
                sock.close()  # before a byte of TLS or HTTP
                continue
            sock.setblocking(False)
            task = loop.create_task(self._hand_over(sock, lease))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _hand_over(self, sock: socket.socket, lease: Lease) -> None:
        loop = asyncio.get_running_loop()
        made: list[GuardedProtocol] = []

        def protocol() -> GuardedProtocol:
            guarded = GuardedProtocol(self.factory(), self, lease)
            made.append(guarded)
            return guarded

        try:
            if self.tls is None:
                await loop.connect_accepted_socket(protocol, sock)
            else:
                await loop.connect_accepted_socket(
                    protocol,
                    sock,
                    ssl=self.tls,
                    ssl_handshake_timeout=self.limits.tls_handshake_timeout,
                )
        except asyncio.CancelledError:
            lease.release()
            sock.close()
            raise
        except ConnectionAbortedError:
            # asyncio and uvloop both abort a handshake past its timeout with this error.
            self.counters.hit(ADMIN_TLS_HANDSHAKE_TIMEOUT)
            lease.release()
            sock.close()
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: connection not established: %s", self.name, exc)
            lease.release()
            sock.close()


def limits_middleware(listener: AdminListener) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The per-request limits of ``listener``'s application: body size, request rate, and the
    head watch told when a request starts and ends."""
    limits = listener.limits

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        guard = listener.guards.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_started()
        try:
            return await _limited(request, handler)
        finally:
            if guard is not None:
                guard.request_done()

    async def _limited(request: web.Request, handler: Handler) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        source = request.remote or "?"
        if not listener.rate.allow(source, now):
            listener.counters.hit(ADMIN_REQUEST_RATE)
            folded = listener.rate.should_report(source, now)
            if folded is not None:
                listener.report(
                    SecurityEvent(
                        now,
                        "admin",
                        source,
                        "",
                        "limit.admin-request-rate",
                        "drop",
                        status=429,
                        detail=f"{listener.name}: over {limits.admin_requests_per_second:g} "
                        "requests a second from this source",
                        repeats=folded,
                    )
                )
            return web.json_response(
                {"error": "too many requests; slow down"},
                status=429,
                headers={"Retry-After": "1"},
            )
        length = request.content_length
        if length is not None and length > limits.admin_max_body_bytes:
            listener.counters.hit(ADMIN_MAX_BODY_BYTES)
            response = web.json_response(
                {"error": f"request body over {limits.admin_max_body_bytes} bytes"}, status=413
            )
            response.force_close()  # the body is never read: the connection cannot go on
            return response
        return await handler(request)

    return middleware


def limited_factory(
    inner: ProtocolFactory, total: int, counters: LimitCounters
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory that admits at most ``total`` open connections (the control socket:
    local and peer-checked, so only the total is bounded); the others are closed at once."""
    limiter = ConnectionLimiter(
        "control",
        "",
        per_source=total,
        total=total,
        counters=counters,
        per_source_counter=CONTROL_CONNECTIONS,
        total_counter=CONTROL_CONNECTIONS,
    )

    def factory() -> asyncio.Protocol:
        lease = limiter.admit("local", 0.0)
        if lease is None:
            return _Refused()
        return _Leased(inner(), lease)

    return factory


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Leased(asyncio.Protocol):
    """A protocol that gives its connection's place back when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, lease: Lease) -> None:
        self._inner = inner
        self._lease = lease

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lease.release()
        self._inner.connection_lost(exc)
