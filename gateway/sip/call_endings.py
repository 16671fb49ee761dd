"""How a call ends, whoever ends it (RFC 3261 §9.1, §15, RFC 3326).

A confirmed call ends with BYE on both legs (the gateway's own hang-up carries a Reason,
RFC 3326), or on the other leg when one side sent BYE. A call still ringing is failed toward
the caller with the status and a Warning, and cancelled toward the callee as soon as §9.1
allows (not before a provisional: the pair's state machine waits for one). Whatever ended a
call, it is unfiled from the index, its media released and its caps count settled once.
"""

from __future__ import annotations

from gateway.sip.actions import CallEvent
from gateway.sip.admission import Admission
from gateway.sip.call_events import CallEnded
from gateway.sip.dialog_index import DialogIndex
from gateway.sip.edge import build_cancel, gateway_warning, quoted
from gateway.sip.message import make_response
from gateway.sip.outgoing import Outgoing, Relay
from gateway.sip.pair import RINGING, DialogPair, PairInput, PairState
from gateway.sip.peer import Side


class CallEndings:
    def __init__(self, index: DialogIndex, out: Outgoing, admission: Admission) -> None:
        self._index = index
        self._out = out
        self._admission = admission

    def hang_up(self, pair: DialogPair, now: float, *, reason: str) -> None:
        """The gateway ends a confirmed call: BYE on both legs. Each goes with a relay of its
        own, so a provider's 401/407 to the WAN one finds it and the credential shield answers
        it (§22.2) as it answers the challenge to any BYE of the gateway's."""
        for side in (Side.LAN, Side.WAN):
            leg = pair.leg(side)
            bye = leg.build_request("BYE")
            bye.add("Reason", f'SIP;cause=200;text="{quoted(reason)}"')
            relay = Relay(pair, side, "", bye, internal=True)
            self._out.relay_request(side, bye, leg.peer, now, relay)
        self.end(pair, now, reason=reason, send_bye_to=None)

    def fail(self, pair: DialogPair, status: int, reason: str, now: float) -> None:
        """The gateway gives up a call: ``status`` to a caller still waiting, BYE otherwise."""
        if pair.state in RINGING:
            reply = make_response(pair.initial_request(), status, to_tag=pair.caller.local_tag)
            reply.add("Warning", gateway_warning(reason))
            self._out.send_response(pair.caller_side, pair.server_key, reply, now)
            self.give_up(pair, now)
            self.release_media(pair)
        elif pair.state == PairState.CONFIRMED:
            self.hang_up(pair, now, reason=reason)

    def give_up(self, pair: DialogPair, now: float) -> None:
        """The caller has its final answer: cancel the callee leg now or at its first
        provisional (the machine goes to CANCELLING or CANCEL_PENDING)."""
        if pair.advance(PairInput.GIVE_UP) in RINGING and pair.state == PairState.CANCELLING:
            self.send_cancel(pair, now)

    def send_cancel(self, pair: DialogPair, now: float) -> None:
        if pair.outgoing is not None:
            self._out.send_request(
                pair.callee_side, build_cancel(pair.outgoing), pair.callee.peer, now
            )
            if pair.client_key is not None:
                # A callee that never answers the CANCEL must not keep the call forever.
                self._out.tx[pair.callee_side].invite_cancelled(pair.client_key, now)

    def end(self, pair: DialogPair, now: float, *, reason: str, send_bye_to: Side | None) -> None:
        """The call is over: BYE to ``send_bye_to`` (a side that has not said BYE itself;
        a callee still ringing is cancelled instead), the ended event, and forget it."""
        if pair in self._index:
            answered = pair.answered
            duration = round(now - answered, 3) if answered is not None else 0.0
            event: CallEvent = CallEnded(pair.caller.call_id, pair.key, reason, duration)
            self._out.emit(event)
        before = pair.advance(PairInput.HANG_UP)
        if send_bye_to is not None:
            leg = pair.leg(send_bye_to)
            if before == PairState.CONFIRMED or send_bye_to == pair.caller_side:
                bye = leg.build_request("BYE")
                self._out.relay_request(
                    send_bye_to,
                    bye,
                    leg.peer,
                    now,
                    Relay(pair, send_bye_to, "", bye, internal=True),
                )
            elif before in RINGING and pair.state == PairState.CANCELLING:
                self.send_cancel(pair, now)
        if pair.state == PairState.CANCELLING and pair.client_key is not None:
            # However the set-up was abandoned (a CANCEL, or the callee's own BYE on its
            # early dialog), a final response that never comes must not keep the call (§9.1).
            self._out.tx[pair.callee_side].invite_cancelled(pair.client_key, now)
        self._out.stop_retransmitting(pair)
        self.forget(pair, now)

    def forget(self, pair: DialogPair, now: float) -> None:
        """Unfile the pair; its media and caps are settled. Its state is left as it is: a
        pair winding down still takes the callee's final response through its relay."""
        for side, key in pair.reinvites:
            # A re-INVITE still unanswered when the call ended must not wait forever (§9.1).
            self._out.tx[side].invite_cancelled(key, now)
        pair.reinvites.clear()
        self._index.forget(pair)
        self._out.stop_retransmitting(pair)
        self._admission.call_ended(pair.key, now)
        self.release_media(pair)

    def release_media(self, pair: DialogPair) -> None:
        if pair.media is not None:
            for command in pair.media.release():
                self._out.emit(command)
            pair.media = None
