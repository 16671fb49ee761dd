"""Where a SIP message came from or goes to, as the sans-IO core sees it.

The core never touches sockets; it names destinations with a ``Peer`` and the transport glue
maps that onto a UDP address or a stream connection (RFC 3261 §18: responses go back over the
connection a request came in on; requests may open a new connection when none is left).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Side(StrEnum):
    """Which side of the gateway a peer is on."""

    LAN = "lan"
    WAN = "wan"


@dataclass(frozen=True, slots=True)
class Peer:
    """A transport-level SIP peer: side, transport, address and, for streams, the connection."""

    side: Side
    #: "udp", "tcp" or "tls".
    transport: str
    address: tuple[str, int]
    #: Stream connection id the message came over; None for UDP, or for "the provider
    #: connection, whichever is current" on the WAN side.
    connection: int | None = None

    @property
    def reliable(self) -> bool:
        """Stream transports do their own retransmission (RFC 3261 §17.1.1.1)."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        conn = f"#{self.connection}" if self.connection is not None else ""
        return f"{self.side.value}:{self.transport}:{host}:{port}{conn}"
