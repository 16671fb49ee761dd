"""What happened to a call: one frozen record per kind of call event.

The B2BUA core emits these (inside ``gateway.sip.actions``' action list); the call detail
record writer, the admin observer, the log and the demo consume them. Each kind has its own
fields, so a consumer reads attributes instead of guessing dictionary keys. No event ever
carries a key, a password or a digest response.

``kind`` is the short verb written to the call log (``"started"``, ``"answered"`` ...), and
``fields()`` is the event as the log line's fields (everything but ``call_id``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class _Event:
    #: The caller leg's Call-ID (the one the originator knows).
    call_id: str

    kind: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The event's fields for a log line, without ``call_id``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}


@dataclass(frozen=True, slots=True)
class CallStarted(_Event):
    """A dialog-creating request (INVITE, SUBSCRIBE, REFER) was relayed to the other side."""

    kind: ClassVar[str] = "started"
    #: The core's key of the call (stable for the call's whole life).
    pair: str
    method: str
    #: "lan" for a phone's call out, "wan" for the provider's call in.
    from_side: str
    #: User part of From (the caller) and of the Request-URI (the callee), as received.
    caller: str | None
    callee: str | None
    #: The Call-ID of the leg the gateway created on the other side.
    callee_call_id: str
    #: A phone's call only (the phone inventory): its User-Agent, "ip:port" and transport.
    user_agent: str | None = None
    phone: str | None = None
    transport: str | None = None


@dataclass(frozen=True, slots=True)
class CallAnswered(_Event):
    """The callee answered (2xx relayed to the caller)."""

    kind: ClassVar[str] = "answered"
    pair: str
    #: The SRTP suite the WAN leg uses (None: no media, an operator's plaintext downgrade, or
    #: a DTLS-SRTP handshake not finished yet: :class:`CallKeyed` then tells it).
    suite: str | None
    plaintext_downgrade: bool
    #: How the WAN leg's SRTP is keyed: "sdes", "dtls", or None (no secured media).
    keying: str | None = None


@dataclass(frozen=True, slots=True)
class CallKeyed(_Event):
    """A DTLS-SRTP handshake on the call's WAN leg agreed its suite (RFC 5764 §4.1.2): the
    worker's report, after the answer as a rule (the handshake follows the SDP)."""

    kind: ClassVar[str] = "keyed"
    pair: str
    suite: str
    keying: str = "dtls"


@dataclass(frozen=True, slots=True)
class CallRefused(_Event):
    """The gateway refused the call or an offer in it (policy, no acceptable crypto)."""

    kind: ClassVar[str] = "refused"
    #: Why, as the Warning header told the requester.
    reason: str
    #: The status answered (488, 403 ...); 0 when the refusal ended an answered call.
    status: int
    #: None when the call was refused before the core gave it a key.
    pair: str | None = None
    #: The policy rule that refused it ("dialplan.premium" ...), if a rule did.
    rule: str | None = None
    #: User parts of From and of the Request-URI, when the call was refused before it
    #: started (a toll-fraud attempt's record names the number it tried).
    caller: str | None = None
    callee: str | None = None


@dataclass(frozen=True, slots=True)
class CallFailed(_Event):
    """The callee side answered the dialog-creating request with a final error (3xx-6xx)."""

    kind: ClassVar[str] = "failed"
    pair: str
    status: int


@dataclass(frozen=True, slots=True)
class CallCancelled(_Event):
    """A side cancelled the call before it was answered."""

    kind: ClassVar[str] = "cancelled"
    pair: str
    #: The side that sent CANCEL: "lan" or "wan".
    by: str


@dataclass(frozen=True, slots=True)
class CallEnded(_Event):
    """A call (or subscription) ended: BYE, hang-up by the gateway, or a failure."""

    kind: ClassVar[str] = "ended"
    pair: str
    reason: str
    #: Seconds from the answer to the end (0.0 for a call never answered).
    duration: float


@dataclass(frozen=True, slots=True)
class MediaEnded(_Event):
    """The media path could not carry the call any more (worker lost, no media, bind failure)."""

    kind: ClassVar[str] = "media-ended"
    pair: str
    reason: str


@dataclass(frozen=True, slots=True)
class AckMissing(_Event):
    """The caller never acknowledged the 2xx (RFC 3261 §13.3.1.4): the call is ended."""

    kind: ClassVar[str] = "no-ack"
    pair: str


@dataclass(frozen=True, slots=True)
class PlaintextDowngrade(_Event):
    """The operator's explicit downgrade is on: this call may carry plain RTP to the WAN."""

    kind: ClassVar[str] = "downgrade"
    #: The configuration setting that allowed it.
    setting: str
    warning: str


@dataclass(frozen=True, slots=True)
class TrunkFailover(_Event):
    """A call out that its trunk failed before an answer goes on on the next trunk."""

    kind: ClassVar[str] = "failover"
    pair: str
    #: The trunk that failed it, the trunk it goes to now, and how the first one failed.
    from_trunk: str
    to_trunk: str
    reason: str


@dataclass(frozen=True, slots=True)
class PhoneRegistered(_Event):
    """The provider accepted (or removed, ``expires`` 0) a phone's registration.

    ``call_id`` is the upstream registration's Call-ID.
    """

    kind: ClassVar[str] = "registered"
    user: str
    expires: int
    user_agent: str | None
    #: Where the phone registered from ("ip:port") and over which transport.
    phone: str | None = None
    transport: str | None = None


@dataclass(frozen=True, slots=True)
class MalformedMessage(_Event):
    """A message that could not be parsed: answered with a 4xx (``status``) or dropped (None),
    one log line each with where it came from. ``call_id`` is "" when none could be read."""

    kind: ClassVar[str] = "malformed"
    side: str
    #: "address:port" of the sender.
    source: str
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class BadResponse(_Event):
    """A response that could not be relayed (unusable SDP, a broken header): dropped."""

    kind: ClassVar[str] = "bad-response"
    error: str


CallEvent = (
    CallStarted
    | CallAnswered
    | CallKeyed
    | CallRefused
    | CallFailed
    | CallCancelled
    | CallEnded
    | MediaEnded
    | AckMissing
    | PlaintextDowngrade
    | TrunkFailover
    | PhoneRegistered
    | MalformedMessage
    | BadResponse
)
"""Every call event the core emits."""

#: Events after which a call can be over (whether it is, the set of active calls decides).
TERMINAL_EVENTS: tuple[type[_Event], ...] = (
    CallEnded,
    CallFailed,
    CallRefused,
    CallCancelled,
    MediaEnded,
    AckMissing,
    BadResponse,
)
