"""Errors of the SDP layer, each with the SIP status the owning layer should answer with.

Following h11's pattern (STYLE.md): the sans-IO SDP code raises, the B2BUA turns the error into a
response. 400 is for bodies that are not SDP at all (RFC 8866 §9 grammar broken); 488 "Not
Acceptable Here" (RFC 3261 §21.4.26) for well-formed SDP the gateway will not accept.
"""

from __future__ import annotations


class SdpError(Exception):
    """An SDP body the gateway cannot parse or will not accept.

    ``reason`` is a one-line explanation safe to log and to put in a Warning header: it never
    contains key material.
    """

    status_hint: int = 488

    def __init__(self, reason: str, *, status_hint: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_hint is not None:
            self.status_hint = status_hint


class MediaRefused(SdpError):
    """The peer's media cannot be secured (or is otherwise unacceptable): answer 488.

    ``warning`` is the text for the Warning header (RFC 3261 §20.43), already free of quotes and
    backslashes so the SIP layer can put it between quotes as it is.
    """

    status_hint = 488

    def __init__(self, warning: str) -> None:
        cleaned = "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in warning)
        super().__init__(cleaned)
        self.warning = cleaned
