"""The back-to-back user agent core: its inputs and outputs, and where each message goes.

Theory of operation
-------------------
The gateway is a signalling-only B2BUA (RFC 7092 §3.1) that also anchors media: each call is
two dialogs, one per side (``gateway.sip.pair``), and the gateway is never a proxy (RFC 3261
§16 is not used), so nothing identifying the LAN crosses to the WAN.

Inputs are datagrams or parsed messages with the ``Peer`` they came from, the provider
connection's state, media problems and timer firings, each with the time: ``now`` (monotonic
seconds) and, where a dial plan may ask, ``wall`` (local wall-clock time). The core reads no
clock and keeps none. Outputs are ``actions()``: bytes for a peer, media worker commands, call
events (``gateway.sip.call_events``) and security notices. ``get_timer()`` is the next
deadline.

The work is split along the seams of the protocol, each module with one job:

- ``edge``: the gateway's addresses, URIs and Contacts on each side;
- ``admission``: every question to the policy engine (before anything is relayed);
- ``outgoing``: the two transaction layers (§17), ACKs, 2xx retransmission, the outputs;
- ``dialog_index``: finding a call by key, dialog, transaction or origin, in one look-up;
- ``call_setup``: a dialog-creating request out, its responses back (the pair's machine);
- ``in_dialog``: requests inside a call, and requests outside any dialog;
- ``call_endings``: BYE, CANCEL and failing a call, whoever ends it;
- ``registrar``: REGISTER relaying and the challenges phones answer;
- ``transfer``: Refer-To, Referred-By and Replaces across the legs;
- ``sdp_link``: offer/answer across the legs and the media workers' stream commands.

This module routes: stateless checks (§8.2.1-§8.2.3) before any transaction exists, then
each request to the module whose job it is, each response to its relay.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from gateway.policy.engine import PolicyEngine
from gateway.sdp.errors import SdpError
from gateway.sip.actions import Action, SecurityNotice, SendMessage
from gateway.sip.admission import Admission
from gateway.sip.call_endings import CallEndings
from gateway.sip.call_events import (
    AckMissing,
    BadResponse,
    CallKeyed,
    MalformedMessage,
    MediaEnded,
)
from gateway.sip.call_restore import CallRecords
from gateway.sip.call_setup import CallSetup
from gateway.sip.dialog_index import DialogIndex
from gateway.sip.edge import (
    Edge,
    EdgeSettings,
    gateway_warning,
    reason_phrase,
    stamp_received,
)
from gateway.sip.errors import SipError, SipParseError
from gateway.sip.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimedOut,
)
from gateway.sip.in_dialog import InDialog
from gateway.sip.keepalive import is_keepalive_notify
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.outgoing import Outgoing, Relay, refusal_response
from gateway.sip.pair import DialogPair, PairState
from gateway.sip.peer import Peer, Side
from gateway.sip.precheck import ALLOW, precheck
from gateway.sip.registrar import Registrar
from gateway.sip.registrations import RegistrationTable
from gateway.sip.sdp_link import MediaLinks
from gateway.sip.shield import Shield, ShieldSettings
from gateway.sip.transfer import TransferMapping
from gateway.sip.trunks import TrunkTable
from gateway.state.calls import CallRecord

__all__ = ["B2bua", "DialogPair", "EdgeSettings", "PairState"]

#: Dialog-creating methods: each becomes a DialogPair.
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


class B2bua:
    """The sans-IO signalling core of the gateway."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        policy: PolicyEngine | None = None,
        shield: ShieldSettings | None = None,
    ) -> None:
        self.settings = settings
        self.registrations = RegistrationTable()
        self._edge = Edge(settings)
        self._index = DialogIndex()
        self._out = Outgoing(settings.timers, self._index, settings.user_agent)
        self._admission = Admission(policy, self.registrations)
        self._transfer = TransferMapping(self._edge, self._index)
        self._endings = CallEndings(self._index, self._out, self._admission)
        self._trunks = TrunkTable(settings.trunks, settings.routes)
        self._media_links = MediaLinks(
            settings.media, settings.lan_media_ports, settings.wan_media_ports
        )
        self._setup = CallSetup(
            self._edge,
            self._index,
            self._out,
            self._admission,
            self.registrations,
            self._media_links,
            self._transfer,
            self._endings,
            self._trunks,
        )
        self._dialogs = InDialog(
            self._edge, self._out, self.registrations, self._transfer, self._endings, self._trunks
        )
        self._registrar = Registrar(
            self._edge, self.registrations, self._out, self._admission, self._trunks
        )
        #: Confirmed calls as records for a standby (gateway.state.calls, issue 14).
        self._records = CallRecords(
            self._index, self._out, self._media_links, self._admission, self._setup, self._trunks
        )
        self.accepting_calls = True
        #: The credential shield ([shield]): None = credentials pass through (the default).
        self.shield = Shield(shield, self._out, self._admission) if shield is not None else None

    # ----------------------------------------------------------------- inputs

    def receive_datagram(self, peer: Peer, data: bytes, now: float, wall: datetime) -> None:
        """A UDP datagram: one SIP message (§18.3); trailing octets are ignored."""
        if not data.strip(b"\r\n"):
            return  # a CRLF keep-alive (RFC 5626 §4.4.2) on UDP: nothing to answer
        limits = self.settings.limits
        try:
            message = parse_message(
                data,
                max_size=limits.max_message_bytes,
                max_header_bytes=limits.max_header_bytes,
                max_headers=limits.max_headers,
            )
        except SipParseError as exc:
            self.receive_invalid(peer, exc, now)
            return
        self.receive_message(peer, message, now, wall)

    def receive_invalid(self, peer: Peer, error: SipParseError, now: float) -> None:
        """A message that failed parsing: answer requests with the hint, drop responses."""
        self._out.count(f"sip_malformed_{peer.side.value}")
        if error.limit:
            self._out.count(error.limit)
        if self._admission.check_malformed(peer, now) is not None:
            self._out.count(f"policy_refused_{peer.side.value}")
            return  # a refused (banned, flooding) source gets no log line per message either
        partial = error.partial
        status: int | None = None
        if (
            isinstance(partial, SipRequest)
            and partial.method != "ACK"
            and all(partial.has(h) for h in ("Via", "From", "To", "Call-ID", "CSeq"))
        ):
            try:
                response = make_response(partial, error.status_hint, reason_phrase(error.reason))
                response.add("Warning", gateway_warning(error.reason))
                self._out.send_stateless(peer, response)
                status = error.status_hint
            except SipError:
                pass  # not even Via/CSeq to answer with: dropped and counted
        call_id = (partial.get("Call-ID") if partial is not None else None) or ""
        source = f"{peer.address[0]}:{peer.address[1]}"
        self._out.emit(MalformedMessage(call_id, peer.side.value, source, status, error.reason))

    def receive_message(
        self, peer: Peer, message: SipRequest | SipResponse, now: float, wall: datetime
    ) -> None:
        """A framed, parsed message from a peer."""
        tx = self._out.tx[peer.side]
        try:
            if isinstance(message, SipRequest):
                if not self._admitted(peer, message, now):
                    return
                if not peer.reliable:
                    stamp_received(message, peer)
                problem = precheck(message, self._edge)
                if problem is not None:
                    if message.method != "ACK":
                        self._out.send_stateless(peer, problem)
                    return
                tx.receive_request(message, peer, reliable=peer.reliable, now=now)
            elif peer.side == Side.WAN or self._answers_us(message):
                tx.receive_response(message, now)
        except SipError as exc:
            self._out.count(f"sip_rejected_{peer.side.value}")
            if isinstance(message, SipRequest) and message.method != "ACK":
                # If not even an answer can be built, the count above is all that is left.
                with contextlib.suppress(SipError):
                    self._out.send_stateless(peer, make_response(message, exc.status_hint))
        finally:
            self._pump(now, wall)

    def wan_connection_state(
        self, up: bool, reason: str, now: float, wall: datetime, trunk: str | None = None
    ) -> None:
        """The glue reports a trunk's provider connection up (verified) or down (and why);
        ``trunk`` None: the first trunk (a site with one)."""
        trunks = self._trunks
        name = trunk if trunk is not None else trunks.trunks[0].name
        registrar = trunks.registrar.name
        came_up = trunks.link_state(name, up, reason)
        moved = trunks.registrar.name != registrar and trunks.is_up(trunks.registrar.name)
        if moved or (came_up and name == trunks.registrar.name):
            # The phones' registrations go (again) where REGISTERs now go: a reconnect, or
            # the primary trunk lost or back.
            self._registrar.refresh_all(now)
        self._pump(now, wall)

    def media_problem(self, pair_key: str, reason: str, now: float, wall: datetime) -> None:
        """A media worker could not serve a call (bind failure, idle, worker lost): end it."""
        pair = self._index.get(pair_key)
        if pair is None:
            return
        self._out.emit(MediaEnded(pair.caller.call_id, pair.key, reason))
        self._records.touch(pair)
        if pair.state == PairState.CONFIRMED:
            self._endings.hang_up(pair, now, reason=reason)
        else:
            self._endings.fail(pair, 503, f"media unavailable: {reason}", now)
        self._pump(now, wall)

    def media_keyed(
        self, pair_key: str, stream: int, generation: int, suite: str, now: float, wall: datetime
    ) -> None:
        """A media worker's DTLS-SRTP handshake keyed a stream: the call's suite is known."""
        pair = self._index.get(pair_key)
        media = pair.media if pair is not None else None
        if pair is None or media is None or not media.dtls_keyed(stream, generation, suite):
            return  # an ended call, or an association replaced meanwhile
        chosen = media.chosen_suite()
        if chosen is not None:
            self._out.emit(CallKeyed(pair.caller.call_id, pair.key, chosen.value))
        self._pump(now, wall)

    def handle_timer(self, now: float, wall: datetime) -> None:
        for pair in self._out.handle_timer(now):
            self._records.touch(pair)
            # §13.3.1.4: no ACK within 64*T1 — the dialog is confirmed but must end.
            self._out.emit(AckMissing(pair.caller.call_id, pair.key))
            self._endings.hang_up(pair, now, reason="no ACK from caller")
        self._setup.handle_timer(now)
        self._setup.challenges.expire(now, 64 * self.settings.timers.t1)
        self.registrations.expire(now)
        self._admission.handle_timer(now)
        self._pump(now, wall)

    def get_timer(self) -> float | None:
        deadlines = [
            self._out.next_deadline(),
            self._admission.next_deadline(),
            self._setup.next_deadline(),
        ]
        found = [d for d in deadlines if d is not None]
        return min(found) if found else None

    def actions(self) -> list[Action]:
        self._out.actions.extend(SecurityNotice(e) for e in self._admission.drain_events())
        out, self._out.actions = self._out.actions, []
        return out

    def stop_accepting(self) -> None:
        """Graceful stop: new dialog-creating requests get 503 from now on."""
        self.accepting_calls = False

    def hang_up_all(self, now: float, wall: datetime, reason: str) -> None:
        for pair in self._index.pairs():
            self._records.touch(pair)
            if pair.state == PairState.CONFIRMED:
                self._endings.hang_up(pair, now, reason=reason)
            else:
                self._endings.fail(pair, 503, reason, now)
        self._pump(now, wall)

    # ------------------------------------------------- call records (issue 14)

    def take_changed_calls(self) -> set[str]:
        """Keys of calls whose replicable state may have changed since the last call (answered,
        an in-dialog request or response handled, ended): export each again, or delete it
        from the replica when ``export_call`` says None. The first call names every call
        (tracking starts with it)."""
        return self._records.take_changed()

    def export_call(self, key: str, now: float, wall: float) -> CallRecord | None:
        """A confirmed INVITE call as a record (``wall``: Unix time at ``now``); None for a
        call that is not (or no longer) confirmed. Its streams carry no checkpoint."""
        return self._records.export(key, now, wall)

    def restore_calls(self, records: list[CallRecord], now: float, wall: float) -> list[str]:
        """Take over confirmed calls from another gateway's records; returns the keys restored
        (``call_restore_skipped`` names the others and why). Emits no media command."""
        return self._records.restore(records, now, wall)

    @property
    def call_restore_skipped(self) -> dict[str, str]:
        return self._records.skipped

    # ------------------------------------------------------------ inspection

    @property
    def active_calls(self) -> list[DialogPair]:
        return [p for p in self._index.pairs() if p.method == "INVITE"]

    @property
    def counters(self) -> dict[str, int]:
        return self._out.counters

    def sizes(self) -> dict[str, int]:
        """How much state the core holds now, by kind: what a soak watches stay flat."""
        lan_ports, wan_ports = self._media_links.ports_in_use
        lan_timers, lan_heap = self._out.tx[Side.LAN].timers_pending
        wan_timers, wan_heap = self._out.tx[Side.WAN].timers_pending
        return {
            "dialog_pairs": len(self._index),
            "transactions_lan": len(self._out.tx[Side.LAN]),
            "transactions_wan": len(self._out.tx[Side.WAN]),
            "relays": len(self._out.relays),
            "timers": lan_timers + wan_timers,
            "timer_heap": lan_heap + wan_heap,
            "registrations": len(self.registrations),
            "lan_port_pairs": lan_ports,
            "wan_port_pairs": wan_ports,
        }

    @property
    def policy(self) -> PolicyEngine | None:
        return self._admission.policy

    def map_replaces(self, value: str, from_side: Side) -> str | None:
        """A Replaces value naming a dialog on ``from_side``, as the other side knows it."""
        return self._transfer.map_replaces(value, from_side)

    # --------------------------------------------------------------- routing

    def _admitted(self, peer: Peer, request: SipRequest, now: float) -> bool:
        """Ask the policy before anything else; a refusal is answered statelessly or not at
        all, and counted either way."""
        refusal = self._admission.check_request(peer, request, now)
        if refusal is None:
            return True
        self._out.count(f"policy_refused_{peer.side.value}")
        if refusal.status is not None and request.method != "ACK":
            response = refusal_response(request, refusal.status, refusal.warning)
            if response is not None:
                self._out.send_stateless(peer, response)
        return False

    def _answers_us(self, response: SipResponse) -> bool:
        """Responses on the LAN side must answer our own requests: top Via is ours."""
        return response.top_via.host.strip("[]") == self.settings.lan_address

    def _pump(self, now: float, wall: datetime) -> None:
        """Drain both transaction layers: events to handlers, datagrams to the glue."""
        progress = True
        while progress:
            progress = False
            for side, tx in self._out.tx.items():
                for destination, data in tx.datagrams_to_send():
                    assert isinstance(destination, Peer)
                    self._out.emit(SendMessage(destination, data))
                event = tx.next_event()
                while event is not None:
                    progress = True
                    self._dispatch(side, event, now, wall)
                    event = tx.next_event()
                for destination, data in tx.datagrams_to_send():
                    assert isinstance(destination, Peer)
                    self._out.emit(SendMessage(destination, data))

    def _dispatch(self, side: Side, event: object, now: float, wall: datetime) -> None:
        self._records.touch_event(side, event)
        if isinstance(event, RequestReceived):
            try:
                self._on_request(side, event, now, wall)
            except (SipError, SdpError) as exc:
                self._out.count(f"sip_rejected_{side.value}")
                request = event.request
                if request.method != "ACK":
                    reason = reason_phrase(str(exc))
                    self._out.reply(side, event.key, request, exc.status_hint, now, reason)
        elif isinstance(event, ResponseReceived):
            self._on_response(side, event, now)
        elif isinstance(event, StrayResponse):
            response = event.response
            pair = self._index.by_dialog(side, response.call_id, response.from_.tag or "")
            self._dialogs.stray(side, pair, response)
        elif isinstance(event, TransactionTimedOut):
            relay = self._out.relays.pop((side, event.key), None)
            if relay is not None:
                if relay.binding is not None:
                    self._registrar.on_timeout(relay, now)
                elif not self._callee_timed_out(relay, event.key, now):
                    self._dialogs.timed_out(relay, now)
        elif isinstance(event, TransactionTerminated):
            # A terminated transaction passes nothing up any more (§17.1.1.2: 2xx that arrive
            # later are stray), so its relay has no use left. Kept for a live pair, the INVITE's
            # relay outlived the call and held the whole ended pair.
            self._out.relays.pop((side, event.key), None)
            self._index.transaction_ended(side, event.key)

    def _on_request(self, side: Side, event: RequestReceived, now: float, wall: datetime) -> None:
        request = event.request
        method = request.method
        if method == "CANCEL":
            self._setup.cancel(side, event, now)
            return
        to_tag = request.to.tag
        if to_tag:
            pair = self._index.by_dialog(side, request.call_id, to_tag)
            if pair is not None:
                self._dialogs.request(side, pair, event, now)
            elif method != "ACK":
                self._out.reply(side, event.key, request, 481, now)
            return
        if method == "ACK":
            return  # an ACK outside any dialog: nothing to acknowledge (§17.2.3)
        if (
            side == Side.LAN
            and self.shield is not None
            and not (method == "OPTIONS" and self._edge.is_for_gateway(request))
            and not is_keepalive_notify(request)
            and method not in ("BYE", "PRACK", "UPDATE", "INFO")
            and not self.shield.admit(event, now)
        ):
            return  # challenged or refused by the credential shield
        if method == "REGISTER":
            if side == Side.WAN:
                self._out.reply(side, event.key, request, 405, now, headers=[("Allow", ALLOW)])
            elif self._setup.provider_ready(side, event.key, request, now):
                assert isinstance(event.source, Peer)
                self._registrar.relay(event, event.source, now)
            return
        if method == "OPTIONS" and self._edge.is_for_gateway(request):
            headers = [
                ("Allow", ALLOW),
                ("Accept", "application/sdp"),
                ("Supported", "100rel, timer, replaces"),
            ]
            self._out.reply(side, event.key, request, 200, now, headers=headers)
            return
        if side == Side.LAN and is_keepalive_notify(request):
            # An ATA's keep-alive NOTIFY is for its outbound proxy: answered here, not relayed.
            self._out.reply(side, event.key, request, 200, now)
            return
        if method in _DIALOG_CREATING:
            if not self.accepting_calls:
                headers = [("Warning", gateway_warning("shutting down")), ("Retry-After", "60")]
                self._out.reply(side, event.key, request, 503, now, headers=headers)
            else:
                self._setup.start(side, event, now, wall)
            return
        if method in ("BYE", "PRACK", "UPDATE", "INFO"):
            self._out.reply(side, event.key, request, 481, now)
            return
        if self._setup.provider_ready(side, event.key, request, now):
            self._dialogs.standalone(side, event, now)

    def _callee_timed_out(self, relay: Relay, key: str, now: float) -> bool:
        """A call out whose trunk never answered: True when it went on to the next trunk."""
        pair = relay.pair
        if pair is None or relay.request is not None or pair.trunk is None:
            return False
        if key != pair.client_key:
            pair.abandoned.pop(key, None)  # an attempt given up already
            return True
        return self._setup.timed_out(pair, now)

    def _on_response(self, side: Side, event: ResponseReceived, now: float) -> None:
        relay = self._out.relays.get((side, event.key))
        if relay is None:
            return
        response = event.response
        if (
            side == Side.WAN
            and self.shield is not None
            and self.shield.answer_provider(event.key, relay, response, now)
        ):
            return  # the gateway answered the provider's challenge itself
        try:
            if relay.binding is not None:
                if response.status >= 200:
                    self._out.relays.pop((side, event.key), None)
                self._registrar.on_response(relay, response, now)
            elif (
                relay.pair is not None
                and relay.pair.client_key == event.key
                and side != relay.pair.caller_side
            ):
                self._setup.on_response(relay.pair, response, now)
            elif relay.pair is not None and relay.request is None:
                self._setup.on_abandoned(relay.pair, event.key, response, now)
            else:
                self._dialogs.response(side, event.key, relay, response, now)
        except (SipError, SdpError) as exc:
            self._out.count(f"sip_bad_response_{side.value}")
            self._out.emit(BadResponse(response.get("Call-ID") or "", str(exc)))
