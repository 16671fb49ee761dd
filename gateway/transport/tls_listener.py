"""A TLS listener whose certificate can change while it runs (RFC 5246/8446 server side).

asyncio fixes a server's SSL context when the server is created. Here connections are
accepted as plain TCP and upgraded with ``start_tls`` using whatever context is current at
that moment, so a rotated certificate is presented by the very next connection while the
established ones keep theirs. A client that never finishes its handshake is cut off after
``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

log = logging.getLogger("gateway.transport")

ContextSource = Callable[[], ssl.SSLContext | None]
ProtocolFactory = Callable[[], asyncio.Protocol]


class TlsAcceptor(asyncio.Protocol):
    """Upgrades one accepted TCP connection to TLS, then hands it to the SIP protocol."""

    handshake_failures = 0

    def __init__(self, contexts: ContextSource, factory: ProtocolFactory, timeout: float) -> None:
        self._contexts = contexts
        self._factory = factory
        self._timeout = timeout
        self._inner: asyncio.Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        # Application data can arrive with the last handshake flight, before start_tls()
        # returns; it is kept until the SIP protocol exists.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._task = asyncio.get_running_loop().create_task(self._upgrade(transport))

    async def _upgrade(self, transport: asyncio.BaseTransport) -> None:
        context = self._contexts()
        if context is None:
            transport.close()
            return
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            TlsAcceptor.handshake_failures += 1
            log.info("TLS handshake on the WAN listener failed: %s", exc or "timeout")
            transport.close()
            return
        if tls is None:
            transport.close()
            return
        self._inner = self._factory()
        self._inner.connection_made(tls)
        early, self._early = self._early, []
        for chunk in early:
            self._inner.data_received(chunk)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
        elif self._task is not None and not self._task.done():
            self._task.cancel()
