"""The SIP layer's exception family.

Every error carries ``status_hint``, the status code the layer that owns the connection should
answer with (RFC 3261 §8.2, §21.4). Parse errors also carry ``partial``: a best-effort message
whose header lines were split, so a 400 can copy Via/From/To/Call-ID/CSeq as §8.2.6.2 requires.
Reasons are plain text with no CR or LF, safe for a reason phrase or a Warning header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.sip.message import SipMessage


class SipError(Exception):
    """Any failure of the SIP layer; ``status_hint`` is the status to answer with."""

    status_hint: int = 400


class SipParseError(SipError):
    """Bytes that are not a well-formed SIP message (RFC 3261 §7, §25).

    A request's error is answered with ``status_hint`` (400, 505, 501, 513 ...) when ``partial``
    holds enough headers to build the response; a response's error means the response is dropped.
    """

    #: The counter of the limit the message exceeded (``gateway.sip.limits``), "" for bad input.
    limit: str = ""

    def __init__(
        self,
        reason: str,
        status_hint: int = 400,
        partial: SipMessage | None = None,
        *,
        looks_like_response: bool = False,
    ) -> None:
        # A reason ends up in a reason phrase or Warning header: never let it break a line.
        reason = reason.replace("\r", " ").replace("\n", " ")
        super().__init__(reason)
        #: Human text saying what is wrong, safe for a reason phrase or Warning header.
        self.reason = reason
        #: The status code to answer a request with.
        self.status_hint = status_hint
        #: Best-effort message with its headers split, or None when even that failed.
        self.partial = partial
        self._looks_like_response = looks_like_response

    @property
    def is_response(self) -> bool:
        """True when the bytes were (or looked like) a response: drop it, never answer it."""
        from gateway.sip.message import SipResponse

        return isinstance(self.partial, SipResponse) or self._looks_like_response


class SipFramingError(SipParseError):
    """A stream's message boundaries are lost (RFC 3261 §18.3, RFC 4475 §3.1.2.3).

    Answer with ``status_hint`` if ``partial`` allows it, then close the connection: the next
    message cannot be found. ``framed_before`` holds the items the framer produced from the same
    ``feed`` call before the framing was lost, so none of them is dropped.
    """

    def __init__(
        self,
        reason: str,
        status_hint: int = 400,
        partial: SipMessage | None = None,
        *,
        looks_like_response: bool = False,
    ) -> None:
        super().__init__(reason, status_hint, partial, looks_like_response=looks_like_response)
        #: Items framed by the same feed() before the loss (filled in by the framer).
        self.framed_before: list[object] = []


class TransactionStateError(SipError):
    """The transaction user asked for something the transaction's state forbids (§17).

    For example a response on a transaction that is already completed, or on an unknown key.
    This is a bug in the caller, not bad input from the network.
    """

    status_hint = 500
