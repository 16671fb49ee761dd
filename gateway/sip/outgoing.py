"""Everything the B2BUA sends, and the one place its outputs collect (RFC 3261 §13.2.2.4,
§13.3.1.4, §17, §18).

Requests and responses go through one transaction layer per side, because the sides differ in
reliability: LAN UDP retransmits, WAN TLS never does. ACKs to 2xx are transaction-less
(§13.2.2.4), and a 2xx toward a UDP caller is retransmitted here until its ACK comes
(§13.3.1.4): the transaction layer lets go of it once sent. Nothing goes to the WAN side over
UDP, whatever a caller asks (docs/design.md §3.1).

The outputs (bytes for peers, media commands, call events, security notices) collect in
``actions`` for the glue to drain; ``counters`` count what was refused or dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.sip.actions import Action, SendMessage
from gateway.sip.dialog_index import DialogIndex
from gateway.sip.errors import SipError, TransactionStateError
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, make_response, new_tag
from gateway.sip.pair import DialogPair
from gateway.sip.peer import Peer, Side
from gateway.sip.registrations import Binding
from gateway.sip.transaction import TimerSettings, TransactionLayer


@dataclass(slots=True)
class Relay:
    """A request relayed from one side to the other, awaiting its response."""

    pair: DialogPair | None
    from_side: Side
    server_key: str
    #: None for a pair's dialog-creating request: its responses and its timeout are handled
    #: through the pair, which keeps that request only until the dialog is confirmed.
    request: SipRequest | None
    #: For REGISTER: the binding.
    binding: Binding | None = None
    #: The gateway's own request (a PRACK for a caller without 100rel, a BYE, a refresh):
    #: no one to answer.
    internal: bool = False
    #: Where the original request came from (for brute-force accounting).
    source: Peer | None = None
    #: The credential shield (``gateway.sip.shield``): what went to the WAN side and where,
    #: so a provider's challenge can be answered, and how many answers it was given.
    sent: SipRequest | None = None
    sent_to: Peer | None = None
    shield_answers: int = 0

    def original(self) -> SipRequest:
        """The relayed request (any but a pair's dialog-creating one, see ``request``)."""
        if self.request is None:
            raise TransactionStateError("a dialog-creating request is answered through its pair")
        return self.request


@dataclass(slots=True)
class _Retransmission:
    peer: Peer
    data: bytes
    next_at: float
    interval: float
    give_up_at: float
    side: Side


class Outgoing:
    def __init__(self, timers: TimerSettings, index: DialogIndex, user_agent: str) -> None:
        self.timers = timers
        self.tx = {Side.LAN: TransactionLayer(timers), Side.WAN: TransactionLayer(timers)}
        self._index = index
        self._user_agent = user_agent
        #: (side, client transaction key) -> what to do with its responses.
        self.relays: dict[tuple[Side, str], Relay] = {}
        self.actions: list[Action] = []
        self.counters: dict[str, int] = {}
        #: Keep each request relayed from the LAN to the WAN on its relay (the credential
        #: shield answers the provider's challenges to it).
        self.keep_sent = False
        #: 2xx being retransmitted toward UDP callers, by pair (the only calls that need a
        #: timer of the core's own; the rest cost nothing per timer tick).
        self._retransmitting: dict[str, tuple[DialogPair, _Retransmission]] = {}

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------- requests

    def send_request(self, side: Side, request: SipRequest, peer: Peer, now: float) -> str:
        """Start a client transaction; returns its key."""
        if side == Side.WAN and not peer.reliable:
            raise SipError("refusing to send SIP to the WAN side over UDP")
        return self.tx[side].send_request(request, peer, reliable=peer.reliable, now=now)

    def relay_request(
        self, side: Side, request: SipRequest, peer: Peer, now: float, relay: Relay
    ) -> str:
        """Send a request whose responses ``relay`` says what to do with."""
        key = self.send_request(side, request, peer, now)
        self.relays[(side, key)] = relay
        if self.keep_sent and side == Side.WAN and relay.from_side == Side.LAN:
            relay.sent, relay.sent_to = request, peer
        return key

    def send_ack(
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
        self.emit(SendMessage(leg.peer, bytes(ack)))

    # ------------------------------------------------------------ responses

    def send_response(self, side: Side, key: str, response: SipResponse, now: float) -> None:
        """Answer a server transaction (none: the request was the gateway's own)."""
        if not key:
            return
        response.set("Server", self._user_agent)
        self.tx[side].send_response(key, response, now)

    def reply(
        self,
        side: Side,
        key: str,
        request: SipRequest,
        status: int,
        now: float,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer a request with a status of the gateway's own: a final response carries the
        pair's To tag on the caller's leg, or a fresh one (§8.2.6.2)."""
        pair = self._index.by_server(side, key)
        tag = pair.caller.local_tag if pair is not None and status > 100 else None
        if tag is None and status > 100 and not request.to.tag:
            tag = new_tag()
        response = make_response(request, status, reason, to_tag=tag, headers=headers)
        self.send_response(side, key, response, now)

    def send_stateless(self, peer: Peer, response: SipResponse) -> None:
        """An answer outside any transaction (refusals before one exists: §8.2 checks,
        policy)."""
        self.emit(SendMessage(peer, bytes(response)))

    def send_2xx(
        self, pair: DialogPair, side: Side, key: str, response: SipResponse, now: float
    ) -> None:
        """Send a 2xx to INVITE and, toward UDP, retransmit it until the ACK (§13.3.1.4)."""
        response.set("Server", self._user_agent)
        self.tx[side].send_response(key, response, now)
        data = bytes(response)
        pair.last_final = data
        peer = pair.leg(side).peer
        if not peer.reliable:
            t1 = self.timers.t1
            self._retransmitting[pair.key] = (
                pair,
                _Retransmission(peer, data, now + t1, t1, now + 64 * t1, side),
            )

    def acknowledged(self, pair: DialogPair, side: Side) -> None:
        """The ACK from ``side`` came: its 2xx need not go again."""
        entry = self._retransmitting.get(pair.key)
        if entry is not None and entry[1].side == side:
            del self._retransmitting[pair.key]

    def stop_retransmitting(self, pair: DialogPair) -> None:
        self._retransmitting.pop(pair.key, None)

    # --------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> list[DialogPair]:
        """Run both transaction layers' timers and the 2xx retransmissions; returns the
        pairs whose caller never ACKed (§13.3.1.4: confirmed, but they must end)."""
        for tx in self.tx.values():
            tx.handle_timer(now)
        unacknowledged = []
        for key, (pair, r) in list(self._retransmitting.items()):
            if now >= r.give_up_at:
                del self._retransmitting[key]
                unacknowledged.append(pair)
            elif now >= r.next_at:
                self.emit(SendMessage(r.peer, r.data))
                r.interval = min(r.interval * 2, self.timers.t2)
                r.next_at = now + r.interval
        return unacknowledged

    def next_deadline(self) -> float | None:
        deadlines = [t for t in (tx.get_timer() for tx in self.tx.values()) if t is not None]
        for _, r in self._retransmitting.values():
            deadlines.append(min(r.next_at, r.give_up_at))
        return min(deadlines) if deadlines else None


def refusal_response(request: SipRequest, status: int, warning: str) -> SipResponse | None:
    """A stateless refusal with a fresh To tag and the policy's Warning; None when not even
    that can be built from the request (then it is only counted)."""
    try:
        response = make_response(request, status, to_tag=new_tag())
    except SipError:
        return None
    if warning:
        response.add("Warning", warning)
    return response
