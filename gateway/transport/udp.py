"""UDP glue for the LAN SIP listener (RFC 3261 §18.1.1, §18.2.1): datagrams in, datagrams out.

Nothing here looks inside a message; the sans-IO core parses, answers and counts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from gateway.transport import freebind

log = logging.getLogger("gateway.transport")

DatagramHandler = Callable[[bytes, tuple[str, int]], None]


class SipUdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket that hands every datagram to the core."""

    def __init__(
        self,
        on_datagram: DatagramHandler,
        max_size: int = 65535,
        on_oversize: Callable[[], None] | None = None,
    ) -> None:
        self._on_datagram = on_datagram
        self._max_size = max_size
        #: Told of each datagram over ``max_size`` ([limits] max_message_bytes), dropped unread.
        self._on_oversize = on_oversize
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped_oversize = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > self._max_size:
            self.dropped_oversize += 1
            if self._on_oversize is not None:
                self._on_oversize()
            return
        self._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a phone that went away: not an error of ours.
        log.debug("udp error: %s", exc)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


async def open_udp(
    host: str,
    port: int,
    on_datagram: DatagramHandler,
    max_size: int,
    on_oversize: Callable[[], None] | None = None,
) -> SipUdpEndpoint:
    loop = asyncio.get_running_loop()
    factory = lambda: SipUdpEndpoint(on_datagram, max_size, on_oversize)  # noqa: E731
    if freebind.enabled.get():  # an HA promotion: the address may arrive a moment later
        sock = freebind.bound_socket(host, port, socket.SOCK_DGRAM)
        _, protocol = await loop.create_datagram_endpoint(factory, sock=sock)
        return protocol
    _, protocol = await loop.create_datagram_endpoint(factory, local_addr=(host, port))
    return protocol
