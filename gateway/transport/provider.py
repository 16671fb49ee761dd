"""The gateway's long-lived TLS connection to the provider (RFC 3261 §18, RFC 5626 §4.4.1,
RFC 3263 §4 for choosing where to connect, RFC 5922 for what to verify).

One connection carries requests both ways. It is verified before anything is sent: the chain
against the configured trust, the name, and the SPKI pins when configured. A failure is
reported to the core with its reason (phones then get 503 with that reason in a Warning) and
retried with exponential backoff. CRLF CRLF keep-alives keep NAT and firewall state up and,
once the provider has shown that it answers them, detect a dead peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from gateway.transport import freebind
from gateway.transport.resolver import Target, resolve_provider
from gateway.transport.stream import SipStreamConnection

log = logging.getLogger("gateway.provider")

ContextFactory = Callable[[], ssl.SSLContext | None]
PinCheck = Callable[[ssl.SSLObject], None]
StateHandler = Callable[[bool, str], None]
ConnectionFactory = Callable[[], SipStreamConnection]


class ProviderLink:
    """Keeps one verified connection to the provider open, reconnecting with backoff."""

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        server_name: str | None,
        local_address: str | None,
        context_factory: ContextFactory,
        pin_check: PinCheck | None,
        connection_factory: ConnectionFactory,
        on_state: StateHandler,
        keepalive_interval: float = 25.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        connect_timeout: float = 10.0,
        trunk: str = "",
    ) -> None:
        #: The trunk this link serves, named at the end of its log lines.
        self.trunk = trunk
        self.host = host
        self.port = port
        self.server_name = server_name
        self.local_address = local_address
        self._context_factory = context_factory
        self._pin_check = pin_check
        self._connection_factory = connection_factory
        self._on_state = on_state
        self.keepalive_interval = keepalive_interval
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.connection: SipStreamConnection | None = None
        self.target: Target | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.peer_certificate_subject: str | None = None
        self.connects = 0
        self.failures = 0
        self.last_error = "not connected yet"
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._stopping = False

    @property
    def up(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def _named(self) -> str:
        return f" [trunk {self.trunk}]" if self.trunk else ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="provider-link")

    async def stop(self) -> None:
        self._stopping = True
        if self.connection is not None:
            self.connection.close("gateway stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send(self, data: bytes) -> bool:
        if self.connection is None or self.connection.closed:
            return False
        self.connection.write(data)
        return True

    def connection_closed(self, connection: SipStreamConnection, reason: str) -> None:
        if connection is self.connection:
            self.connection = None
            self.last_error = f"connection lost: {reason}"
            self._lost.set()

    async def _run(self) -> None:
        delay = self.reconnect_min
        while not self._stopping:
            try:
                await self._connect_once()
            except Exception as exc:  # every failure is reported, then retried
                self.failures += 1
                self.last_error = _describe(exc)
                log.error("provider connection failed: %s%s", self.last_error, self._named())
                self._on_state(False, self.last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            up_since = asyncio.get_running_loop().time()
            await self._hold()
            if not self._stopping:
                self._on_state(False, self.last_error)
            if asyncio.get_running_loop().time() - up_since < self.reconnect_max:
                # Lost right after it came up (a provider refusing our client certificate
                # after the handshake, for one): back off as after a failure, never spin.
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
            else:
                delay = self.reconnect_min

    async def _open(
        self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext | None, target: Target
    ) -> tuple[asyncio.BaseTransport, SipStreamConnection]:
        hostname = target.server_name if context is not None else None
        if self.local_address and freebind.enabled.get():
            # An HA promotion: the WAN address may arrive a moment after the connect starts.
            sock = await freebind.connect(self.local_address, target.address, target.port)
            return await loop.create_connection(
                self._connection_factory, sock=sock, ssl=context, server_hostname=hostname
            )
        return await loop.create_connection(
            self._connection_factory,
            target.address,
            target.port,
            ssl=context,
            server_hostname=hostname,
            local_addr=(self.local_address, 0) if self.local_address else None,
        )

    async def _connect_once(self) -> None:
        context = self._context_factory()
        targets = await resolve_provider(self.host, self.port, self.server_name)
        if not targets:
            raise ConnectionError(f"no address found for provider {self.host!r}")
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        for target in targets:
            try:
                transport, protocol = await asyncio.wait_for(
                    self._open(loop, context, target), self.connect_timeout
                )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                errors.append(f"{target.address}:{target.port}: {_describe(exc)}")
                continue
            ssl_object = transport.get_extra_info("ssl_object")
            if context is not None:
                if ssl_object is None:
                    transport.close()
                    raise ConnectionError("TLS was not established")
                if self._pin_check is not None:
                    try:
                        self._pin_check(ssl_object)
                    except Exception as exc:
                        transport.close()
                        raise ConnectionError(f"certificate pin mismatch: {exc}") from None
                self.tls_version = ssl_object.version()
                cipher = ssl_object.cipher()
                self.tls_cipher = cipher[0] if cipher else None
                cert = ssl_object.getpeercert()
                self.peer_certificate_subject = _subject(cert)
            self.connection = protocol
            self.target = target
            self.connects += 1
            self._lost.clear()
            detail = (
                f"{self.tls_version} {self.tls_cipher}, verified {self.peer_certificate_subject}"
                if context is not None
                else "INSECURE plaintext TCP"
            )
            log.info(
                "provider connected: %s:%d (%s)%s",
                target.address,
                target.port,
                detail,
                self._named(),
            )
            self._on_state(True, detail)
            return
        raise ConnectionError("; ".join(errors) or "no target reachable")

    async def _hold(self) -> None:
        """Send keep-alives until the connection is lost."""
        loop = asyncio.get_running_loop()
        pong_seen = False
        while self.up and not self._stopping:
            try:
                await asyncio.wait_for(self._lost.wait(), self.keepalive_interval)
                return
            except TimeoutError:
                pass
            connection = self.connection
            if connection is None:
                return
            if pong_seen and loop.time() - connection.last_pong > 3 * self.keepalive_interval:
                connection.close("no keep-alive pong from the provider")
                return
            connection.write(b"\r\n\r\n")
            pong_seen = pong_seen or connection.last_pong > 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or exc.__class__.__name__


def _subject(cert: dict[str, Any] | None) -> str | None:
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
