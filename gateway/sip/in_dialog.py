"""Requests inside a call's dialogs, and requests outside any, relayed leg to leg
(RFC 3261 §12.2, §13.2.2.4, §14, §15; RFC 3262 §7.2; RFC 3264; RFC 3311; RFC 6665).

An in-dialog request from one leg becomes a new request on the other leg's dialog (its own
CSeq, Call-ID and tags); its response comes back through the ``Relay`` filed for the new
client transaction. SDP in either goes through the call's ``MediaLink``: an offer is re-keyed
for the other side, an answer checked, and either refused with 488 when it has no acceptable
crypto. A re-INVITE's 2xx is ACKed by the gateway, at once or, when it carried an offer, when
the other side's ACK brings the answer.

A request outside any dialog that does not create one (MESSAGE, OPTIONS to a user, NOTIFY
without a subscription) goes across on a one-off leg; from the provider it reaches the phone
its Request-URI names, as a call would.
"""

from __future__ import annotations

import contextlib

from gateway.sdp.errors import MediaRefused
from gateway.sip.actions import CallEvent, MediaCommand
from gateway.sip.call_endings import CallEndings
from gateway.sip.call_events import CallRefused
from gateway.sip.call_setup import REQUEST_COPY
from gateway.sip.dialog import copy_headers
from gateway.sip.edge import Edge, gateway_warning, other_side, request_user, user_of
from gateway.sip.errors import SipError
from gateway.sip.events import RequestReceived
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, make_response, new_tag
from gateway.sip.outgoing import Outgoing, Relay
from gateway.sip.pair import RINGING, WINDING_DOWN, DialogPair, PairState
from gateway.sip.peer import Side
from gateway.sip.registrar import RESPONSE_COPY
from gateway.sip.registrations import RegistrationTable
from gateway.sip.transfer import TransferMapping
from gateway.sip.trunks import TrunkTable
from gateway.sip.uri import AbsoluteUri, SipUri, parse_uri

#: Methods whose 2xx carries the dialog's Contact (target refresh, §12.2.1.2).
_CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class InDialog:
    def __init__(
        self,
        edge: Edge,
        out: Outgoing,
        registrations: RegistrationTable,
        transfer: TransferMapping,
        endings: CallEndings,
        trunks: TrunkTable,
    ) -> None:
        self._edge = edge
        self._trunks = trunks
        self._out = out
        self._registrations = registrations
        self._transfer = transfer
        self._endings = endings

    # ------------------------------------------------------------- requests

    def request(self, side: Side, pair: DialogPair, event: RequestReceived, now: float) -> None:
        request = event.request
        method = request.method
        leg = pair.leg(side)
        to_side = pair.other(side)
        other = pair.leg(to_side)
        if leg.remote.tag is None and request.from_.tag:
            # A NOTIFY can overtake the 2xx of its SUBSCRIBE (RFC 6665 §4.1.2.4).
            leg.remote = leg.remote.with_tag(request.from_.tag)
            leg.learn_target_refresh(request)
        if method == "ACK":
            self._ack(side, pair, request, now)
            return
        if pair.state == PairState.ENDED:
            self._out.reply(side, event.key, request, 481, now)
            return
        seq = request.cseq.seq
        if leg.remote_cseq is not None and seq < leg.remote_cseq and method != "PRACK":
            self._out.reply(side, event.key, request, 500, now, "CSeq out of order")
            return
        leg.remote_cseq = seq
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            leg.learn_target_refresh(request)
        if method == "BYE":
            self._out.reply(side, event.key, request, 200, now)
            self._endings.end(pair, now, reason=f"BYE from {side.value}", send_bye_to=to_side)
            return
        if method == "PRACK" and not pair.caller_supports_100rel and side == pair.caller_side:
            self._out.reply(side, event.key, request, 200, now)
            return
        body = request.body
        if body and pair.media is not None and request.content_type == "application/sdp":
            try:
                body = self._sdp(pair, side, body)
            except MediaRefused as exc:
                headers = [("Warning", gateway_warning(exc.warning))]
                self._out.reply(side, event.key, request, 488, now, headers=headers)
                self._emit(CallRefused(pair.caller.call_id, exc.warning, 488, pair=pair.key))
                return
        outgoing = other.build_request(
            method,
            body=body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, REQUEST_COPY)
        if method == "PRACK":
            _map_rack(pair, request, outgoing)
        self._transfer.carry_refer_to(request, outgoing, to_side)
        key = self._out.relay_request(
            to_side, outgoing, other.peer, now, Relay(pair, side, event.key, request)
        )
        if method == "INVITE":
            pair.reinvites.add((to_side, key))

    def _ack(self, side: Side, pair: DialogPair, ack: SipRequest, now: float) -> None:
        self._out.acknowledged(pair, side)
        if pair.deferred_ack is None or pair.deferred_ack == side:
            return
        # Late offer: the ACK from this side carries the answer the other side awaits.
        target_side = pair.deferred_ack
        body = b""
        if ack.body and pair.media is not None:
            try:
                body, commands = pair.media.answer(side, ack.body, confirmed=True)
                self._emit_media(commands)
            except MediaRefused as exc:
                self._emit(CallRefused(pair.caller.call_id, exc.warning, 0, pair=pair.key))
                self._out.send_ack(pair, target_side, pair.deferred_ack_cseq, b"")
                pair.deferred_ack = None
                self._endings.hang_up(pair, now, reason=exc.warning)
                return
        self._out.send_ack(pair, target_side, pair.deferred_ack_cseq, body)
        pair.deferred_ack = None

    def standalone(self, side: Side, event: RequestReceived, now: float) -> None:
        """A request outside any dialog that creates none, to the other side."""
        request = event.request
        from_user = user_of(request.from_)
        to_user = request_user(request)
        target: SipUri | AbsoluteUri
        if side == Side.LAN:
            trunk = self._trunks.registrar
            peer, domain = trunk.peer, trunk.domain
            wan_uri = self._edge.wan_uri
            target = wan_uri(to_user, domain)
            local = NameAddr(request.from_.display, wan_uri(from_user, domain), {"tag": new_tag()})
            remote = NameAddr(None, wan_uri(user_of(request.to), domain), {})
            contact = self._edge.wan_contact()
        else:
            binding = self._registrations.find(to_user, now) if to_user else None
            if binding is None:
                self._out.reply(side, event.key, request, 404, now)
                return
            peer = binding.phone_peer
            target = parse_uri(binding.phone_contact)
            lan_uri = self._edge.lan_uri
            local = NameAddr(request.from_.display, lan_uri(from_user), {"tag": new_tag()})
            remote = NameAddr(None, lan_uri(binding.user), {})
            contact = self._edge.lan_contact(peer)
        to_side = other_side(side)
        leg = self._edge.new_leg(to_side, peer, local, remote, target, contact)
        outgoing = leg.build_request(
            request.method,
            body=request.body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, REQUEST_COPY)
        self._out.relay_request(to_side, outgoing, peer, now, Relay(None, side, event.key, request))

    # ------------------------------------------------------------ responses

    def response(
        self, side: Side, key: str, relay: Relay, response: SipResponse, now: float
    ) -> None:
        """A response to a request relayed in a dialog (or outside one), back to its sender."""
        status = response.status
        pair = relay.pair
        if status >= 200:
            self._out.relays.pop((side, key), None)
            if pair is not None:
                pair.reinvites.discard((side, key))
        if relay.internal or status == 100:
            return
        original = relay.original()
        method = original.method
        reply = make_response(original, status, response.reason)
        if pair is not None:
            leg = pair.leg(relay.from_side)
            if leg.local.tag and not original.to.tag:
                reply.set("To", str(original.to.with_tag(leg.local.tag)))
        copy_headers(response, reply, RESPONSE_COPY)
        if pair is not None and 200 <= status < 300:
            if method in ("INVITE", "UPDATE"):
                pair.leg(side).learn_target_refresh(response)
            if method in _CONTACT_METHODS:
                reply.add("Contact", pair.leg(relay.from_side).contact)
        body = response.body
        sdp = response.content_type == "application/sdp"
        if body and sdp and pair is not None and pair.media is not None:
            try:
                body = self._sdp(pair, side, body)
            except MediaRefused as exc:
                self._refuse_sdp_in_response(pair, side, relay, response, exc, now)
                return
        if body:
            reply.body = body
            reply.set("Content-Type", response.get("Content-Type") or "application/sdp")
        if method == "INVITE" and pair is not None and 200 <= status < 300:
            # re-INVITE answered: ACK the answering side now unless its 2xx held an offer.
            if pair.media is not None and pair.media.offer_from == side:
                pair.deferred_ack, pair.deferred_ack_cseq = side, response.cseq.seq
            else:
                self._out.send_ack(pair, side, response.cseq.seq, b"")
            self._out.send_2xx(pair, relay.from_side, relay.server_key, reply, now)
            return
        self._out.send_response(relay.from_side, relay.server_key, reply, now)
        if pair is not None and method == "SUBSCRIBE" and status >= 300:
            reason = f"subscription refused {status}"
            self._endings.end(pair, now, reason=reason, send_bye_to=None)

    def _refuse_sdp_in_response(
        self,
        pair: DialogPair,
        side: Side,
        relay: Relay,
        response: SipResponse,
        exc: MediaRefused,
        now: float,
    ) -> None:
        self._emit(CallRefused(pair.caller.call_id, exc.warning, 488, pair=pair.key))
        if relay.original().method == "INVITE" and 200 <= response.status < 300:
            self._out.send_ack(pair, side, response.cseq.seq, b"")
        reply = make_response(relay.original(), 488)
        reply.add("Warning", gateway_warning(exc.warning))
        self._out.send_response(relay.from_side, relay.server_key, reply, now)

    def stray(self, side: Side, pair: DialogPair | None, response: SipResponse) -> None:
        """A 2xx retransmission after its transaction ended: our ACK was lost; send it again."""
        if response.cseq.method != "INVITE" or not 200 <= response.status < 300:
            return
        if pair is None or pair.deferred_ack == side:
            return  # unknown, or still waiting for the other side's answer
        self._out.send_ack(pair, side, response.cseq.seq, b"", remote_to=response.to)

    def timed_out(self, relay: Relay, now: float) -> None:
        """No response within Timer B/F: 408 to the sender; a call still ringing fails."""
        if relay.internal:
            return
        pair = relay.pair
        if pair is not None and relay.request is None:
            # The dialog-creating request itself: a caller still waiting gets 408; a call
            # being cancelled whose callee never answered at all is simply over.
            # Either way nothing more will come from the callee: the pair is forgotten.
            if pair.state in RINGING:
                self._endings.fail(pair, 408, "no answer from the other side", now)
            if pair.state in WINDING_DOWN:
                self._endings.forget(pair, now)
            return
        with contextlib.suppress(SipError):  # the sender's transaction may be gone with the call
            self._out.reply(relay.from_side, relay.server_key, relay.original(), 408, now)

    # ---------------------------------------------------------------- media

    def _sdp(self, pair: DialogPair, side: Side, body: bytes) -> bytes:
        assert pair.media is not None
        confirmed = pair.state == PairState.CONFIRMED
        out, commands = pair.media.offer_or_answer(side, body, confirmed=confirmed)
        self._emit_media(commands)
        return out

    def _emit(self, event: CallEvent) -> None:
        self._out.emit(event)

    def _emit_media(self, commands: list[MediaCommand]) -> None:
        for command in commands:
            self._out.emit(command)


def _map_rack(pair: DialogPair, request: SipRequest, outgoing: SipRequest) -> None:
    """RAck names the INVITE's CSeq on the sender's leg; the other leg's INVITE had its own
    (RFC 3262 §7.2). RSeq values are relayed unchanged, so only the CSeq moves."""
    rack = request.get("RAck")
    if rack is None:
        return
    parts = rack.split()
    if len(parts) == 3 and pair.outgoing_cseq:
        parts[1] = str(pair.outgoing_cseq)
    outgoing.set("RAck", " ".join(parts))
