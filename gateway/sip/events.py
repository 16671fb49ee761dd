"""Events the transaction layer hands to its transaction user (RFC 3261 §17).

Each event is a small dataclass; the TU drains them with ``TransactionLayer.next_event()``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from gateway.sip.message import SipRequest, SipResponse


@dataclass
class TransactionEvent:
    """Base class of every transaction-layer event."""


@dataclass
class RequestReceived(TransactionEvent):
    """A new request for the TU (§17.2.1, §17.2.2), or an ACK to a 2xx or a CANCEL."""

    #: Server transaction key, to pass to ``send_response``. For an ACK (which never has a
    #: server transaction, §17.2.1) it is the key the ACK would match, and no response may be
    #: sent on it.
    key: str
    #: The request as received.
    request: SipRequest
    #: The opaque source the transport passed in; responses go back there.
    source: Hashable
    #: For a CANCEL: the key of the INVITE server transaction it cancels (§9.2), or None when
    #: none matches (answer the CANCEL 481). None for every other method.
    matches: str | None = None


@dataclass
class ResponseReceived(TransactionEvent):
    """A response for a client transaction: provisional, final, or a 2xx retransmission
    while the INVITE transaction is in the Accepted state (RFC 6026 §7.2)."""

    #: Client transaction key returned by ``send_request``.
    key: str
    #: The response as received.
    response: SipResponse


@dataclass
class StrayResponse(TransactionEvent):
    """A 2xx to an INVITE that matches no client transaction (§13.2.2.4, RFC 6026 §7.2):
    a retransmission after the transaction ended. The TU re-sends its ACK for the dialog."""

    #: The response as received.
    response: SipResponse


@dataclass
class TransactionTimedOut(TransactionEvent):
    """No answer in time: Timer B or F on a client transaction (the TU treats it as 408,
    §8.1.3.1), or Timer H on an INVITE server transaction (no ACK came, §17.2.1)."""

    #: The transaction's key.
    key: str
    #: The request that started the transaction.
    request: SipRequest


@dataclass
class TransactionTerminated(TransactionEvent):
    """The transaction reached the Terminated state and was forgotten; its key is free."""

    #: The transaction's key.
    key: str
