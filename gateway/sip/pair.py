"""A call through the gateway as two dialogs, and the machine its set-up and end follow.

Theory of operation
-------------------
A ``DialogPair`` is one call (or subscription) carried as two dialogs (RFC 7092 §3.1): the
*caller* leg on the side that sent the dialog-creating request and the *callee* leg the gateway
created on the other side (RFC 3261 §12 on each). Its ``state`` moves only through the table
below, in the manner of h11's ``_state.py``: the B2BUA feeds it what happened
(``PairInput``) and gets the new state back; a combination the table does not list raises
``IllegalTransition``, so a handler that meets a state it did not expect fails loudly (the
B2BUA counts it as a bad message for that call alone) instead of corrupting the call.

The states of the callee leg's set-up, and why each exists:

- ``CALLING``: the request went to the callee side, nothing came back. A call out that its
  trunk failed (503, 408, no answer in time) comes back here when it goes to the next trunk.
- ``PROCEEDING``: a provisional without a dialog came back. From here a CANCEL may go (§9.1
  forbids one before any provisional).
- ``EARLY``: a provisional with a To tag: an early dialog (several, when the callee forks).
- ``CANCEL_PENDING``: the call was given up (CANCEL from the caller, the gateway failing it,
  a BYE on an early dialog) before any provisional: the CANCEL waits for one.
- ``CANCELLING``: the CANCEL went (or an answer was refused): the caller has its final
  answer already, and the callee's final response closes the pair. A 2xx that crosses the
  CANCEL is ACKed and ended with BYE.
- ``CONFIRMED``: a 2xx was relayed to the caller. A retransmitted 2xx (or another fork's)
  may still come; a provisional is ignored.
- ``ENDED``: nothing more happens to the call; late responses are absorbed (a 2xx is still
  ACKed and ended).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.policy.numbering import DialledNumber
from gateway.sip.dialog import Leg
from gateway.sip.errors import TransactionStateError
from gateway.sip.message import SipRequest
from gateway.sip.peer import Side
from gateway.sip.sdp_link import MediaLink


class PairState(StrEnum):
    CALLING = "calling"
    PROCEEDING = "proceeding"
    EARLY = "early"
    CANCEL_PENDING = "cancel-pending"
    CANCELLING = "cancelling"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class PairInput(StrEnum):
    #: A 1xx to the dialog-creating request without a To tag (100 Trying included).
    PROVISIONAL = "provisional"
    #: A 1xx with a To tag: an early dialog.
    EARLY_DIALOG = "early-dialog"
    #: A 2xx to the dialog-creating request.
    ANSWER = "answer"
    #: A 3xx-6xx to it.
    REJECT = "reject"
    #: The call is given up before an answer: the caller's CANCEL, the gateway failing it.
    GIVE_UP = "give-up"
    #: A BYE from either side, or the gateway ending the call.
    HANG_UP = "hang-up"
    #: The trunk failed the call before an answer: the request goes again to the next trunk.
    RETRY = "retry"


class IllegalTransition(TransactionStateError):
    """An input the pair's state does not allow (a bug, or a peer far outside the RFC)."""


_S, _I = PairState, PairInput
_SETTING_UP = {
    _I.RETRY: _S.CALLING,
    _I.PROVISIONAL: _S.PROCEEDING,
    _I.EARLY_DIALOG: _S.EARLY,
    _I.ANSWER: _S.CONFIRMED,
    _I.REJECT: _S.ENDED,
    _I.GIVE_UP: _S.CANCELLING,
    _I.HANG_UP: _S.CANCELLING,
}
_WINDING_DOWN = {
    _I.PROVISIONAL: _S.CANCELLING,
    _I.EARLY_DIALOG: _S.CANCELLING,
    _I.ANSWER: _S.ENDED,
    _I.REJECT: _S.ENDED,
    _I.GIVE_UP: _S.CANCELLING,
    _I.HANG_UP: _S.CANCELLING,
}
#: state -> input -> next state. Anything not listed is an IllegalTransition.
TRANSITIONS: dict[PairState, dict[PairInput, PairState]] = {
    _S.CALLING: {
        **_SETTING_UP,
        # No provisional yet: a CANCEL may not go (§9.1), it waits.
        _I.GIVE_UP: _S.CANCEL_PENDING,
        _I.HANG_UP: _S.CANCEL_PENDING,
    },
    _S.PROCEEDING: _SETTING_UP,
    _S.EARLY: {**_SETTING_UP, _I.PROVISIONAL: _S.EARLY},
    _S.CANCEL_PENDING: {**_WINDING_DOWN, _I.GIVE_UP: _S.CANCEL_PENDING},
    _S.CANCELLING: _WINDING_DOWN,
    _S.CONFIRMED: {
        _I.PROVISIONAL: _S.CONFIRMED,
        _I.EARLY_DIALOG: _S.CONFIRMED,
        _I.ANSWER: _S.CONFIRMED,
        _I.HANG_UP: _S.ENDED,
    },
    _S.ENDED: dict.fromkeys(PairInput, _S.ENDED),
}

#: States in which the caller still waits for the final answer to its request.
RINGING = frozenset({PairState.CALLING, PairState.PROCEEDING, PairState.EARLY})
#: States in which the call was given up and the callee's final response is awaited.
WINDING_DOWN = frozenset({PairState.CANCEL_PENDING, PairState.CANCELLING})


@dataclass(slots=True)
class DialogPair:
    """One call or subscription through the gateway: two legs and what links them.

    The parsed dialog-creating requests (the caller's and ours to the callee) are what the
    set-up needs: answers to the caller, CANCEL, Record-Route. Once the dialog is confirmed
    only a few of their fields are ever asked for again, kept apart (``origin``, ``branch``,
    ``outgoing_cseq``), and the messages are let go: a call can last hours.
    """

    key: str
    method: str
    caller: Leg
    callee: Leg
    caller_side: Side
    #: The caller's server transaction for the dialog-creating request.
    server_key: str
    #: The caller's dialog-creating request; None once the dialog is confirmed.
    request: SipRequest | None
    #: (side, Call-ID, From tag, CSeq) of that request (§8.2.2.2 merged-request detection).
    origin: tuple[Side, str, str | None, int]
    #: Its top Via branch: the same request by another path is a loop.
    branch: str | None
    #: The caller asked for reliable provisionals (RFC 3262).
    caller_supports_100rel: bool = False
    started: float = 0.0
    #: When the 2xx came (None: never answered).
    answered: float | None = None
    #: The call's media (INVITE pairs only).
    media: MediaLink | None = None
    state: PairState = PairState.CALLING
    client_key: str | None = None
    #: The request we sent to the callee (for CANCEL, §9.1); None once confirmed.
    outgoing: SipRequest | None = None
    #: Its CSeq number, which a PRACK's RAck names on the callee leg (RFC 3262 §7.2).
    outgoing_cseq: int = 0
    #: Callee-side to-tag -> caller-side to-tag, one per early dialog (forking, §13.2.2.4).
    tag_map: dict[str, str] = field(default_factory=dict)
    #: When a side's 2xx held an offer, our ACK to it waits for the other side's ACK and its
    #: answer (late offer, RFC 3264 §5 with RFC 3261 §13.2.2.4): that side and its CSeq.
    deferred_ack: Side | None = None
    deferred_ack_cseq: int = 0
    #: Last 2xx we sent to the caller (re-sent when the INVITE is retransmitted late).
    last_final: bytes | None = None
    #: The callee confirmed dialog's to-tag.
    confirmed_tag: str | None = None
    #: A call out: the trunk it is on, the trunks left to try, and what was dialled.
    trunk: str | None = None
    fallback: list[str] = field(default_factory=list)
    number: DialledNumber | None = None
    #: Callee legs given up for a trunk that never answered, by their client transaction:
    #: a late 2xx on one is ACKed and ended.
    abandoned: dict[str, Leg] = field(default_factory=dict)
    #: In-dialog INVITEs relayed and not finally answered yet: (side, client transaction).
    #: When the call ends they are given up after 64*T1, answered or not (RFC 3261 §9.1).
    reinvites: set[tuple[Side, str]] = field(default_factory=set)

    def advance(self, event: PairInput) -> PairState:
        """Move the pair by the table; returns the state it was in before."""
        before = self.state
        after = TRANSITIONS[before].get(event)
        if after is None:
            raise IllegalTransition(f"{self.key}: {event.value} in state {before.value}")
        self.state = after
        return before

    def leg(self, side: Side) -> Leg:
        return self.caller if side == self.caller_side else self.callee

    @property
    def callee_side(self) -> Side:
        return Side.WAN if self.caller_side == Side.LAN else Side.LAN

    def other(self, side: Side) -> Side:
        return Side.WAN if side == Side.LAN else Side.LAN

    def initial_request(self) -> SipRequest:
        """The caller's dialog-creating request, asked for only while the dialog is set up."""
        if self.request is None:
            raise TransactionStateError(f"{self.key}: dialog confirmed, its request is gone")
        return self.request

    def confirmed(self) -> None:
        """The 2xx went to the caller: drop the set-up messages (see the class docstring)."""
        self.request = None
        self.outgoing = None
