"""Setting a call up across the gateway: the dialog-creating request out, its responses back
(RFC 3261 §12.1, §13, §9.1; RFC 3262; RFC 3264; RFC 7092 §3.1).

A dialog-creating request (INVITE, SUBSCRIBE, REFER) from one side becomes a ``DialogPair``:
the caller's leg as the originator knows it, and a leg the gateway creates on the other side
with its own Call-ID, tags and CSeq, so nothing identifying the LAN crosses to the WAN. Each
response to it moves the pair's state machine (``gateway.sip.pair``) and is relayed to the
caller with the caller leg's tags:

- provisionals with a tag open early dialogs, one caller-side tag per callee fork (§12.1.1);
  a reliable one is PRACKed by the gateway itself when the caller cannot (RFC 3262);
- the 2xx confirms the pair; the gateway ACKs it at once unless it carries an offer (late
  offer: the ACK waits for the caller's answer), and retransmits its own 2xx to a UDP caller
  until the ACK (§13.3.1.4);
- an answer without acceptable crypto is refused, closed: the caller gets 488, the callee leg
  is cancelled or ACKed and ended (docs/design.md §3.1);
- a CANCEL is answered at once, the caller gets 487, and the callee leg is cancelled as soon
  as it may be.
"""

from __future__ import annotations

from datetime import datetime

from gateway.sdp.errors import MediaRefused, SdpError
from gateway.sip.actions import CallEvent, MediaCommand, SendMessage
from gateway.sip.admission import Admission, Refusal
from gateway.sip.call_endings import CallEndings
from gateway.sip.call_events import (
    CallAnswered,
    CallCancelled,
    CallFailed,
    CallRefused,
    CallStarted,
    PlaintextDowngrade,
    TrunkFailover,
)
from gateway.sip.dialog import Leg, copy_headers
from gateway.sip.dialog_index import DialogIndex
from gateway.sip.edge import (
    Edge,
    gateway_warning,
    has_option_tag,
    is_reliable_provisional,
    request_user,
    user_of,
)
from gateway.sip.events import RequestReceived
from gateway.sip.headers import NameAddr
from gateway.sip.legs import LegBuilder
from gateway.sip.limits import MAX_CALLS, MAX_DIALOGS, RETRY_AFTER
from gateway.sip.message import SipRequest, SipResponse, make_response, new_tag
from gateway.sip.outgoing import Outgoing, Relay
from gateway.sip.pair import RINGING, WINDING_DOWN, DialogPair, PairInput, PairState
from gateway.sip.peer import Peer, Side
from gateway.sip.redirect import redirect_contacts
from gateway.sip.registrar import RESPONSE_COPY, Challenges
from gateway.sip.registrations import RegistrationTable
from gateway.sip.sdp_link import MediaLinks
from gateway.sip.transfer import TransferMapping
from gateway.sip.trunks import FAILOVER_STATUSES, Trunk, TrunkTable

#: Headers carried from one leg's request to the other's, by method; values unchanged.
REQUEST_COPY: tuple[str, ...] = (
    "Authorization",
    "Proxy-Authorization",
    "Subject",
    "Priority",
    "Accept",
    "Allow-Events",
    "Session-Expires",
    "Min-SE",
    "Privacy",
    "P-Preferred-Identity",
    "P-Asserted-Identity",
    "Diversion",
    "Event",
    "Subscription-State",
    "Expires",
    "Referred-By",
    "Info-Package",
    "Recv-Info",
    "Content-Disposition",
    "Reason",
)


def origin_of(side: Side, request: SipRequest) -> tuple[Side, str, str | None, int]:
    """What identifies a dialog-creating request apart from its branch (§8.2.2.2)."""
    return (side, request.call_id, request.from_.tag, request.cseq.seq)


class CallSetup:
    def __init__(
        self,
        edge: Edge,
        index: DialogIndex,
        out: Outgoing,
        admission: Admission,
        registrations: RegistrationTable,
        media: MediaLinks,
        transfer: TransferMapping,
        endings: CallEndings,
        trunks: TrunkTable,
    ) -> None:
        self._edge = edge
        self._settings = edge.settings
        self._index = index
        self._out = out
        self._admission = admission
        self._registrations = registrations
        self._media = media
        self._transfer = transfer
        self._endings = endings
        self.challenges = Challenges()
        self._serial = 0
        self.trunks = trunks
        self._legs = LegBuilder(edge, registrations, admission, self.challenges)
        #: Calls out waiting for their trunk's first response: deadline and pair, by key.
        self._waiting: dict[str, tuple[float, DialogPair]] = {}

    def provider_ready(self, side: Side, key: str, request: SipRequest, now: float) -> bool:
        """Fail closed: a LAN request bound for the provider gets 503 while the provider
        connection is down or unverified (nothing is ever sent in the clear instead)."""
        registrar = self.trunks.registrar.name
        if side != Side.LAN or self.trunks.is_up(registrar):
            return True
        return self._unavailable(side, key, request, self.trunks.down_reason(registrar), now)

    def _unavailable(
        self, side: Side, key: str, request: SipRequest, reason: str, now: float
    ) -> bool:
        self._out.count("refused_wan_down")
        warning = gateway_warning(f"provider unavailable: {reason}")
        headers = [("Warning", warning), ("Retry-After", "30")]
        self._out.reply(side, key, request, 503, now, headers=headers)
        if request.method == "INVITE":
            # A call refused while the provider link is down still gets its call record.
            self._emit(
                CallRefused(
                    request.call_id,
                    f"provider unavailable: {reason}",
                    503,
                    rule="provider.unavailable",
                    caller=user_of(request.from_),
                    callee=request_user(request),
                )
            )
        return False

    # ------------------------------------------------------------- requests

    def start(self, side: Side, event: RequestReceived, now: float, wall: datetime) -> None:
        """A dialog-creating request (the gateway accepts calls, the provider is up)."""
        request = event.request
        method = request.method
        source = event.source
        assert isinstance(source, Peer)
        existing = self._index.by_origin(origin_of(side, request))
        if existing is not None:
            if existing.branch != request.top_via.branch:
                # §8.2.2.2: the same request reached us again by another path (a loop or a
                # fork that came back): merged request.
                self._out.count("loop_detected")
                self._out.reply(side, event.key, request, 482, now)
            elif existing.last_final is not None:
                self._out.emit(SendMessage(source, existing.last_final))
            return
        if self._over_call_limit(side, event, now):
            return
        number = None
        candidates: list[Trunk] = []
        if side == Side.LAN:
            if not any(self.trunks.is_up(t.name) for t in self.trunks.trunks):
                self._unavailable(side, event.key, request, self.trunks.why_none(None, "*"), now)
                return
            if method == "INVITE":
                if not request_user(request):
                    # Nothing to dial (a Request-URI without a user, a tel: URI that holds no
                    # number): never a call toward the provider (RFC 3261 §21.4.22).
                    warning = gateway_warning("no number to dial in the Request-URI")
                    refusal = Refusal(484, warning, rule="dialplan.no-number")
                    self._refuse_call(side, event, refusal, now)
                    return
                verdict = self._admission.check_call(
                    user_of(request.from_) or "",
                    source.address[0],
                    request_user(request) or "",
                    now,
                    wall,
                )
                if isinstance(verdict, Refusal):
                    self._refuse_call(side, event, verdict, now)
                    return
                number = verdict.number
                candidates = self.trunks.candidates(number, request_user(request) or "", now)
            elif self.trunks.is_up(self.trunks.registrar.name):
                candidates = [self.trunks.registrar]
            if not candidates:
                reason = self.trunks.why_none(number, request_user(request) or "")
                self._unavailable(side, event.key, request, reason, now)
                return
            caller = self._legs.phone_leg(request, source)
            callee = self._legs.trunk_leg(request, source, number, candidates[0])
        else:
            built = self._inbound_legs(event, source, now)
            if built is None:
                return
            caller, callee = built
        self._serial += 1
        pair = DialogPair(
            key=f"c{self._serial}",
            method=method,
            caller=caller,
            callee=callee,
            caller_side=side,
            server_key=event.key,
            request=request,
            origin=origin_of(side, request),
            branch=request.top_via.branch,
            started=now,
            caller_supports_100rel=has_option_tag(request, "100rel"),
        )
        if candidates:
            pair.trunk = candidates[0].name
            pair.fallback = [t.name for t in candidates[1:]]
            pair.number = number
        body = b""
        if method == "INVITE":
            trunk_media = candidates[0].media if candidates else None
            pair.media = self._media.new(pair.key, trunk_media)
            if pair.media.call.policy.allow_plaintext:
                self._emit(
                    PlaintextDowngrade(
                        request.call_id,
                        "wan.insecure_plaintext_media",
                        "INSECURE: this call may carry plain RTP to the provider",
                    )
                )
            if request.body:
                try:
                    body = self._offer(pair, side, request.body)
                except MediaRefused as exc:
                    self._refuse_offer(pair, side, event.key, request, exc, now)
                    return
                pair.media.caller_offered = True
        elif request.body:
            body = request.body
        self._index.add(pair)
        if method == "INVITE":
            self._out.reply(side, event.key, request, 100, now)
        self._send_to_callee(pair, request, body, now)
        if side == Side.LAN and method == "INVITE":
            caller_user = user_of(request.from_) or ""
            self._admission.call_started(
                pair.key, caller_user, request_user(request) or "", number, now
            )
        self._emit(
            CallStarted(
                pair.caller.call_id,
                pair.key,
                method,
                side.value,
                user_of(request.from_),
                request_user(request),
                callee.call_id,
                *(phone_of(request, source) if side == Side.LAN else ()),
            )
        )

    def _over_call_limit(self, side: Side, event: RequestReceived, now: float) -> bool:
        """[limits] max_calls (INVITE) and max_dialogs (SUBSCRIBE, REFER): a new pair beyond
        its bound gets 503 with Retry-After, unless it is an emergency call (docs/design.md
        §3.5), which is admitted whatever the count."""
        request = event.request
        limits = self._settings.limits
        calls = self._index.calls
        if request.method == "INVITE":
            limit, counter, what = limits.max_calls, MAX_CALLS, "calls"
            if calls < limit:
                return False
        else:
            limit, counter = limits.max_dialogs, MAX_DIALOGS
            what = "subscriptions and transfers"
            if len(self._index) - calls < limit:
                return False
        if (
            side == Side.LAN
            and request.method == "INVITE"
            and self._admission.is_emergency(request_user(request) or "")
        ):
            return False
        self._out.count(counter)
        reason = f"too many {what} through the gateway (limit {limit})"
        headers = [("Warning", gateway_warning(reason)), ("Retry-After", str(RETRY_AFTER))]
        self._out.reply(side, event.key, request, 503, now, headers=headers)
        if request.method == "INVITE":
            self._emit(
                CallRefused(
                    request.call_id,
                    reason,
                    503,
                    rule="limits.max-calls",
                    caller=user_of(request.from_),
                    callee=request_user(request),
                )
            )
        return True

    def _send_to_callee(
        self, pair: DialogPair, request: SipRequest, body: bytes, now: float
    ) -> None:
        """The dialog-creating request on the callee leg (again, after a failover)."""
        outgoing = pair.callee.build_request(
            request.method,
            body=body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, REQUEST_COPY)
        copy_headers(request, outgoing, ("Allow", "Supported"))
        if pair.trunk is not None:
            self._legs.format_identity(outgoing, self.trunks.get(pair.trunk))
        self._transfer.carry_refer_to(request, outgoing, pair.callee_side)
        self._transfer.carry_replaces(request, outgoing, pair.caller_side)
        outgoing.set("User-Agent", self._settings.user_agent)
        pair.outgoing = outgoing
        pair.outgoing_cseq = outgoing.cseq.seq
        relay = Relay(pair, pair.caller_side, pair.server_key, None)
        pair.client_key = self._out.relay_request(
            pair.callee_side, outgoing, pair.callee.peer, now, relay
        )
        if pair.trunk is not None and request.method == "INVITE":
            timeout = self.trunks.get(pair.trunk).answer_timeout
            self._waiting[pair.key] = (now + timeout, pair)

    def cancel(self, side: Side, event: RequestReceived, now: float) -> None:
        """CANCEL (§9.2): 200 to it and 487 to the request at once; the callee leg follows."""
        request = event.request
        pair = self._index.by_server(side, event.matches) if event.matches else None
        if pair is None or pair.state not in RINGING:
            self._out.reply(side, event.key, request, 481, now)
            return
        self._out.reply(side, event.key, request, 200, now)
        self._out.reply(side, pair.server_key, pair.initial_request(), 487, now)
        self._emit(CallCancelled(pair.caller.call_id, pair.key, side.value))
        self._endings.give_up(pair, now)

    def _refuse_call(
        self, side: Side, event: RequestReceived, refusal: Refusal, now: float
    ) -> None:
        self._out.count("policy_refused_call")
        status = refusal.status or 403
        headers = [("Warning", refusal.warning)] if refusal.warning else []
        self._out.reply(side, event.key, event.request, status, now, headers=headers)
        request = event.request
        self._emit(
            CallRefused(
                request.call_id,
                refusal.warning or refusal.rule,
                status,
                rule=refusal.rule,
                caller=user_of(request.from_),
                callee=request_user(request),
            )
        )

    def _inbound_legs(
        self, event: RequestReceived, source: Peer, now: float
    ) -> tuple[Leg, Leg] | None:
        """Provider -> phone: find the phone behind the Request-URI (token or extension)."""
        request = event.request
        user = request_user(request)
        binding = self._registrations.find(user, now) if user else None
        if binding is None:
            self._out.count("inbound_no_binding")
            self._out.reply(Side.WAN, event.key, request, 404, now)
            return None
        return self._legs.inbound(request, source, binding)

    # ------------------------------------------------------------ responses

    def on_response(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """A response to the dialog-creating request, from the callee side."""
        status = response.status
        callee_tag = response.to.tag
        if status < 200:
            event = PairInput.EARLY_DIALOG if callee_tag and status > 100 else PairInput.PROVISIONAL
        else:
            event = PairInput.ANSWER if status < 300 else PairInput.REJECT
        if pair.trunk is not None:
            self._waiting.pop(pair.key, None)  # the trunk answered something in time
            if event == PairInput.ANSWER:
                self.trunks.answered(pair.trunk)
            elif (
                event == PairInput.REJECT
                and status in FAILOVER_STATUSES
                and pair.state in RINGING
                and self._fail_over(pair, f"{status} {response.reason}", now)
            ):
                return
        before = pair.advance(event)
        if before in WINDING_DOWN or before == PairState.ENDED:
            self._wind_down(pair, before, event, response, now)
        elif before == PairState.CONFIRMED:
            if event == PairInput.ANSWER:
                self._answer_again(pair, response, now)
        elif status == 100:
            return  # §16.7: 100 Trying is hop-by-hop; the caller had ours
        elif event == PairInput.REJECT:
            self._relay_rejection(pair, response, now)
        else:
            self._relay_dialog_response(pair, response, now)

    # ------------------------------------------------------------- failover

    def timed_out(self, pair: DialogPair, now: float) -> bool:
        """The callee's transaction timed out (Timer B): True when the call went on to the
        next trunk; else the caller is failed as before."""
        self._waiting.pop(pair.key, None)
        return pair.state in RINGING and self._fail_over(pair, "no response (timeout)", now)

    def handle_timer(self, now: float) -> None:
        """Calls out whose trunk sent nothing within its answer timeout: mark the trunk and
        give the call to the next one (the silent attempt is abandoned, not cancelled:
        §9.1 allows no CANCEL before a provisional)."""
        for key, (deadline, pair) in list(self._waiting.items()):
            if now < deadline:
                continue
            del self._waiting[key]
            if pair.state != PairState.CALLING or pair.trunk is None:
                continue
            reason = f"no response in {self.trunks.get(pair.trunk).answer_timeout:g} s"
            old_key, old_leg = pair.client_key, pair.callee
            if not pair.fallback:
                self.trunks.failed(pair.trunk, reason, now)
                continue
            if self._fail_over(pair, reason, now) and old_key is not None:
                pair.abandoned[old_key] = old_leg

    def next_deadline(self) -> float | None:
        return min((d for d, _ in self._waiting.values()), default=None)

    def on_abandoned(self, pair: DialogPair, key: str, response: SipResponse, now: float) -> None:
        """A response on an attempt given up for another trunk: a 2xx is ACKed and ended."""
        leg = pair.abandoned.get(key)
        if leg is None or response.status < 200:
            return
        del pair.abandoned[key]
        self._out.relays.pop((pair.callee_side, key), None)
        if response.status < 300:
            leg.learn_from_response(response, uac=True)
            ack = leg.build_request("ACK", cseq=response.cseq.seq)
            self._out.emit(SendMessage(leg.peer, bytes(ack)))
            self._out.send_request(pair.callee_side, leg.build_request("BYE"), leg.peer, now)

    def _fail_over(self, pair: DialogPair, reason: str, now: float) -> bool:
        """The call's trunk failed it before an answer: mark the trunk, and send the call to
        the next usable one, as a new leg with fresh keys. False when none is left."""
        assert pair.trunk is not None
        self.trunks.failed(pair.trunk, reason, now)
        while pair.fallback:
            trunk = self.trunks.get(pair.fallback.pop(0))
            if self.trunks.usable(trunk.name, now):
                break
        else:
            return False
        request = pair.initial_request()
        source = pair.caller.peer
        failed = pair.trunk
        pair.advance(PairInput.RETRY)
        self._index.forget_dialog(pair.callee_side, pair.callee.call_id, pair.callee.local_tag)
        pair.callee = self._legs.trunk_leg(request, source, pair.number, trunk, retry=True)
        pair.trunk = trunk.name
        pair.tag_map.clear()
        assert pair.callee.local_tag is not None
        self._index.add_dialog(pair, pair.callee_side, pair.callee.call_id, pair.callee.local_tag)
        body = b""
        if pair.media is not None:
            self._endings.release_media(pair)
            pair.media = self._media.new(pair.key, trunk.media)
            if request.body:
                try:
                    body = self._offer(pair, pair.caller_side, request.body)
                except MediaRefused:
                    return False  # the next trunk's media policy refuses what the phone offers
                pair.media.caller_offered = True
        self._emit(TrunkFailover(pair.caller.call_id, pair.key, failed, trunk.name, reason))
        self._send_to_callee(pair, request, body, now)
        return True

    def _wind_down(
        self,
        pair: DialogPair,
        before: PairState,
        event: PairInput,
        response: SipResponse,
        now: float,
    ) -> None:
        """The caller has its final answer; the callee leg is being cancelled or ended."""
        if before == PairState.CANCEL_PENDING and pair.state == PairState.CANCELLING:
            self._endings.send_cancel(pair, now)  # the first provisional: CANCEL may go now
            return
        if event == PairInput.ANSWER:
            # The callee answered as the CANCEL crossed it: confirm and end at once.
            pair.callee.learn_from_response(response, uac=True)
            self._out.send_ack(pair, pair.callee_side, response.cseq.seq, b"")
            bye = pair.callee.build_request("BYE")
            self._out.send_request(pair.callee_side, bye, pair.callee.peer, now)
        if event in (PairInput.ANSWER, PairInput.REJECT):
            self._endings.forget(pair, now)

    def _answer_again(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """A 2xx again: retransmitted because our ACK was lost (§13.2.2.4: ACK it again, its
        SDP was taken the first time), or another fork's answer (ACK it, then end it)."""
        callee_side = pair.callee_side
        if response.to.tag == pair.confirmed_tag:
            if pair.deferred_ack != callee_side:
                self._out.send_ack(pair, callee_side, response.cseq.seq, b"")
            return
        self._out.send_ack(pair, callee_side, response.cseq.seq, b"", remote_to=response.to)
        bye = pair.callee.build_request("BYE")
        bye.set("To", str(response.to))
        self._out.send_request(callee_side, bye, pair.callee.peer, now)

    def _relay_rejection(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        status = response.status
        self._out.relays.pop((pair.callee_side, pair.client_key or ""), None)
        request = pair.initial_request()
        reply = make_response(request, status, response.reason, to_tag=pair.caller.local_tag)
        copy_headers(response, reply, RESPONSE_COPY)
        if 300 <= status < 400:
            # Redirect targets re-homed to the gateway: the phone's new INVITE comes back
            # through admission and the dial plan (a redirect is no way around them).
            for contact in redirect_contacts(response, self._edge, pair.caller_side):
                reply.add("Contact", contact)
        if status in (401, 407) and pair.caller_side == Side.LAN and pair.method == "INVITE":
            # The phone will retry with credentials: keep the WAN leg's identity for it.
            pair.callee.remote = NameAddr(pair.callee.remote.display, pair.callee.remote.uri, {})
            self.challenges.remember(
                pair.caller.call_id, pair.caller.remote.tag or "", pair.callee, now
            )
        self._out.send_response(pair.caller_side, pair.server_key, reply, now)
        self._admission.auth_result(request, pair.caller.peer, status, now)
        self._emit(CallFailed(pair.caller.call_id, pair.key, status))
        self._endings.forget(pair, now)

    def _relay_dialog_response(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """A provisional or a 2xx: an early or confirmed dialog on the callee leg."""
        status = response.status
        callee_side = pair.callee_side
        callee_tag = response.to.tag
        reply_tag = self._caller_tag_for(pair, callee_tag) if callee_tag else None
        reply_tag = reply_tag or pair.caller.local_tag
        pair.callee.learn_from_response(response, uac=True)
        body = b""
        media = pair.media
        if response.body and media is not None and response.content_type == "application/sdp":
            try:
                if media.caller_offered:
                    body, commands = media.answer(
                        callee_side, response.body, early=callee_tag, confirmed=False
                    )
                    self._emit_all(commands)
                elif status >= 200 or is_reliable_provisional(response):
                    body = self._offer(pair, callee_side, response.body)
            except MediaRefused as exc:
                self._refuse_answer(pair, response, exc, now)
                return
            except SdpError as exc:
                # Unusable SDP fails this call alone, closed like a refusal (never half-set-up).
                refusal = MediaRefused(f"unusable SDP from the other side: {exc.reason}")
                self._refuse_answer(pair, response, refusal, now)
                return
        request = pair.initial_request()
        reply = make_response(request, status, response.reason, to_tag=reply_tag)
        copy_headers(response, reply, RESPONSE_COPY)
        copy_headers(response, reply, ("Allow", "Supported"))
        reply.add("Contact", pair.caller.contact)
        # §12.1.1: the UAS copies the request's Record-Route into dialog-creating responses,
        # or the proxies on the caller's path drop out of the dialog.
        for record_route in request.get_all("Record-Route"):
            reply.add("Record-Route", record_route)
        if body:
            reply.body = body
            reply.set("Content-Type", "application/sdp")
        if status < 200:
            if is_reliable_provisional(response):
                if pair.caller_supports_100rel:
                    reply.set("Require", "100rel")
                    reply.set("RSeq", response.get("RSeq") or "1")
                else:
                    self._prack_ourselves(pair, response, now)
            self._out.send_response(pair.caller_side, pair.server_key, reply, now)
            return
        self._confirm(pair, response, reply, reply_tag, now)

    def _confirm(
        self,
        pair: DialogPair,
        response: SipResponse,
        reply: SipResponse,
        reply_tag: str | None,
        now: float,
    ) -> None:
        """2xx: confirm this dialog; forget the other early dialogs (forking)."""
        callee_tag = response.to.tag
        pair.confirmed_tag = callee_tag
        pair.answered = now
        self._admission.call_answered(pair.key, now)
        media = pair.media
        if media is not None and callee_tag and media.caller_offered:
            self._emit_all(media.confirm(callee_tag))
        if reply_tag and reply_tag != pair.caller.local_tag:
            pair.caller.local = pair.caller.local.with_tag(reply_tag)
        if pair.method == "INVITE":
            callee_side = pair.callee_side
            if (media is not None and media.caller_offered) or not response.body:
                self._out.send_ack(pair, callee_side, response.cseq.seq, b"")
            else:
                pair.deferred_ack, pair.deferred_ack_cseq = callee_side, response.cseq.seq
            self._out.send_2xx(pair, pair.caller_side, pair.server_key, reply, now)
            suite = media.chosen_suite() if media is not None else None
            downgrade = bool(media and media.uses_plaintext_downgrade)
            keying = media.keying if media is not None else None
            self._emit(
                CallAnswered(
                    pair.caller.call_id, pair.key, suite.value if suite else None, downgrade, keying
                )
            )
        else:
            self._out.send_response(pair.caller_side, pair.server_key, reply, now)
        pair.confirmed()

    def _caller_tag_for(self, pair: DialogPair, callee_tag: str) -> str:
        """One caller-side to-tag per callee early dialog (§12.1.1: each fork is a dialog)."""
        tag = pair.tag_map.get(callee_tag)
        if tag is None:
            assert pair.caller.local_tag is not None
            tag = pair.caller.local_tag if not pair.tag_map else new_tag()
            pair.tag_map[callee_tag] = tag
            self._index.add_dialog(pair, pair.caller_side, pair.caller.call_id, tag)
        return tag

    def _prack_ourselves(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """The caller cannot do 100rel: acknowledge the reliable provisional for it (RFC 3262)."""
        prack = pair.callee.build_request("PRACK")
        prack.set("To", str(response.to))
        rseq = response.get("RSeq") or "1"
        prack.set("RAck", f"{rseq} {response.cseq.seq} {response.cseq.method}")
        relay = Relay(pair, pair.caller_side, "", prack, internal=True)
        self._out.relay_request(pair.callee_side, prack, pair.callee.peer, now, relay)

    # ------------------------------------------------------------- refusals

    def _refuse_answer(
        self, pair: DialogPair, response: SipResponse, exc: MediaRefused, now: float
    ) -> None:
        """Fail closed: the callee answered without acceptable crypto. The caller gets 488 and
        never sees an answer; a callee leg that did answer is ACKed and ended at once."""
        self._out.count("refused_media")
        self._emit(CallRefused(pair.caller.call_id, exc.warning, 488, pair=pair.key))
        reply = make_response(pair.initial_request(), 488, to_tag=pair.caller.local_tag)
        reply.add("Warning", gateway_warning(exc.warning))
        self._out.send_response(pair.caller_side, pair.server_key, reply, now)
        if 200 <= response.status < 300:
            # The 2xx confirmed the callee leg as it came: ACK it and end it at once.
            self._out.send_ack(pair, pair.callee_side, response.cseq.seq, b"")
            bye = pair.callee.build_request("BYE")
            self._out.send_request(pair.callee_side, bye, pair.callee.peer, now)
            pair.advance(PairInput.HANG_UP)
            self._endings.forget(pair, now)
        else:
            self._endings.give_up(pair, now)  # a provisional came: the CANCEL may go at once
        self._endings.release_media(pair)

    def _refuse_offer(
        self,
        pair: DialogPair,
        side: Side,
        key: str,
        request: SipRequest,
        exc: MediaRefused,
        now: float,
    ) -> None:
        """The caller's own offer has nothing the gateway may relay: 488, nothing goes out."""
        self._out.count("refused_media")
        caller, callee = user_of(request.from_), request_user(request)
        self._emit(CallRefused(request.call_id, exc.warning, 488, caller=caller, callee=callee))
        headers = [("Warning", gateway_warning(exc.warning))]
        self._out.reply(side, key, request, 488, now, headers=headers)
        self._endings.release_media(pair)

    # ---------------------------------------------------------------- media

    def _offer(self, pair: DialogPair, side: Side, body: bytes) -> bytes:
        assert pair.media is not None
        out, commands = pair.media.offer(side, body)
        self._emit_all(commands)
        return out

    def _emit(self, event: CallEvent) -> None:
        self._out.emit(event)

    def _emit_all(self, commands: list[MediaCommand]) -> None:
        for command in commands:
            self._out.emit(command)


def phone_of(request: SipRequest, source: Peer) -> tuple[str | None, str, str]:
    """A phone's User-Agent, "ip:port" and transport, for the phone inventory."""
    host, port = source.address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return request.get("User-Agent"), where, source.transport
