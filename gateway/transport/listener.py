"""A stream listener (TCP, or TLS over TCP) that applies the connection limits at accept.

asyncio's ``create_server`` hands a connection to the protocol only after the TLS handshake,
too late for "drop what must be dropped before it costs a parse": a flood of connections would
cost a handshake each. This listener accepts sockets itself, asks its ``ConnectionLimiter``
(``gateway.limits``) about each source first, closes the refused ones at once, and only then
hands a socket to the loop (``connect_accepted_socket``) with the TLS context and the handshake
timeout. A handshake that does not finish in ``tls_handshake_timeout`` ([limits]) is aborted and
counted; one that fails otherwise is only logged at debug (scanners do it all day).

Each admitted connection holds a ``Lease`` that is released when the connection ends, whether
it was established or not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from gateway.limits import TLS_HANDSHAKE_TIMEOUT, ConnectionLimiter, Lease, LimitCounters
from gateway.policy.events import SecurityEvent
from gateway.transport import freebind
from gateway.transport.stream import SipStreamConnection

log = logging.getLogger("gateway.transport")

ConnectionFactory = Callable[[], SipStreamConnection]
SecurityHandler = Callable[[SecurityEvent], None]
#: Whether a source address may connect at all (the WAN listener: the provider's addresses).
SourceFilter = Callable[[str], bool]

#: Pending connections the kernel queues for the accept loop.
BACKLOG = 511


class StreamListener:
    """One listening socket; its connections are ``SipStreamConnection``s from ``factory``."""

    def __init__(
        self,
        limiter: ConnectionLimiter,
        factory: ConnectionFactory,
        counters: LimitCounters,
        *,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout: float = 5.0,
        on_security: SecurityHandler | None = None,
        allow: SourceFilter | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self._allow = allow
        self._on_refused = on_refused
        self._factory = factory
        self._counters = counters
        self._tls = tls
        self._handshake_timeout = tls_handshake_timeout
        self._on_security = on_security
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port chosen when 0 was asked)."""
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if freebind.enabled.get():  # an HA promotion: the address may arrive a moment later
                freebind.allow_nonlocal(sock)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    def close(self) -> None:
        """Stop accepting; connections already handed over stay with their owner."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for task in list(self._pending):
            task.cancel()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:
                # Out of descriptors or memory: the backlog waits; retrying at once would
                # spin on the same error.
                log.warning("%s: accept failed: %s", self.limiter.name, exc)
                await asyncio.sleep(0.1)
                continue
            if self._allow is not None and not self._allow(str(address[0])):
                # Not a source this listener serves (the WAN listener is for the provider):
                # closed before the TLS handshake, which would cost far more than the accept.
                sock.close()
                if self._on_refused is not None:
                    self._on_refused()
                continue
            lease = self.limiter.admit(str(address[0]), loop.time())
            self._report()
            if lease is None:
                # Refused before a byte is read: no TLS, no framing, no parse.
                sock.close()
                continue
            sock.setblocking(False)
            task = loop.create_task(self._hand_over(sock, lease))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _hand_over(self, sock: socket.socket, lease: Lease) -> None:
        made: list[SipStreamConnection] = []

        def protocol() -> SipStreamConnection:
            conn = self._factory()
            conn.close_hooks.append(lease.release)
            made.append(conn)
            return conn

        loop = asyncio.get_running_loop()
        try:
            if self._tls is None:
                await loop.connect_accepted_socket(protocol, sock)
            else:
                await loop.connect_accepted_socket(
                    protocol,
                    sock,
                    ssl=self._tls,
                    ssl_handshake_timeout=self._handshake_timeout,
                )
        except asyncio.CancelledError:
            self._given_up(sock, made, lease, "listener closed")
            raise
        except ConnectionAbortedError:
            # Both asyncio and uvloop abort a handshake past its timeout with this error.
            self._counters.hit(TLS_HANDSHAKE_TIMEOUT)
            self._given_up(sock, made, lease, "TLS handshake timed out")
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: connection not established: %s", self.limiter.name, exc)
            self._given_up(sock, made, lease, f"not established: {exc}")

    @staticmethod
    def _given_up(
        sock: socket.socket, made: list[SipStreamConnection], lease: Lease, reason: str
    ) -> None:
        for conn in made:
            conn.abandon(reason)  # its owner forgets it; its hook releases the lease
        lease.release()
        sock.close()

    def _report(self) -> None:
        if self._on_security is None:
            return
        for event in self.limiter.drain_events():
            self._on_security(event)
