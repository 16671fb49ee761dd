"""The back-to-back user agent core: two dialogs per call, one per side, mapped onto each other.

Theory of operation
-------------------
The gateway is a signalling-only B2BUA (RFC 7092 §3.1) that also anchors media. Each call (or
subscription) is a ``DialogPair``: a *caller* leg on the side that sent the dialog-creating
request and a *callee* leg on the other side. The caller leg's dialog is the one the originator
knows (its Call-ID and From tag, our To tag); the callee leg is a dialog the gateway created
itself (our own Call-ID, tags and CSeq), so nothing identifying the LAN crosses to the WAN
(RFC 3261 §12 on each leg, §16 is *not* used: the gateway is never a proxy).

Inputs are parsed messages with the ``Peer`` they came from and the current time; outputs are
``actions()``: bytes for a peer, media worker commands and call events. Transactions (§17) run
in two ``TransactionLayer``s, one per side, because the sides differ in reliability: LAN UDP
retransmits, WAN TLS never does.

A request from one leg becomes a new request on the other leg's dialog; its response comes back
through a map from the new client transaction to the original server transaction. SDP bodies
pass through ``CallMedia``, which turns RTP/AVP into RTP/SAVP with SDES keys and refuses, with
488, whatever the WAN side offers or answers without acceptable crypto.

Rules that keep calls up:
- 2xx to INVITE is retransmitted by this core toward UDP peers until the ACK comes (§13.3.1.4)
  and never toward stream peers; 2xx retransmissions that reach us again are re-ACKed (§13.2.2.4).
- The gateway ACKs the callee's 2xx itself as soon as it carries an answer; when the 2xx carries
  an offer (the caller's INVITE had no SDP), the ACK waits for the caller's ACK and its answer.
- A CANCEL is answered at once, the caller gets 487, and the callee leg is cancelled as soon as
  it may be (§9.1: not before a provisional response).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, cast

from gateway.media.control import CloseCall, OpenStream, StreamSpec, UpdateStream
from gateway.media.ports import PortAllocator
from gateway.policy.engine import PolicyEngine
from gateway.policy.numbering import DialledNumber
from gateway.sdp.errors import SdpError
from gateway.sdp.negotiation import CallMedia, MediaPolicy, MediaRefused
from gateway.sip.actions import Action, CallEvent, MediaCommand, SecurityNotice, SendMessage
from gateway.sip.dialog import Leg, copy_headers
from gateway.sip.errors import SipError, SipParseError, TransactionStateError
from gateway.sip.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimedOut,
)
from gateway.sip.headers import NameAddr, Via
from gateway.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    new_call_id,
    new_tag,
    parse_message,
)
from gateway.sip.peer import Peer, Side
from gateway.sip.registrations import Binding, RegistrationTable
from gateway.sip.transaction import TimerSettings, TransactionLayer
from gateway.sip.uri import AbsoluteUri, SipUri, parse_uri

#: Methods the gateway carries between the legs (RFC 3261, 3262, 3265/6665, 3311, 3428, 3515, 6086).
SUPPORTED_METHODS = (
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
)
ALLOW = ", ".join(SUPPORTED_METHODS)
#: Option tags the gateway understands in Require (RFC 3261 §8.2.2.3).
SUPPORTED_EXTENSIONS = frozenset({"100rel", "timer", "replaces", "norefersub", "path"})

# Headers carried from one leg's request to the other's, by method; values unchanged.
_REQUEST_COPY: tuple[str, ...] = (
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
# Headers carried from a response back to the original requester.
_RESPONSE_COPY: tuple[str, ...] = (
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authentication-Info",
    "Warning",
    "Retry-After",
    "Min-Expires",
    "Min-SE",
    "Session-Expires",
    "Unsupported",
    "Accept",
    "Allow-Events",
    "Expires",
    "Reason",
    "Content-Disposition",
)


class PairState(StrEnum):
    CALLING = "calling"  # dialog-creating request sent to the callee side
    EARLY = "early"  # a provisional with a to-tag came back
    CONFIRMED = "confirmed"  # 2xx relayed
    ENDED = "ended"


@dataclass(frozen=True)
class EdgeSettings:
    """What the core needs to know about the deployment (derived from GatewayConfig)."""

    lan_address: str
    lan_port: int
    wan_address: str
    #: Port in our WAN Via/Contact: the WAN TLS listener if there is one.
    wan_port: int
    #: The provider connection as a Peer (connection None = whichever is current).
    provider: Peer
    #: Provider's SIP domain for Request-URIs, From and To on the WAN side.
    domain: str
    media: MediaPolicy
    lan_media_ports: tuple[int, int]
    wan_media_ports: tuple[int, int]
    timers: TimerSettings = field(default_factory=TimerSettings)
    user_agent: str = "sip-media-gateway"
    default_expires: int = 3600


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
    media: CallMedia | None = None
    state: PairState = PairState.CALLING
    client_key: str | None = None
    #: The request we sent to the callee (for CANCEL, §9.1); None once confirmed.
    outgoing: SipRequest | None = None
    #: Its CSeq number, which a PRACK's RAck names on the callee leg (RFC 3262 §7.2).
    outgoing_cseq: int = 0
    #: Callee-side to-tag -> caller-side to-tag, one per early dialog (forking, §13.2.2.4).
    tag_map: dict[str, str] = field(default_factory=dict)
    provisional_seen: bool = False
    cancel_pending: bool = False
    cancelled: bool = False
    #: Side whose offer awaits an answer, for offer/answer outside the initial INVITE.
    offer_from: Side | None = None
    #: The initial INVITE carried an offer (else the callee's 2xx carries one: "late offer").
    caller_offered: bool = False
    #: When the 2xx from a side needs our ACK only after the other side's ACK (late offer).
    deferred_ack: Side | None = None
    deferred_ack_cseq: int = 0
    #: Our 2xx toward a UDP caller, retransmitted until the ACK (§13.3.1.4).
    retransmit: _Retransmission | None = None
    #: Last 2xx we sent to the caller (re-sent when the INVITE is retransmitted late).
    last_final: bytes | None = None
    #: The callee confirmed dialog's to-tag.
    confirmed_tag: str | None = None
    caller_supports_100rel: bool = False
    started: float = 0.0
    answered: float = 0.0
    specs: list[StreamSpec | None] = field(default_factory=list)
    #: The call counts towards the policy's caps (call_ended owed when it goes).
    caps_counted: bool = False

    def leg(self, side: Side) -> Leg:
        return self.caller if side == self.caller_side else self.callee

    def initial_request(self) -> SipRequest:
        """The caller's dialog-creating request, asked for only while the dialog is set up."""
        if self.request is None:
            raise TransactionStateError(f"{self.key}: dialog confirmed, its request is gone")
        return self.request

    def confirmed(self) -> None:
        """The 2xx went to the caller: drop the set-up messages (see the class docstring)."""
        self.request = None
        self.outgoing = None

    def other(self, side: Side) -> Side:
        return Side.WAN if side == Side.LAN else Side.LAN


@dataclass(slots=True)
class _Retransmission:
    peer: Peer
    data: bytes
    next_at: float
    interval: float
    give_up_at: float
    side: Side


@dataclass(slots=True)
class _Relay:
    """A request relayed from one side to the other, awaiting its response."""

    pair: DialogPair | None
    from_side: Side
    server_key: str
    #: None for a pair's dialog-creating request: its responses and its timeout are handled
    #: through the pair, which keeps that request only until the dialog is confirmed.
    request: SipRequest | None
    #: For REGISTER: the binding.
    binding: Binding | None = None
    #: The gateway's own PRACK (caller without 100rel): no one to answer.
    internal: bool = False
    #: Where the original request came from (for brute-force accounting).
    source: Peer | None = None

    def original(self) -> SipRequest:
        """The relayed request (any but a pair's dialog-creating one, see ``request``)."""
        if self.request is None:
            raise TransactionStateError("a dialog-creating request is answered through its pair")
        return self.request


class B2bua:
    """The sans-IO signalling core of the gateway."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        policy: PolicyEngine | None = None,
        wall_clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.settings = settings
        #: Who may use the gateway and what they may dial (asked before anything is relayed).
        self.policy = policy
        #: Local wall-clock time for the dial plan's time windows (out-of-hours rules).
        self._wall_clock = wall_clock
        self.registrations = RegistrationTable()
        self._tx = {
            Side.LAN: TransactionLayer(settings.timers),
            Side.WAN: TransactionLayer(settings.timers),
        }
        self._lan_ports = PortAllocator(*settings.lan_media_ports)
        self._wan_ports = PortAllocator(*settings.wan_media_ports)
        self._pairs: dict[str, DialogPair] = {}
        #: (side, Call-ID, our tag on that side) -> pair, for in-dialog requests.
        self._dialogs: dict[tuple[Side, str, str], DialogPair] = {}
        #: (side, server transaction key) -> pair of the dialog-creating request.
        self._by_server: dict[tuple[Side, str], DialogPair] = {}
        #: (side, client transaction key) -> what to do with its responses.
        self._relays: dict[tuple[Side, str], _Relay] = {}
        #: (Call-ID, From tag) of LAN-originated INVITEs challenged by the provider -> the WAN
        #: leg to reuse when the phone retries with credentials.
        self._challenged: dict[tuple[str, str], tuple[Leg, float]] = {}
        #: Pairs with a 2xx being retransmitted toward a UDP caller (the only ones that need
        #: the core's own timer; the rest of the calls cost nothing per timer tick).
        self._retransmitting: dict[str, DialogPair] = {}
        #: (side, Call-ID, From tag, CSeq) of each pair's dialog-creating request.
        self._by_origin: dict[tuple[Side, str, str | None, int], DialogPair] = {}
        #: AOR -> REGISTERs relayed upstream and not yet answered.
        self._registering: dict[str, int] = {}
        self._actions: list[Action] = []
        self._ids = itertools.count(1)
        self.wan_up = False
        self.wan_down_reason = "not connected to the provider yet"
        self.counters: dict[str, int] = {}
        self.accepting_calls = True
        self._now = 0.0

    # ----------------------------------------------------------------- inputs

    def receive_datagram(self, peer: Peer, data: bytes, now: float) -> None:
        """A UDP datagram: one SIP message (§18.3); trailing octets are ignored."""
        if not data.strip(b"\r\n"):
            return  # a CRLF keep-alive (RFC 5626 §4.4.2) on UDP: nothing to answer
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.receive_invalid(peer, exc, now)
            return
        self.receive_message(peer, message, now)

    def receive_invalid(self, peer: Peer, error: SipParseError, now: float) -> None:
        """A message that failed parsing: answer requests with the hint, drop responses."""
        self._count(f"sip_malformed_{peer.side.value}")
        self._now = now
        if self.policy is not None:
            # Garbage is a request too: banned sources get nothing, and a flood of it from one
            # source earns a ban like any other flood.
            side: Literal["lan", "wan"] = "lan" if peer.side == Side.LAN else "wan"
            verdict = self.policy.check_request(
                side, peer.address[0], "MALFORMED", None, None, True, now
            )
            if not verdict.allowed:
                self._count(f"policy_refused_{side}")
                return
        partial = error.partial
        if (
            isinstance(partial, SipRequest)
            and partial.method != "ACK"
            and all(partial.has(h) for h in ("Via", "From", "To", "Call-ID", "CSeq"))
        ):
            try:
                response = make_response(partial, error.status_hint, _short(error.reason))
                response.add("Warning", f'399 gateway "{_quote(error.reason)}"')
            except SipError:
                return  # not even Via/CSeq to answer with: dropped and counted
            self._emit(SendMessage(peer, bytes(response)))

    def receive_message(self, peer: Peer, message: SipRequest | SipResponse, now: float) -> None:
        """A framed, parsed message from a peer."""
        self._now = now
        tx = self._tx[peer.side]
        try:
            if isinstance(message, SipRequest):
                if self.policy is not None and not self._policy_admits(peer, message, now):
                    return
                if not peer.reliable:
                    _stamp_received(message, peer)
                problem = self._precheck(peer, message)
                if problem is not None:
                    if message.method != "ACK":
                        self._emit(SendMessage(peer, bytes(problem)))
                    return
                tx.receive_request(message, peer, reliable=peer.reliable, now=now)
            else:
                if peer.side == Side.WAN or not self._reject_response(message):
                    tx.receive_response(message, now)
        except SipError as exc:
            self._count(f"sip_rejected_{peer.side.value}")
            if isinstance(message, SipRequest) and message.method != "ACK":
                # If not even an answer can be built, the count above is all that is left.
                with contextlib.suppress(SipError):
                    self._emit(SendMessage(peer, bytes(make_response(message, exc.status_hint))))
        finally:
            self._pump(now)

    def wan_connection_state(self, up: bool, reason: str, now: float) -> None:
        """The glue reports the provider connection up (verified) or down (and why)."""
        was_up = self.wan_up
        self.wan_up = up
        self.wan_down_reason = reason
        if up and not was_up:
            self._refresh_registrations(now)
        self._pump(now)

    def media_problem(self, pair_key: str, reason: str, now: float) -> None:
        """A media worker could not serve a call (bind failure, idle, worker lost): end it."""
        pair = self._pairs.get(pair_key)
        if pair is None:
            return
        self._emit(CallEvent("media-ended", pair.caller.call_id, {"reason": reason}))
        if pair.state == PairState.CONFIRMED:
            self._hang_up(pair, now, reason=reason)
        else:
            self._fail_caller(pair, 503, f"media unavailable: {reason}", now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        for tx in self._tx.values():
            tx.handle_timer(now)
        for key, pair in list(self._retransmitting.items()):
            r = pair.retransmit
            if r is None:
                del self._retransmitting[key]
                continue
            if now >= r.give_up_at:
                # §13.3.1.4: no ACK within 64*T1 — the dialog is confirmed but must end.
                pair.retransmit = None
                self._emit(CallEvent("no-ack", pair.caller.call_id))
                self._hang_up(pair, now, reason="no ACK from caller")
            elif now >= r.next_at:
                self._emit(SendMessage(r.peer, r.data))
                r.interval = min(r.interval * 2, self.settings.timers.t2)
                r.next_at = now + r.interval
        for challenge, (_, at) in list(self._challenged.items()):
            if now - at > 64 * self.settings.timers.t1:
                del self._challenged[challenge]
        self.registrations.expire(now)
        if self.policy is not None:
            self.policy.handle_timer(now)
        self._pump(now)

    def get_timer(self) -> float | None:
        deadlines = [t for t in (tx.get_timer() for tx in self._tx.values()) if t is not None]
        for pair in self._retransmitting.values():
            if pair.retransmit is not None:
                deadlines.append(min(pair.retransmit.next_at, pair.retransmit.give_up_at))
        if self.policy is not None:
            policy_deadline = self.policy.next_deadline()
            if policy_deadline is not None:
                deadlines.append(policy_deadline)
        return min(deadlines) if deadlines else None

    def actions(self) -> list[Action]:
        if self.policy is not None:
            self._actions.extend(SecurityNotice(e) for e in self.policy.drain_events())
        out, self._actions = self._actions, []
        return out

    def stop_accepting(self) -> None:
        """Graceful stop: new dialog-creating requests get 503 from now on."""
        self.accepting_calls = False

    def hang_up_all(self, now: float, reason: str) -> None:
        for pair in list(self._pairs.values()):
            if pair.state == PairState.CONFIRMED:
                self._hang_up(pair, now, reason=reason)
            else:
                self._fail_caller(pair, 503, reason, now)
        self._pump(now)

    # ------------------------------------------------------------ inspection

    @property
    def active_calls(self) -> list[DialogPair]:
        return [p for p in self._pairs.values() if p.method == "INVITE"]

    # --------------------------------------------------------------- pumping

    def _pump(self, now: float) -> None:
        """Drain both transaction layers: events to handlers, datagrams to the glue."""
        progress = True
        while progress:
            progress = False
            for side, tx in self._tx.items():
                for destination, data in tx.datagrams_to_send():
                    assert isinstance(destination, Peer)
                    self._emit(SendMessage(destination, data))
                event = tx.next_event()
                while event is not None:
                    progress = True
                    self._dispatch(side, event, now)
                    event = tx.next_event()
                for destination, data in tx.datagrams_to_send():
                    self._emit(SendMessage(cast(Peer, destination), data))

    def _dispatch(self, side: Side, event: object, now: float) -> None:
        if isinstance(event, RequestReceived):
            try:
                self._on_request(side, event, now)
            except (SipError, SdpError) as exc:
                self._count(f"sip_rejected_{side.value}")
                if event.request.method != "ACK":
                    self._reply(side, event.key, event.request, exc.status_hint, _short(str(exc)))
        elif isinstance(event, ResponseReceived):
            relay = self._relays.get((side, event.key))
            if relay is not None:
                try:
                    self._on_response(side, event.key, relay, event.response, now)
                except (SipError, SdpError) as exc:
                    self._count(f"sip_bad_response_{side.value}")
                    self._emit(
                        CallEvent(
                            "bad-response", event.response.get("Call-ID") or "", {"error": str(exc)}
                        )
                    )
        elif isinstance(event, StrayResponse):
            self._on_stray(side, event.response)
        elif isinstance(event, TransactionTimedOut):
            relay = self._relays.pop((side, event.key), None)
            if relay is not None:
                self._on_timeout(side, relay, now)
        elif isinstance(event, TransactionTerminated):
            # A terminated transaction passes nothing up any more (§17.1.1.2: 2xx that arrive
            # later are stray), so its relay has no use left. Kept for a live pair, the INVITE's
            # relay outlived the call and held the whole ended pair.
            self._relays.pop((side, event.key), None)
            self._by_server.pop((side, event.key), None)

    # ------------------------------------------------------------- requests

    # ---- policy

    def _policy_admits(self, peer: Peer, request: SipRequest, now: float) -> bool:
        """Ask the policy engine before anything else: allowlists, bans, floods, scanners.

        A refusal with a status is answered statelessly (no transaction, no state kept for a
        source that is being refused); one without is dropped in silence. Both are counted.
        """
        assert self.policy is not None
        side: Literal["lan", "wan"] = "lan" if peer.side == Side.LAN else "wan"
        method = request.method
        to_user: str | None
        if peer.side == Side.LAN:
            if method == "INVITE":
                # The Request-URI is a dialled number: never "unknown user" enumeration, but the
                # engine must see it to let emergency calls through whatever else applies.
                to_user, known = _ruri_user(request), True
            else:
                target = request.to if method == "REGISTER" else request.from_
                to_user = _user(target)
                # A request inside a dialog (To tag) belongs to a call the gateway let through
                # (or gets 481 and learns nothing): never evidence of enumeration. Phones that
                # do not register (static set-ups) behind one address otherwise got the site
                # banned by the ACKs of their tenth call.
                known = request.to.tag is not None or (
                    bool(to_user) and any(b.user == to_user for b in self.registrations.all())
                )
        else:
            to_user = _ruri_user(request)
            known = to_user is None or self._binding_for_user(to_user, now) is not None
        verdict = self.policy.check_request(
            side, peer.address[0], method, request.get("User-Agent"), to_user, known, now
        )
        if verdict.allowed:
            return True
        self._count(f"policy_refused_{side}")
        if verdict.status is not None and method != "ACK":
            with contextlib.suppress(SipError):
                response = make_response(request, verdict.status, to_tag=new_tag())
                if verdict.warning:
                    response.add("Warning", verdict.warning)
                self._emit(SendMessage(peer, bytes(response)))
        return False

    def _report_auth(self, request: SipRequest, source: Peer | None, status: int) -> None:
        """Final answers to a LAN source feed brute-force detection (401/407/403, 2xx)."""
        if self.policy is None or source is None or source.side != Side.LAN or status < 200:
            return
        had_credentials = request.has("Authorization") or request.has("Proxy-Authorization")
        self.policy.auth_result(
            source.address[0], status, self._now, had_credentials=had_credentials, side="lan"
        )

    def _binding_for_user(self, user: str, now: float) -> Binding | None:
        binding = self.registrations.by_token(user)
        if binding is None:
            found = self.registrations.active_for_user(user, now)
            binding = found[0] if found else None
        return binding

    def _precheck(self, peer: Peer, request: SipRequest) -> SipResponse | None:
        """Stateless checks of §8.2.1-§8.2.3 that answer before any transaction exists."""
        method = request.method
        if method not in SUPPORTED_METHODS:
            response = make_response(request, 501)
            response.add("Allow", ALLOW)
            return response
        uri = request.uri
        if not isinstance(uri, SipUri) and not (
            isinstance(uri, AbsoluteUri) and uri.scheme.lower() == "tel"
        ):
            return make_response(request, 416)
        if method in ("ACK", "CANCEL"):
            return None
        unknown = [
            tag
            for tag in request.get_all("Require")
            if tag.strip().lower() not in SUPPORTED_EXTENSIONS
        ]
        if unknown:
            response = make_response(request, 420)
            response.add("Unsupported", ", ".join(t.strip() for t in unknown))
            return response
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0 and not self._is_for_gateway(request):
            return make_response(request, 483)
        if request.body and method in ("INVITE", "UPDATE", "PRACK"):
            ctype = request.content_type
            if ctype != "application/sdp":
                response = make_response(request, 415)
                response.add("Accept", "application/sdp")
                return response
        if method == "INVITE":
            accept = request.get_all("Accept")
            if accept and not any(
                a.split(";")[0].strip().lower() in ("application/sdp", "application/*", "*/*")
                for a in accept
            ):
                response = make_response(request, 406)
                response.add("Warning", '399 gateway "only application/sdp bodies are supported"')
                return response
        return None

    def _reject_response(self, response: SipResponse) -> bool:
        """Responses on the LAN side must answer our own requests: top Via is ours."""
        via = response.top_via
        return via.host.strip("[]") != self.settings.lan_address

    def _on_request(self, side: Side, event: RequestReceived, now: float) -> None:
        request = event.request
        method = request.method
        if method == "CANCEL":
            self._on_cancel(side, event, now)
            return
        to_tag = request.to.tag
        if to_tag:
            pair = self._dialogs.get((side, request.call_id, to_tag))
            if pair is None:
                if method != "ACK":
                    self._reply(side, event.key, request, 481)
                return
            self._in_dialog(side, pair, event, now)
            return
        if method == "ACK":
            return  # an ACK outside any dialog: nothing to acknowledge (§17.2.3)
        if method == "REGISTER":
            if side == Side.LAN:
                self._relay_register(event, now)
            else:
                self._reply(side, event.key, request, 405, headers=[("Allow", ALLOW)])
            return
        if method == "OPTIONS" and self._is_for_gateway(request):
            self._reply(
                side,
                event.key,
                request,
                200,
                headers=[
                    ("Allow", ALLOW),
                    ("Accept", "application/sdp"),
                    ("Supported", "100rel, timer, replaces"),
                ],
            )
            return
        if method in ("INVITE", "SUBSCRIBE", "REFER"):
            self._new_pair(side, event, now)
            return
        if method in ("BYE", "PRACK", "UPDATE", "INFO"):
            self._reply(side, event.key, request, 481)
            return
        self._relay_standalone(side, event, now)

    def _is_for_gateway(self, request: SipRequest) -> bool:
        uri = request.uri
        if not isinstance(uri, SipUri) or uri.user:
            return False
        host = uri.host.strip("[]")
        return host in (self.settings.lan_address, self.settings.wan_address, self.settings.domain)

    # ---- destinations

    def _check_wan(self, side: Side, key: str, request: SipRequest) -> bool:
        """Fail closed: a LAN request bound for the provider gets 503 while the provider
        connection is down or unverified (nothing is ever sent in the clear instead)."""
        if side == Side.LAN and not self.wan_up:
            self._count("refused_wan_down")
            self._reply(
                side,
                key,
                request,
                503,
                headers=[
                    (
                        "Warning",
                        f'399 gateway "provider unavailable: {_quote(self.wan_down_reason)}"',
                    ),
                    ("Retry-After", "30"),
                ],
            )
            return False
        return True

    def _lan_contact(self, peer: Peer) -> str:
        transport = ";transport=tcp" if peer.transport == "tcp" else ""
        return f"<sip:gw@{_host(self.settings.lan_address)}:{self.settings.lan_port}{transport}>"

    def _wan_contact(self, user: str = "gw") -> str:
        transport = self.settings.provider.transport
        return (
            f"<sip:{user}@{_host(self.settings.wan_address)}:{self.settings.wan_port}"
            f";transport={transport}>"
        )

    def _wan_uri(self, user: str | None) -> SipUri:
        return SipUri("sip", user, None, self.settings.domain, None, {}, None)

    def _lan_uri(self, user: str | None) -> SipUri:
        return SipUri(
            "sip", user, None, _host(self.settings.lan_address), self.settings.lan_port, {}, None
        )

    def _new_leg(
        self,
        side: Side,
        peer: Peer,
        local: NameAddr,
        remote: NameAddr,
        target: SipUri | AbsoluteUri,
        contact: str,
        call_id: str | None = None,
    ) -> Leg:
        if side == Side.LAN:
            via_host, via_port = self.settings.lan_address, self.settings.lan_port
        else:
            via_host, via_port = self.settings.wan_address, self.settings.wan_port
        return Leg(
            peer=peer,
            call_id=call_id or new_call_id(),
            local=local,
            remote=remote,
            contact=contact,
            remote_target=target,
            via_host=via_host,
            via_port=via_port,
        )

    # ---- dialog-creating requests

    def _new_pair(self, side: Side, event: RequestReceived, now: float) -> None:
        request = event.request
        method = request.method
        if not self.accepting_calls:
            self._reply(
                side,
                event.key,
                request,
                503,
                headers=[("Warning", '399 gateway "shutting down"'), ("Retry-After", "60")],
            )
            return
        existing = self._pair_for_retransmission(side, request)
        if existing is not None:
            if existing.branch != request.top_via.branch:
                # §8.2.2.2: the same request reached us again by another path (a loop or a
                # fork that came back): merged request.
                self._count("loop_detected")
                self._reply(side, event.key, request, 482)
            elif existing.last_final is not None:
                self._emit(SendMessage(_source(event), existing.last_final))
            return
        number: DialledNumber | None = None
        if side == Side.LAN:
            if not self._check_wan(side, event.key, request):
                return
            if method == "INVITE" and self.policy is not None:
                verdict = self.policy.check_outbound_call(
                    _user(request.from_) or "",
                    _source(event).address[0],
                    _ruri_user(request) or "",
                    now,
                    self._wall_clock(),
                )
                if not verdict.allowed:
                    self._count("policy_refused_call")
                    self._reply(
                        side,
                        event.key,
                        request,
                        verdict.status or 403,
                        headers=[("Warning", verdict.warning)] if verdict.warning else (),
                    )
                    self._emit(
                        CallEvent(
                            "refused",
                            request.call_id,
                            {"rule": verdict.rule, "status": verdict.status or 403},
                        )
                    )
                    return
                number = verdict.number
            caller, callee = self._outbound_legs(event, number)
        else:
            built = self._inbound_legs(event, now)
            if built is None:
                return
            caller, callee = built
        pair = DialogPair(
            key=f"c{next(self._ids)}",
            method=method,
            caller=caller,
            callee=callee,
            caller_side=side,
            server_key=event.key,
            request=request,
            origin=_origin(side, request),
            branch=request.top_via.branch,
            started=now,
            caller_supports_100rel=_has_tag(request, "100rel"),
        )
        body = b""
        if method == "INVITE":
            pair.media = CallMedia(pair.key, self.settings.media, self._lan_ports, self._wan_ports)
            if self.settings.media.allow_plaintext:
                self._emit(
                    CallEvent(
                        "downgrade",
                        request.call_id,
                        {
                            "setting": "wan.insecure_plaintext_media",
                            "warning": "INSECURE: this call may carry plain RTP to the provider",
                        },
                    )
                )
            if request.body:
                try:
                    body = self._offer(pair, side, request.body)
                except MediaRefused as exc:
                    self._refuse_media(pair, side, event.key, request, exc, now)
                    return
                pair.caller_offered = True
        elif request.body:
            body = request.body
        self._pairs[pair.key] = pair
        self._by_origin[pair.origin] = pair
        self._by_server[(side, event.key)] = pair
        assert caller.local_tag is not None
        self._dialogs[(side, caller.call_id, caller.local_tag)] = pair
        assert callee.local_tag is not None
        self._dialogs[(pair.other(side), callee.call_id, callee.local_tag)] = pair
        if method == "INVITE":
            self._reply(side, event.key, request, 100)
        outgoing = callee.build_request(
            method,
            body=body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, _REQUEST_COPY)
        copy_headers(request, outgoing, ("Allow", "Supported"))
        self._carry_refer_to(request, outgoing, pair.other(side))
        replaces = request.get("Replaces")
        if replaces is not None:
            mapped = self.map_replaces(replaces, side)
            if mapped is not None:
                outgoing.set("Replaces", mapped)
        outgoing.set("User-Agent", self.settings.user_agent)
        pair.outgoing = outgoing
        pair.outgoing_cseq = outgoing.cseq.seq
        pair.client_key = self._send_request(pair.other(side), outgoing, callee.peer, now)
        if self.policy is not None and side == Side.LAN and method == "INVITE":
            e164 = number.number if number is not None else (_ruri_user(request) or "")
            self.policy.call_started(
                pair.key,
                _user(request.from_) or "",
                e164,
                bool(number and number.international),
                now,
                emergency=bool(number and number.kind == "emergency"),
            )
            pair.caps_counted = True
        self._relays[(pair.other(side), pair.client_key)] = _Relay(pair, side, event.key, None)
        self._emit(
            CallEvent(
                "started",
                pair.caller.call_id,
                {
                    "pair": pair.key,
                    "method": method,
                    "from_side": side.value,
                    "from": _user(request.from_),
                    "to": _ruri_user(request),
                    "callee_call_id": callee.call_id,
                },
            )
        )

    def _pair_for_retransmission(self, side: Side, request: SipRequest) -> DialogPair | None:
        """A late retransmission of a dialog-creating request whose transaction already ended."""
        return self._by_origin.get(_origin(side, request))

    def _outbound_legs(
        self, event: RequestReceived, number: DialledNumber | None = None
    ) -> tuple[Leg, Leg]:
        """Phone -> provider: the caller leg faces the phone, the callee leg the provider."""
        request = event.request
        phone_from = request.from_
        caller = self._new_leg(
            Side.LAN,
            _source(event),
            request.to.with_tag(new_tag()),
            phone_from,
            request.contacts[0].uri if request.contacts else phone_from.uri,
            self._lan_contact(_source(event)),
            call_id=request.call_id,
        )
        caller.remote_cseq = request.cseq.seq
        caller.route_set = list(request.get_all("Record-Route"))
        from_user = _user(phone_from)
        to_user = _ruri_user(request)
        if number is not None and number.kind == "e164":
            to_user = number.number  # the provider gets E.164 (RFC 3966 global number)
        challenged = self._challenged.pop((request.call_id, phone_from.tag or ""), None)
        if challenged is not None:
            callee = challenged[0]  # the phone answers a challenge: same WAN Call-ID and tag
        else:
            binding = self._binding_of_phone(from_user, _source(event))
            callee = self._new_leg(
                Side.WAN,
                self.settings.provider,
                NameAddr(phone_from.display, self._wan_uri(from_user), {"tag": new_tag()}),
                NameAddr(None, self._wan_uri(to_user), {}),
                self._wan_uri(to_user),
                self._wan_contact(binding.token if binding else "gw"),
            )
        return caller, callee

    def _binding_of_phone(self, user: str | None, peer: Peer) -> Binding | None:
        for binding in self.registrations.all():
            if binding.user == user and binding.phone_peer.address[0] == peer.address[0]:
                return binding
        return None

    def _inbound_legs(self, event: RequestReceived, now: float) -> tuple[Leg, Leg] | None:
        """Provider -> phone: find the phone behind the Request-URI (token or extension)."""
        request = event.request
        user = _ruri_user(request)
        binding = self.registrations.by_token(user or "") if user else None
        if binding is None and user:
            bindings = self.registrations.active_for_user(user, now)
            binding = bindings[0] if bindings else None
        if binding is None:
            self._count("inbound_no_binding")
            self._reply(Side.WAN, event.key, request, 404)
            return None
        provider_from = request.from_
        caller = self._new_leg(
            Side.WAN,
            _source(event),
            request.to.with_tag(new_tag()),
            provider_from,
            request.contacts[0].uri if request.contacts else provider_from.uri,
            self._wan_contact(binding.token),
            call_id=request.call_id,
        )
        caller.remote_cseq = request.cseq.seq
        caller.route_set = list(request.get_all("Record-Route"))
        phone_uri = parse_uri(binding.phone_contact)
        callee = self._new_leg(
            Side.LAN,
            binding.phone_peer,
            NameAddr(
                provider_from.display, self._lan_uri(_user(provider_from)), {"tag": new_tag()}
            ),
            NameAddr(None, self._lan_uri(binding.user), {}),
            phone_uri,
            self._lan_contact(binding.phone_peer),
        )
        return caller, callee

    def _carry_refer_to(self, request: SipRequest, outgoing: SipRequest, to_side: Side) -> None:
        """Refer-To names a party in the sender's world; re-home its host to the other side so
        the transfer target is reached through the gateway (RFC 3515 §2.1). Referred-By
        (RFC 3892) names the sender in its world: re-homed the same way, so no LAN address
        leaves in it."""
        for name in ("Refer-To", "Referred-By"):
            value = request.get(name)
            if value is None:
                continue
            target = NameAddr.parse(value)
            if isinstance(target.uri, SipUri):
                user = target.uri.user
                uri = self._wan_uri(user) if to_side == Side.WAN else self._lan_uri(user)
                if name == "Refer-To" and target.uri.headers:
                    uri.headers = self._map_uri_headers(target.uri.headers, _other(to_side))
                target = NameAddr(target.display, uri, target.params)
            outgoing.set(name, str(target))

    def _map_uri_headers(self, headers: str, from_side: Side) -> str | None:
        """Headers embedded in a Refer-To URI travel on, except that a Replaces (attended
        transfer, RFC 3891 §5) names a dialog of the sender's leg and is mapped to the
        matching dialog of the other leg; one that matches nothing is left out."""
        kept = []
        for item in headers.split("&"):
            name, _, value = item.partition("=")
            if name.lower() == "replaces":
                mapped = self.map_replaces(urllib.parse.unquote(value), from_side)
                if mapped is None:
                    continue
                value = urllib.parse.quote(mapped, safe="")
            kept.append(f"{name}={value}")
        return "&".join(kept) or None

    def map_replaces(self, value: str, from_side: Side) -> str | None:
        """Translate a Replaces value (call-id;to-tag=..;from-tag=..) naming a dialog on
        ``from_side`` into the same call's dialog on the other side, or None if unknown.

        The tags are as the recipient sees the dialog: to-tag is the gateway's tag on the
        sender's leg, from-tag the sender's own; on the other leg they become the far party's
        tag and the gateway's tag there."""
        call_id, *params = [part.strip() for part in value.split(";")]
        tags = dict(p.split("=", 1) for p in params if "=" in p)
        extra = [p for p in params if not p.startswith(("to-tag=", "from-tag="))]
        for pair in self._pairs.values():
            leg = pair.leg(from_side)
            if (
                leg.call_id == call_id
                and leg.local_tag == tags.get("to-tag")
                and leg.remote_tag == tags.get("from-tag")
            ):
                other = pair.leg(pair.other(from_side))
                mapped = f"{other.call_id};to-tag={other.remote_tag};from-tag={other.local_tag}"
                return ";".join([mapped, *extra])
        return None

    # ---- in-dialog requests

    def _in_dialog(self, side: Side, pair: DialogPair, event: RequestReceived, now: float) -> None:
        request = event.request
        method = request.method
        leg = pair.leg(side)
        other_side = pair.other(side)
        other = pair.leg(other_side)
        if leg.remote.tag is None and request.from_.tag:
            # A NOTIFY can overtake the 2xx of its SUBSCRIBE (RFC 6665 §4.1.2.4).
            leg.remote = leg.remote.with_tag(request.from_.tag)
            leg.learn_target_refresh(request)
        if method == "ACK":
            self._on_ack(side, pair, request, now)
            return
        if pair.state == PairState.ENDED:
            self._reply(side, event.key, request, 481)
            return
        seq = request.cseq.seq
        if leg.remote_cseq is not None and seq < leg.remote_cseq and method != "PRACK":
            self._reply(side, event.key, request, 500, "CSeq out of order")
            return
        leg.remote_cseq = seq
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            leg.learn_target_refresh(request)
        if method == "BYE":
            self._reply(side, event.key, request, 200)
            self._end_pair(pair, now, reason=f"BYE from {side.value}", send_bye_to=other_side)
            return
        if method == "PRACK" and not pair.caller_supports_100rel and side == pair.caller_side:
            self._reply(side, event.key, request, 200)
            return
        body = request.body
        if body and pair.media is not None and request.content_type == "application/sdp":
            try:
                body = self._offer_or_answer(pair, side, body)
            except MediaRefused as exc:
                self._reply(
                    side,
                    event.key,
                    request,
                    488,
                    headers=[("Warning", f'399 gateway "{_quote(exc.warning)}"')],
                )
                self._emit(CallEvent("refused", pair.caller.call_id, {"reason": exc.warning}))
                return
        outgoing = other.build_request(
            method,
            body=body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, _REQUEST_COPY)
        if method == "PRACK":
            self._map_rack(pair, side, request, outgoing)
        self._carry_refer_to(request, outgoing, other_side)
        key = self._send_request(other_side, outgoing, other.peer, now)
        self._relays[(other_side, key)] = _Relay(pair, side, event.key, request)

    def _map_rack(
        self, pair: DialogPair, side: Side, request: SipRequest, outgoing: SipRequest
    ) -> None:
        """RAck names the INVITE's CSeq on the sender's leg; the other leg's INVITE had its own
        (RFC 3262 §7.2). RSeq values are relayed unchanged, so only the CSeq moves."""
        rack = request.get("RAck")
        if rack is None:
            return
        parts = rack.split()
        if len(parts) == 3 and pair.outgoing_cseq:
            parts[1] = str(pair.outgoing_cseq)
        outgoing.set("RAck", " ".join(parts))

    def _on_ack(self, side: Side, pair: DialogPair, ack: SipRequest, now: float) -> None:
        if pair.retransmit is not None and pair.retransmit.side == side:
            pair.retransmit = None
        if pair.deferred_ack is not None and pair.deferred_ack != side:
            # Late offer: the ACK from this side carries the answer the other side awaits.
            target_side = pair.deferred_ack
            body = b""
            if ack.body and pair.media is not None:
                try:
                    body = self._answer(pair, side, ack.body)
                except MediaRefused as exc:
                    self._emit(CallEvent("refused", pair.caller.call_id, {"reason": exc.warning}))
                    self._send_ack(pair, target_side, pair.deferred_ack_cseq, b"")
                    pair.deferred_ack = None
                    self._hang_up(pair, now, reason=exc.warning)
                    return
            self._send_ack(pair, target_side, pair.deferred_ack_cseq, body)
            pair.deferred_ack = None

    def _on_cancel(self, side: Side, event: RequestReceived, now: float) -> None:
        request = event.request
        pair = self._by_server.get((side, event.matches)) if event.matches else None
        if pair is None or pair.state not in (PairState.CALLING, PairState.EARLY):
            self._reply(side, event.key, request, 481)
            return
        self._reply(side, event.key, request, 200)
        pair.cancelled = True
        self._reply(side, pair.server_key, pair.initial_request(), 487)
        self._emit(CallEvent("cancelled", pair.caller.call_id, {"by": side.value}))
        self._cancel_callee(pair, now)

    def _cancel_callee(self, pair: DialogPair, now: float) -> None:
        if pair.outgoing is None:
            return
        if not pair.provisional_seen:
            pair.cancel_pending = True  # §9.1: wait for a provisional before cancelling
            return
        cancel = _build_cancel(pair.outgoing)
        callee_side = pair.other(pair.caller_side)
        self._send_request(callee_side, cancel, pair.callee.peer, now)

    # ---- standalone (out-of-dialog, not dialog-creating) requests

    def _relay_standalone(self, side: Side, event: RequestReceived, now: float) -> None:
        request = event.request
        if side == Side.LAN and not self._check_wan(side, event.key, request):
            return
        from_user = _user(request.from_)
        to_user = _ruri_user(request)
        if side == Side.LAN:
            peer = self.settings.provider
            target: SipUri | AbsoluteUri = self._wan_uri(to_user)
            local = NameAddr(request.from_.display, self._wan_uri(from_user), {"tag": new_tag()})
            remote = NameAddr(None, self._wan_uri(_user(request.to)), {})
            contact = self._wan_contact()
        else:
            binding = self.registrations.by_token(to_user or "") if to_user else None
            if binding is None and to_user:
                found = self.registrations.active_for_user(to_user, now)
                binding = found[0] if found else None
            if binding is None:
                self._reply(side, event.key, request, 404)
                return
            peer = binding.phone_peer
            target = parse_uri(binding.phone_contact)
            local = NameAddr(request.from_.display, self._lan_uri(from_user), {"tag": new_tag()})
            remote = NameAddr(None, self._lan_uri(binding.user), {})
            contact = self._lan_contact(peer)
        leg = self._new_leg(_other(side), peer, local, remote, target, contact)
        outgoing = leg.build_request(
            request.method,
            body=request.body,
            content_type=request.get("Content-Type"),
            max_forwards=max(0, (request.max_forwards or 70) - 1),
        )
        copy_headers(request, outgoing, _REQUEST_COPY)
        key = self._send_request(_other(side), outgoing, peer, now)
        self._relays[(_other(side), key)] = _Relay(None, side, event.key, request)

    # ---- registrations

    def _relay_register(self, event: RequestReceived, now: float) -> None:
        request = event.request
        if not self._check_wan(Side.LAN, event.key, request):
            return
        to = request.to
        user = _user(to)
        if user is None or not isinstance(to.uri, SipUri):
            self._reply(Side.LAN, event.key, request, 400, "To must be a SIP address of record")
            return
        aor = str(to.uri)
        if self._registering.get(aor) and request.has("Authorization"):
            # §10.2: a UA sends no new REGISTER for an AOR before the previous one is answered.
            # Credentials fired off without waiting are a guesser's, not a phone's: each
            # counts as a failed authentication at once, so a pipelining guesser is banned
            # after as many guesses as a patient one, however slow the provider answers.
            self._count("register_overlap")
            if self.policy is not None:
                source = _source(event).address[0]
                self.policy.auth_result(source, 403, now, side="lan")
                if any(ban.address == source for ban in self.policy.bans(now)):
                    # That guess was the last: it goes no further than the gateway.
                    self._reply(Side.LAN, event.key, request, 403)
                    return
        wildcard = request.is_wildcard_contact
        contacts = request.contacts
        expires_header = request.get("Expires")
        if wildcard:
            bindings = self.registrations.for_aor(aor)
            if not bindings:
                response = make_response(request, 200)
                self._send_response(Side.LAN, event.key, response, now)
                return
            binding = bindings[0]
            contact_value = "*"
        elif not contacts:
            # A query (§10.2.3): answer with what the gateway knows, without going upstream.
            response = make_response(request, 200)
            for b in self.registrations.for_aor(aor):
                if b.active(now):
                    response.add(
                        "Contact", f"<{b.phone_contact}>;expires={int(b.expires_at - now)}"
                    )
            self._send_response(Side.LAN, event.key, response, now)
            return
        else:
            phone_contact = contacts[0]
            binding = self.registrations.binding_for(
                user, aor, str(phone_contact.uri), _phone_peer(phone_contact, _source(event))
            )
            binding.user_agent = request.get("User-Agent")
            expires = phone_contact.params.get("expires") or expires_header
            binding.last_expires = _int(expires, self.settings.default_expires)
            contact_value = f"{self._wan_contact(binding.token)};expires={binding.last_expires}"
        binding.upstream_cseq += 1
        binding.last_authorization = [
            (n, v) for n, v in request.headers if n in ("Authorization", "Proxy-Authorization")
        ]
        upstream = self._upstream_register(binding, contact_value, request)
        key = self._send_request(Side.WAN, upstream, self.settings.provider, now)
        self._relays[(Side.WAN, key)] = _Relay(
            None, Side.LAN, event.key, request, binding=binding, source=_source(event)
        )
        self._registering[aor] = self._registering.get(aor, 0) + 1

    def _register_answered(self, aor: str) -> None:
        left = self._registering.get(aor, 0) - 1
        if left > 0:
            self._registering[aor] = left
        else:
            self._registering.pop(aor, None)

    def _upstream_register(
        self, binding: Binding, contact: str, original: SipRequest | None
    ) -> SipRequest:
        domain_uri = SipUri("sip", None, None, self.settings.domain, None, {}, None)
        aor = self._wan_uri(binding.user)
        leg = self._new_leg(
            Side.WAN,
            self.settings.provider,
            NameAddr(None, aor, {"tag": binding.upstream_from_tag}),
            NameAddr(None, aor, {}),
            domain_uri,
            contact,
            call_id=binding.upstream_call_id,
        )
        request = leg.build_request("REGISTER", cseq=binding.upstream_cseq)
        request.set("Contact", contact)
        if original is not None:
            copy_headers(
                original, request, ("Expires", "Authorization", "Proxy-Authorization", "Supported")
            )
        else:
            request.set("Expires", str(binding.last_expires))
            for name, value in binding.last_authorization:
                request.add(name, value)
        request.set("User-Agent", self.settings.user_agent)
        return request

    def _refresh_registrations(self, now: float) -> None:
        """After a reconnect, re-register every binding the provider knew through the old
        connection, replaying the phone's last credentials; a fresh challenge then waits for
        the phone's own refresh."""
        for binding in self.registrations.all():
            if not binding.active(now):
                continue
            binding.upstream_cseq += 1
            contact = f"{self._wan_contact(binding.token)};expires={binding.last_expires}"
            request = self._upstream_register(binding, contact, None)
            key = self._send_request(Side.WAN, request, self.settings.provider, now)
            self._relays[(Side.WAN, key)] = _Relay(
                None, Side.LAN, "", request, binding=binding, internal=True
            )

    def _on_register_response(self, relay: _Relay, response: SipResponse, now: float) -> None:
        binding = relay.binding
        assert binding is not None
        status = response.status
        if status < 200:
            return
        if 200 <= status < 300:
            granted = None
            for contact in response.contacts:
                if isinstance(contact.uri, SipUri) and contact.uri.user == binding.token:
                    granted = _int(contact.params.get("expires"), -1)
            if granted is None or granted < 0:
                granted = _int(response.get("Expires"), binding.last_expires)
            if relay.original().is_wildcard_contact or granted == 0:
                for b in self.registrations.for_aor(binding.aor):
                    self.registrations.remove(b)
            else:
                binding.expires_at = now + granted
            self._emit(
                CallEvent(
                    "registered",
                    binding.upstream_call_id,
                    {"user": binding.user, "expires": granted, "user_agent": binding.user_agent},
                )
            )
        if relay.internal:
            return
        # §8.2.6.2: a final response carries a To tag (the provider's belongs to the WAN leg).
        reply = make_response(relay.original(), status, response.reason, to_tag=new_tag())
        copy_headers(response, reply, _RESPONSE_COPY)
        if 200 <= status < 300:
            for b in self.registrations.for_aor(binding.aor):
                if b.active(now):
                    reply.add("Contact", f"<{b.phone_contact}>;expires={int(b.expires_at - now)}")
            date = response.get("Date")
            if date:
                reply.add("Date", date)
        self._send_response(Side.LAN, relay.server_key, reply, now)
        self._report_auth(relay.original(), relay.source, status)

    # ------------------------------------------------------------- responses

    def _on_response(
        self, side: Side, key: str, relay: _Relay, response: SipResponse, now: float
    ) -> None:
        if relay.binding is not None:
            if response.status >= 200:
                self._relays.pop((side, key), None)
                if not relay.internal:
                    self._register_answered(str(relay.original().to.uri))
            self._on_register_response(relay, response, now)
            return
        pair = relay.pair
        if pair is not None and pair.client_key == key and side != pair.caller_side:
            self._on_callee_response(pair, response, now)
            return
        if response.status >= 200:
            self._relays.pop((side, key), None)
        if relay.internal:
            return
        if response.status == 100:
            return
        reply = make_response(relay.original(), response.status, response.reason)
        if pair is not None:
            leg = pair.leg(relay.from_side)
            if leg.local.tag and not relay.original().to.tag:
                reply.set("To", str(relay.original().to.with_tag(leg.local.tag)))
        copy_headers(response, reply, _RESPONSE_COPY)
        body = response.body
        method = relay.original().method
        if pair is not None and 200 <= response.status < 300:
            pair.leg(side).learn_target_refresh(response) if method in (
                "INVITE",
                "UPDATE",
            ) else None
            if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
                reply.add("Contact", pair.leg(relay.from_side).contact)
        if (
            body
            and pair is not None
            and pair.media is not None
            and response.content_type == "application/sdp"
        ):
            try:
                body = self._offer_or_answer(pair, side, body)
            except MediaRefused as exc:
                self._emit(CallEvent("refused", pair.caller.call_id, {"reason": exc.warning}))
                if method == "INVITE" and 200 <= response.status < 300:
                    self._send_ack(pair, side, response.cseq.seq, b"")
                reply = make_response(relay.original(), 488)
                reply.add("Warning", f'399 gateway "{_quote(exc.warning)}"')
                self._send_response(relay.from_side, relay.server_key, reply, now)
                return
        if body:
            reply.body = body
            reply.set("Content-Type", response.get("Content-Type") or "application/sdp")
        if method == "INVITE" and pair is not None and 200 <= response.status < 300:
            # re-INVITE answered: ACK the answering side now unless its 2xx held an offer.
            if pair.offer_from == side:
                pair.deferred_ack, pair.deferred_ack_cseq = side, response.cseq.seq
            else:
                self._send_ack(pair, side, response.cseq.seq, b"")
            self._send_2xx(pair, relay.from_side, relay.server_key, reply, now)
            return
        self._send_response(relay.from_side, relay.server_key, reply, now)
        if pair is not None and method == "BYE":
            return
        if pair is not None and method == "SUBSCRIBE" and response.status >= 300:
            self._end_pair(
                pair, now, reason=f"subscription refused {response.status}", send_bye_to=None
            )

    def _on_callee_response(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """Responses to the dialog-creating request, relayed to the caller."""
        status = response.status
        caller_side = pair.caller_side
        callee_side = pair.other(caller_side)
        if status == 100:
            pair.provisional_seen = True
            if pair.cancel_pending:
                pair.cancel_pending = False
                self._cancel_callee(pair, now)
            return
        if status < 200:
            pair.provisional_seen = True
            if pair.cancel_pending:
                pair.cancel_pending = False
                self._cancel_callee(pair, now)
                return
        if pair.cancelled or pair.state == PairState.ENDED:
            if 200 <= status < 300:
                # The callee answered as the CANCEL crossed it: confirm and end at once.
                pair.callee.learn_from_response(response, uac=True)
                self._send_ack(pair, callee_side, response.cseq.seq, b"")
                self._send_request(
                    callee_side, pair.callee.build_request("BYE"), pair.callee.peer, now
                )
            if status >= 200:
                self._forget(pair)
            return
        callee_tag = response.to.tag
        if status >= 200 and pair.state == PairState.CONFIRMED:
            # A 2xx again: retransmitted because our ACK was lost (§13.2.2.4: ACK it again, its
            # SDP was taken the first time), or another fork's answer (ACK it, then end it).
            if callee_tag == pair.confirmed_tag:
                if pair.deferred_ack != callee_side:
                    self._send_ack(pair, callee_side, response.cseq.seq, b"")
                return
            self._send_ack(pair, callee_side, response.cseq.seq, b"", remote_to=response.to)
            bye = pair.callee.build_request("BYE")
            bye.set("To", str(response.to))
            self._send_request(callee_side, bye, pair.callee.peer, now)
            return
        reply_tag = pair.caller.local_tag
        if callee_tag:
            reply_tag = self._caller_tag_for(pair, callee_tag)
        if status >= 300:
            self._relays.pop((callee_side, pair.client_key or ""), None)
            reply = make_response(
                pair.initial_request(), status, response.reason, to_tag=pair.caller.local_tag
            )
            copy_headers(response, reply, _RESPONSE_COPY)
            if status in (401, 407) and caller_side == Side.LAN and pair.method == "INVITE":
                # The phone will retry with credentials: keep the WAN leg's identity for it.
                pair.callee.remote = NameAddr(
                    pair.callee.remote.display, pair.callee.remote.uri, {}
                )
                self._challenged[(pair.caller.call_id, pair.caller.remote.tag or "")] = (
                    pair.callee,
                    now,
                )
            self._send_response(caller_side, pair.server_key, reply, now)
            self._report_auth(pair.initial_request(), pair.caller.peer, status)
            self._emit(
                CallEvent("failed", pair.caller.call_id, {"status": status, "pair": pair.key})
            )
            self._forget(pair)
            return
        # Provisional with a tag, or 2xx: an early or confirmed dialog on the callee leg.
        pair.callee.learn_from_response(response, uac=True)
        body = b""
        if response.body and pair.media is not None and response.content_type == "application/sdp":
            try:
                if pair.caller_offered:
                    body = self._answer(pair, callee_side, response.body, early=callee_tag)
                elif status >= 200 or _is_reliable(response):
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
        copy_headers(response, reply, _RESPONSE_COPY)
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
            pair.state = PairState.EARLY
            if _is_reliable(response):
                if pair.caller_supports_100rel:
                    reply.set("Require", "100rel")
                    reply.set("RSeq", response.get("RSeq") or "1")
                else:
                    self._prack_ourselves(pair, response, now)
            self._send_response(caller_side, pair.server_key, reply, now)
            return
        # 2xx: confirm this dialog; forget the other early dialogs (forking).
        pair.state = PairState.CONFIRMED
        pair.confirmed_tag = callee_tag
        pair.answered = now
        if pair.caps_counted and self.policy is not None:
            self.policy.call_answered(pair.key, now)
        if pair.media is not None and callee_tag and pair.caller_offered:
            # Forking: keep the answer of the dialog that won, release the others (RFC 3264).
            pair.media.confirm(callee_tag)
            self._sync_media(pair)
        if reply_tag and reply_tag != pair.caller.local_tag:
            pair.caller.local = pair.caller.local.with_tag(reply_tag)
        if pair.method == "INVITE":
            if pair.caller_offered or not response.body:
                self._send_ack(pair, callee_side, response.cseq.seq, b"")
            else:
                pair.deferred_ack, pair.deferred_ack_cseq = callee_side, response.cseq.seq
            self._send_2xx(pair, caller_side, pair.server_key, reply, now)
            suite = pair.media.chosen_suite() if pair.media is not None else None
            self._emit(
                CallEvent(
                    "answered",
                    pair.caller.call_id,
                    {
                        "pair": pair.key,
                        "suite": suite.value if suite else None,
                        "plaintext_downgrade": bool(
                            pair.media and pair.media.uses_plaintext_downgrade
                        ),
                    },
                )
            )
        else:
            self._send_response(caller_side, pair.server_key, reply, now)
        pair.confirmed()

    def _caller_tag_for(self, pair: DialogPair, callee_tag: str) -> str:
        """One caller-side to-tag per callee early dialog (§12.1.1: each fork is a dialog)."""
        tag = pair.tag_map.get(callee_tag)
        if tag is None:
            assert pair.caller.local_tag is not None
            tag = pair.caller.local_tag if not pair.tag_map else new_tag()
            pair.tag_map[callee_tag] = tag
            self._dialogs[(pair.caller_side, pair.caller.call_id, tag)] = pair
        return tag

    def _prack_ourselves(self, pair: DialogPair, response: SipResponse, now: float) -> None:
        """The caller cannot do 100rel: acknowledge the reliable provisional for it (RFC 3262)."""
        callee_side = pair.other(pair.caller_side)
        prack = pair.callee.build_request("PRACK")
        prack.set("To", str(response.to))
        prack.set(
            "RAck", f"{response.get('RSeq') or '1'} {response.cseq.seq} {response.cseq.method}"
        )
        key = self._send_request(callee_side, prack, pair.callee.peer, now)
        self._relays[(callee_side, key)] = _Relay(pair, pair.caller_side, "", prack, internal=True)

    def _refuse_answer(
        self, pair: DialogPair, response: SipResponse, exc: MediaRefused, now: float
    ) -> None:
        """Fail closed: the callee answered without acceptable crypto. The caller gets 488 and
        never sees an answer; a callee leg that did answer is ACKed and ended at once."""
        callee_side = pair.other(pair.caller_side)
        self._count("refused_media")
        self._emit(
            CallEvent(
                "refused",
                pair.caller.call_id,
                {"pair": pair.key, "reason": exc.warning, "status": 488},
            )
        )
        if 200 <= response.status < 300:
            pair.callee.learn_from_response(response, uac=True)
            self._send_ack(pair, callee_side, response.cseq.seq, b"")
            self._send_request(callee_side, pair.callee.build_request("BYE"), pair.callee.peer, now)
        elif pair.outgoing is not None:
            pair.provisional_seen = True
            self._send_request(callee_side, _build_cancel(pair.outgoing), pair.callee.peer, now)
        reply = make_response(pair.initial_request(), 488, to_tag=pair.caller.local_tag)
        reply.add("Warning", f'399 gateway "{_quote(exc.warning)}"')
        self._send_response(pair.caller_side, pair.server_key, reply, now)
        pair.cancelled = True
        self._release_media(pair)
        if 200 <= response.status < 300:
            self._forget(pair)

    def _refuse_media(
        self,
        pair: DialogPair,
        side: Side,
        key: str,
        request: SipRequest,
        exc: MediaRefused,
        now: float,
    ) -> None:
        self._count("refused_media")
        self._emit(CallEvent("refused", request.call_id, {"reason": exc.warning, "status": 488}))
        self._reply(
            side, key, request, 488, headers=[("Warning", f'399 gateway "{_quote(exc.warning)}"')]
        )
        if pair.media is not None:
            pair.media.release()

    def _on_stray(self, side: Side, response: SipResponse) -> None:
        """A 2xx retransmission after its transaction ended: our ACK was lost; send it again."""
        if response.cseq.method != "INVITE" or not 200 <= response.status < 300:
            return
        tag = response.from_.tag or ""
        pair = self._dialogs.get((side, response.call_id, tag))
        if pair is None:
            return
        if pair.deferred_ack == side:
            return  # still waiting for the other side's answer
        self._send_ack(pair, side, response.cseq.seq, b"", remote_to=response.to)

    def _on_timeout(self, side: Side, relay: _Relay, now: float) -> None:
        pair = relay.pair
        if relay.binding is not None:
            if not relay.internal:
                self._register_answered(str(relay.original().to.uri))
                self._reply(Side.LAN, relay.server_key, relay.original(), 408)
            return
        if relay.internal:
            return
        if (
            pair is not None
            and relay.server_key == pair.server_key
            and pair.state != PairState.CONFIRMED
        ):
            self._fail_caller(pair, 408, "no answer from the other side", now)
            return
        self._reply(relay.from_side, relay.server_key, relay.original(), 408)
        if pair is not None and relay.original().method in ("BYE",):
            self._forget(pair)

    # ----------------------------------------------------------------- media

    def _offer(self, pair: DialogPair, side: Side, body: bytes) -> bytes:
        assert pair.media is not None
        out = (
            pair.media.offer_from_lan(body) if side == Side.LAN else pair.media.offer_from_wan(body)
        )
        pair.offer_from = side
        self._sync_media(pair)
        return out

    def _answer(self, pair: DialogPair, side: Side, body: bytes, early: str | None = None) -> bytes:
        assert pair.media is not None
        if side == Side.LAN:
            out = pair.media.answer_from_lan(body)
        else:
            out = pair.media.answer_from_wan(body, early_dialog=early)
        if pair.state == PairState.CONFIRMED or early is None:
            pair.offer_from = None
        self._sync_media(pair)
        return out

    def _offer_or_answer(self, pair: DialogPair, side: Side, body: bytes) -> bytes:
        """RFC 3264 §4: an SDP body is an answer when the other side has an offer pending."""
        if pair.offer_from is not None and pair.offer_from != side:
            return self._answer(pair, side, body)
        return self._offer(pair, side, body)

    def _sync_media(self, pair: DialogPair) -> None:
        """Send the media workers what changed in the call's streams."""
        assert pair.media is not None
        specs = pair.media.streams()
        for index, spec in enumerate(specs):
            old = pair.specs[index] if index < len(pair.specs) else None
            if spec is None or spec == old:
                continue
            if old is None:
                self._emit(MediaCommand(OpenStream(pair.key, index, spec)))
            else:
                self._emit(MediaCommand(UpdateStream(pair.key, index, spec)))
        pair.specs = list(specs)

    def _release_media(self, pair: DialogPair) -> None:
        if pair.media is not None:
            if pair.specs:
                self._emit(MediaCommand(CloseCall(pair.key)))
            pair.media.release()
            pair.media = None
            pair.specs = []

    # ------------------------------------------------------------- endings

    def _hang_up(self, pair: DialogPair, now: float, *, reason: str) -> None:
        """End a confirmed call on both sides with BYE."""
        for side in (Side.LAN, Side.WAN):
            leg = pair.leg(side)
            bye = leg.build_request("BYE")
            bye.add("Reason", f'SIP;cause=200;text="{_quote(reason)}"')
            self._send_request(side, bye, leg.peer, now)
        self._end_pair(pair, now, reason=reason, send_bye_to=None)

    def _fail_caller(self, pair: DialogPair, status: int, reason: str, now: float) -> None:
        if pair.state in (PairState.CALLING, PairState.EARLY) and not pair.cancelled:
            reply = make_response(pair.initial_request(), status, to_tag=pair.caller.local_tag)
            reply.add("Warning", f'399 gateway "{_quote(reason)}"')
            self._send_response(pair.caller_side, pair.server_key, reply, now)
            pair.cancelled = True
            self._cancel_callee(pair, now)
            self._release_media(pair)
        elif pair.state == PairState.CONFIRMED:
            self._hang_up(pair, now, reason=reason)

    def _end_pair(
        self, pair: DialogPair, now: float, *, reason: str, send_bye_to: Side | None
    ) -> None:
        if send_bye_to is not None:
            leg = pair.leg(send_bye_to)
            if pair.state == PairState.CONFIRMED or send_bye_to == pair.caller_side:
                bye = leg.build_request("BYE")
                key = self._send_request(send_bye_to, bye, leg.peer, now)
                self._relays[(send_bye_to, key)] = _Relay(pair, send_bye_to, "", bye, internal=True)
            else:
                self._cancel_callee(pair, now)
        if pair.state != PairState.ENDED:
            self._emit(
                CallEvent(
                    "ended",
                    pair.caller.call_id,
                    {
                        "pair": pair.key,
                        "reason": reason,
                        "duration": round(now - pair.answered, 3) if pair.answered else 0.0,
                    },
                )
            )
        pair.state = PairState.ENDED
        pair.retransmit = None
        self._forget(pair)

    def _forget(self, pair: DialogPair) -> None:
        if self._by_origin.get(pair.origin) is pair:
            del self._by_origin[pair.origin]
        self._retransmitting.pop(pair.key, None)
        if pair.caps_counted and self.policy is not None:
            pair.caps_counted = False
            self.policy.call_ended(pair.key, self._now)
        self._release_media(pair)
        pair.state = PairState.ENDED
        self._pairs.pop(pair.key, None)
        for key in [k for k, v in self._dialogs.items() if v is pair]:
            del self._dialogs[key]

    # ------------------------------------------------------------- sending

    def _send_request(self, side: Side, request: SipRequest, peer: Peer, now: float) -> str:
        if side == Side.WAN and not peer.reliable:
            raise SipError("refusing to send SIP to the WAN side over UDP")
        return self._tx[side].send_request(request, peer, reliable=peer.reliable, now=now)

    def _send_response(self, side: Side, key: str, response: SipResponse, now: float) -> None:
        if not key:
            return
        response.set("Server", self.settings.user_agent)
        self._tx[side].send_response(key, response, now)

    def _reply(
        self,
        side: Side,
        key: str,
        request: SipRequest,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        pair = self._by_server.get((side, key))
        tag = pair.caller.local_tag if pair is not None and status > 100 else None
        if tag is None and status > 100 and not request.to.tag:
            tag = new_tag()
        response = make_response(request, status, reason, to_tag=tag, headers=headers)
        self._send_response(side, key, response, self._now)

    def _send_2xx(
        self, pair: DialogPair, side: Side, key: str, response: SipResponse, now: float
    ) -> None:
        """Send a 2xx to INVITE and, toward UDP, retransmit it until the ACK (§13.3.1.4)."""
        response.set("Server", self.settings.user_agent)
        self._tx[side].send_response(key, response, now)
        data = bytes(response)
        pair.last_final = data
        peer = pair.leg(side).peer
        if not peer.reliable:
            t1 = self.settings.timers.t1
            pair.retransmit = _Retransmission(peer, data, now + t1, t1, now + 64 * t1, side)
            self._retransmitting[pair.key] = pair

    def _send_ack(
        self,
        pair: DialogPair,
        side: Side,
        cseq: int,
        body: bytes,
        remote_to: NameAddr | None = None,
    ) -> None:
        """ACK a 2xx on one leg (§13.2.2.4): a new transaction-less request."""
        leg = pair.leg(side)
        ack = leg.build_request("ACK", cseq=cseq, body=body)
        if remote_to is not None:
            ack.set("To", str(remote_to))
        self._emit(SendMessage(leg.peer, bytes(ack)))

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


# ------------------------------------------------------------------ helpers


def _origin(side: Side, request: SipRequest) -> tuple[Side, str, str | None, int]:
    """What identifies a dialog-creating request apart from its branch (§8.2.2.2)."""
    return (side, request.call_id, request.from_.tag, request.cseq.seq)


def _source(event: RequestReceived) -> Peer:
    """The transaction layer keeps destinations opaque; here they are always Peers."""
    return cast(Peer, event.source)


def _stamp_received(request: SipRequest, peer: Peer) -> None:
    """RFC 3581 §4 / RFC 3261 §18.2.1: record where a UDP request really came from in its
    top Via, so the response shows the phone its public address and port."""
    top = request.remove_first("Via")
    if top is None:
        return
    try:
        via = Via.parse(top)
    except SipError:
        request.prepend("Via", top)
        return
    host, port = peer.address
    if via.host.strip("[]") != host:
        via.set_param("received", host)
    if via.has_rport:
        via.set_param("rport", str(port))
    request.prepend("Via", str(via))


def _phone_peer(contact: NameAddr, source: Peer) -> Peer:
    """Where a registered phone is reached (RFC 3261 §10.3, §18.2.2).

    Over UDP the phone's Contact names the port it listens on, which need not be the port
    its REGISTER came from; a stream-connected phone is reached over its own connection.
    A Contact with a host name (or none of ours to parse) falls back to the source address.
    """
    uri = contact.uri
    if source.transport != "udp" or not isinstance(uri, SipUri):
        return source
    host, port = uri.host_port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return source
    return Peer(Side.LAN, "udp", (host, port or 5060))


def _other(side: Side) -> Side:
    return Side.WAN if side == Side.LAN else Side.LAN


def _build_cancel(invite: SipRequest) -> SipRequest:
    """§9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via (branch) as the INVITE."""
    cancel = SipRequest("CANCEL", invite.uri.copy())
    cancel.add("Via", invite.get_all("Via")[0])
    cancel.add("Max-Forwards", "70")
    for route in invite.get_all("Route"):
        cancel.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        value = invite.get(name)
        if value is not None:
            cancel.add(name, value)
    cancel.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return cancel


def _is_reliable(response: SipResponse) -> bool:
    return 100 < response.status < 200 and _has_tag(response, "100rel", header="Require")


def _has_tag(message: SipRequest | SipResponse, tag: str, header: str | None = None) -> bool:
    names = (header,) if header else ("Supported", "Require")
    return any(t.strip().lower() == tag for name in names for t in message.get_all(name))


def _user(addr: NameAddr) -> str | None:
    uri = addr.uri
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, AbsoluteUri) and uri.scheme.lower() == "tel":
        return uri.opaque.split(";")[0]
    return None


def _ruri_user(request: SipRequest) -> str | None:
    uri = request.uri
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, AbsoluteUri) and uri.scheme.lower() == "tel":
        return uri.opaque.split(";")[0]
    return None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')[:200]


def _short(reason: str) -> str:
    return reason.replace("\r", " ").replace("\n", " ")[:120]
