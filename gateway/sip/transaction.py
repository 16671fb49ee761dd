"""The SIP transaction layer, sans-IO (RFC 3261 §17, with RFC 6026's Accepted states).

Theory of operation
-------------------
A transaction is a request, its retransmissions and its responses (§17). The layer keeps four
kinds, one small class each, named after the RFC's state machines:

- ``InviteClientTransaction`` (§17.1.1, figure 5, as amended by RFC 6026 §8.4): Calling ->
  Proceeding -> Completed (non-2xx, the transaction ACKs itself) or Accepted (2xx: the TU ACKs)
  -> Terminated. Timer A retransmits (unreliable only), B gives up, D absorbs final-response
  retransmissions, M keeps the transaction around to pass 2xx retransmissions up.
- ``NonInviteClientTransaction`` (§17.1.2, figure 6): Trying -> Proceeding -> Completed ->
  Terminated. Timer E retransmits, F gives up, K absorbs retransmitted finals.
- ``InviteServerTransaction`` (§17.2.1, figure 7, RFC 6026 §8.5 to §8.7): Proceeding ->
  Completed (non-2xx) -> Confirmed (ACK) -> Terminated, or Proceeding -> Accepted (2xx) ->
  Terminated. A 100 Trying is sent by the transaction itself when the TU has sent nothing
  within ``TimerSettings.trying_delay`` (200 ms, §17.2.1). Timer G retransmits the final
  response, H gives up waiting for the ACK, I absorbs ACK retransmissions, L absorbs INVITE
  retransmissions after a 2xx. Retransmitting a 2xx is the TU's job (§13.3.1.4).
- ``NonInviteServerTransaction`` (§17.2.2, figure 8): Trying -> Proceeding -> Completed ->
  Terminated, Timer J absorbs request retransmissions.

Inputs are ``send_request``, ``receive_response``, ``receive_request``, ``send_response`` and
``handle_timer``, each with the current time. Outputs are ``datagrams_to_send()`` (destination,
bytes), ``next_event()`` and ``get_timer()``. Destinations and sources are opaque to the layer:
the transport decides what they mean (§18.2.2 response routing included). Over a reliable
transport nothing is ever retransmitted and the absorbing timers (D, I, J, K) are zero.

Timers fire at their deadlines, not at the time ``handle_timer`` happens to be called, so the
retransmission schedule is exact (INVITE over UDP with T1 = 0.5 s: 0, 0.5, 1.5, 3.5, 7.5, 15.5,
31.5, timeout at 32).

Matching follows §17.1.3 (branch and CSeq method) and §17.2.3 (branch, sent-by and method; ACK
matches its INVITE). Requests whose branch lacks the magic cookie (RFC 2543 peers, or the bare
cookie of RFC 4475 §3.2.1) are matched on Request-URI, Call-ID, CSeq number, From tag and the
top Via instead. An illegal step by the TU (a response on a completed transaction, an unknown
key) raises TransactionStateError rather than being ignored.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from gateway.sip.errors import SipParseError, TransactionStateError
from gateway.sip.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
)
from gateway.sip.message import (
    MAGIC_COOKIE,
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
)


@dataclass(frozen=True)
class TimerSettings:
    """Timer values (RFC 3261 §17.1.1.1, table 4 of Appendix A), in seconds."""

    #: RTT estimate; the base of Timers A, B, E, F, G, H, J, L, M.
    t1: float = 0.5
    #: Cap on the retransmission interval of non-INVITE requests and INVITE responses.
    t2: float = 4.0
    #: How long a message may stay in the network; Timers I and K.
    t4: float = 5.0
    #: Timer D on unreliable transports (§17.1.1.2: at least 32 s).
    timer_d: float = 32.0
    #: Delay before an INVITE server transaction sends 100 Trying on its own (§17.2.1);
    #: None leaves 100 Trying entirely to the TU.
    trying_delay: float | None = 0.2


class TransactionState(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Outbox:
    """What the transactions produce while handling one input: messages and events."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[Hashable, bytes]] = []
        self.events: deque[TransactionEvent] = deque()

    def send(self, destination: Hashable, message: SipMessage) -> None:
        self.datagrams.append((destination, bytes(message)))

    def emit(self, event: TransactionEvent) -> None:
        self.events.append(event)


class Transaction(ABC):
    """State shared by the four machines. ``timers`` maps a timer name to its deadline."""

    def __init__(
        self,
        key: str,
        request: SipRequest,
        peer: Hashable,
        reliable: bool,
        settings: TimerSettings,
        state: TransactionState,
    ) -> None:
        #: The key the TU knows this transaction by.
        self.key = key
        self._request: SipRequest | None = request
        #: Where requests (client) or responses (server) are sent.
        self.peer = peer
        #: Whether the transport is reliable (TCP, TLS): no retransmissions.
        self.reliable = reliable
        self.settings = settings
        self.state = state
        #: Running timers: name -> absolute deadline.
        self.timers: dict[str, float] = {}
        #: Current retransmission interval of Timer A, E or G.
        self.interval = settings.t1

    @property
    def request(self) -> SipRequest:
        """The request that created the transaction (until ``_release_request``)."""
        if self._request is None:
            raise TransactionStateError(f"{self.key}: request no longer kept in {self.state.value}")
        return self._request

    def _release_request(self) -> None:
        # RFC 6026 Accepted states outlive the call set-up by 64*T1 and never look at the
        # request again: a parsed INVITE (and our 2xx) held that long was most of what an
        # established call cost in memory.
        self._request = None

    @abstractmethod
    def on_timer(self, name: str, at: float, out: Outbox) -> None:
        """Timer ``name`` fired (deadline ``at``): retransmit, time out or terminate."""

    def _terminate(self) -> None:
        self.state = TransactionState.TERMINATED
        self.timers.clear()

    def _cancel(self, *names: str) -> None:
        for name in names:
            self.timers.pop(name, None)

    def _absorbing(self, name: str, now: float, duration: float) -> None:
        """Start an absorbing timer (D, I, J, K), or end at once on a reliable transport."""
        if self.reliable:
            self._terminate()
        else:
            self.timers[name] = now + duration


def build_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK for a non-2xx final response to ``request`` (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, the To of the response (with
    its tag), only the INVITE's top Via (so the same branch) and the INVITE's Route headers.
    """
    headers: list[tuple[str, str]] = [("Via", str(request.top_via))]
    headers.extend((name, value) for name, value in request.headers if name == "Route")
    max_forwards = request.max_forwards
    headers.append(("Max-Forwards", str(70 if max_forwards is None else max_forwards)))
    for name, value in request.headers:
        if name in ("From", "Call-ID"):
            headers.append((name, value))
    to = response.get("To")
    headers.append(("To", to if to is not None else request.get("To") or ""))
    headers.append(("CSeq", f"{request.cseq.seq} ACK"))
    return SipRequest("ACK", request.uri.copy(), headers)


class InviteClientTransaction(Transaction):
    """§17.1.1 with RFC 6026: Calling, Proceeding, Completed / Accepted, Terminated."""

    #: The ACK this transaction sent for a non-2xx final response, re-sent on retransmissions.
    ack: SipRequest | None = None

    def start(self, now: float, out: Outbox) -> None:
        out.send(self.peer, self.request)
        if not self.reliable:
            self.timers["A"] = now + self.interval
        self.timers["B"] = now + 64 * self.settings.t1

    def on_timer(self, name: str, at: float, out: Outbox) -> None:
        if name == "A" and self.state is TransactionState.CALLING:
            out.send(self.peer, self.request)
            self.interval *= 2
            self.timers["A"] = at + self.interval
        elif name == "B" and self.state is TransactionState.CALLING:
            out.emit(TransactionTimedOut(self.key, self.request))
            self._terminate()
        elif name == "Cancelled" and self.state is TransactionState.PROCEEDING:
            # §9.1: CANCELled, and no final response within 64*T1: the request is over.
            out.emit(TransactionTimedOut(self.key, self.request))
            self._terminate()
        elif name in ("D", "M"):
            self._terminate()

    def cancelled(self, now: float) -> None:
        """A CANCEL for this INVITE went out (§9.1): wait 64*T1 for the final response."""
        if self.state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self.timers["Cancelled"] = now + 64 * self.settings.t1

    def on_response(self, response: SipResponse, now: float, out: Outbox) -> None:
        status = response.status
        if self.state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self._cancel("A", "B")
            out.emit(ResponseReceived(self.key, response))
            if status < 200:
                self.state = TransactionState.PROCEEDING
            elif status < 300:
                self._cancel("Cancelled")
                self.state = TransactionState.ACCEPTED
                self.timers["M"] = now + 64 * self.settings.t1
                self._release_request()  # Accepted only passes 2xx up and never resends
            else:
                self._cancel("Cancelled")
                self.state = TransactionState.COMPLETED
                self.ack = build_ack(self.request, response)
                out.send(self.peer, self.ack)
                self._absorbing("D", now, self.settings.timer_d)
        elif self.state is TransactionState.ACCEPTED:
            if 200 <= status < 300:
                # RFC 6026 §8.4: 2xx retransmissions (maybe from other forks) go to the TU.
                out.emit(ResponseReceived(self.key, response))
        elif self.state is TransactionState.COMPLETED and status >= 300 and self.ack is not None:
            out.send(self.peer, self.ack)


class NonInviteClientTransaction(Transaction):
    """§17.1.2: Trying, Proceeding, Completed, Terminated."""

    def start(self, now: float, out: Outbox) -> None:
        out.send(self.peer, self.request)
        if not self.reliable:
            self.timers["E"] = now + self.interval
        self.timers["F"] = now + 64 * self.settings.t1

    def on_timer(self, name: str, at: float, out: Outbox) -> None:
        active = self.state in (TransactionState.TRYING, TransactionState.PROCEEDING)
        if name == "E" and active:
            out.send(self.peer, self.request)
            if self.state is TransactionState.TRYING:
                self.interval = min(2 * self.interval, self.settings.t2)
            else:
                self.interval = self.settings.t2
            self.timers["E"] = at + self.interval
        elif name == "F" and active:
            out.emit(TransactionTimedOut(self.key, self.request))
            self._terminate()
        elif name == "K":
            self._terminate()

    def on_response(self, response: SipResponse, now: float, out: Outbox) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return  # retransmitted final in Completed: absorbed
        out.emit(ResponseReceived(self.key, response))
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
            return
        self.state = TransactionState.COMPLETED
        self._cancel("E", "F")
        self._absorbing("K", now, self.settings.t4)


class InviteServerTransaction(Transaction):
    """§17.2.1 with RFC 6026: Proceeding, Completed / Accepted, Confirmed, Terminated."""

    last_response: SipResponse | None = None

    def start(self, now: float, source: Hashable, out: Outbox) -> None:
        out.emit(RequestReceived(self.key, self.request, source))
        if self.settings.trying_delay is not None:
            self.timers["Trying"] = now + self.settings.trying_delay

    def on_retransmission(self, out: Outbox) -> None:
        # In Accepted the INVITE is absorbed: the TU retransmits its 2xx itself (RFC 6026 §8.5).
        resend = self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED)
        if resend and self.last_response is not None:
            out.send(self.peer, self.last_response)

    def on_ack(self, now: float) -> None:
        if self.state is TransactionState.COMPLETED:
            self.state = TransactionState.CONFIRMED
            self._cancel("G", "H")
            self._absorbing("I", now, self.settings.t4)

    def send_response(self, response: SipResponse, now: float, out: Outbox) -> None:
        status = response.status
        if self.state is TransactionState.ACCEPTED and 200 <= status < 300:
            out.send(self.peer, response)
            return
        if self.state is not TransactionState.PROCEEDING:
            raise TransactionStateError(
                f"cannot send {status} on INVITE transaction in state {self.state.value}"
            )
        self._cancel("Trying")
        self.last_response = response
        out.send(self.peer, response)
        if status < 200:
            return
        if status < 300:
            self.state = TransactionState.ACCEPTED
            self.timers["L"] = now + 64 * self.settings.t1
            # The TU retransmits its 2xx (RFC 6026 §8.5); in Accepted this transaction only
            # absorbs INVITE retransmissions, so neither the INVITE nor the 2xx is kept.
            self.last_response = None
            self._release_request()
            return
        self.state = TransactionState.COMPLETED
        if not self.reliable:
            self.timers["G"] = now + self.interval
        self.timers["H"] = now + 64 * self.settings.t1

    def on_timer(self, name: str, at: float, out: Outbox) -> None:
        if name == "Trying" and self.state is TransactionState.PROCEEDING:
            if self.last_response is None:
                self.last_response = make_response(self.request, 100)
                out.send(self.peer, self.last_response)
        elif name == "G" and self.state is TransactionState.COMPLETED:
            if self.last_response is not None:
                out.send(self.peer, self.last_response)
            self.interval = min(2 * self.interval, self.settings.t2)
            self.timers["G"] = at + self.interval
        elif name == "H" and self.state is TransactionState.COMPLETED:
            out.emit(TransactionTimedOut(self.key, self.request))
            self._terminate()
        elif name in ("I", "L"):
            self._terminate()


class NonInviteServerTransaction(Transaction):
    """§17.2.2: Trying, Proceeding, Completed, Terminated."""

    last_response: SipResponse | None = None

    def start(self, now: float, source: Hashable, matches: str | None, out: Outbox) -> None:
        out.emit(RequestReceived(self.key, self.request, source, matches))

    def on_retransmission(self, out: Outbox) -> None:
        if self.last_response is not None:
            out.send(self.peer, self.last_response)

    def send_response(self, response: SipResponse, now: float, out: Outbox) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            raise TransactionStateError(
                f"cannot send {response.status} on transaction in state {self.state.value}"
            )
        self.last_response = response
        out.send(self.peer, response)
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
            return
        self.state = TransactionState.COMPLETED
        self._absorbing("J", now, 64 * self.settings.t1)

    def on_timer(self, name: str, at: float, out: Outbox) -> None:
        if name == "J":
            self._terminate()


_TIMER_NAMES = ("A", "B", "D", "M", "E", "F", "K", "Trying", "G", "H", "I", "L", "J", "Cancelled")

ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction


def client_key(branch: str, method: str) -> str:
    """§17.1.3: a response matches on its top Via branch and its CSeq method."""
    return f"client {branch} {method}"


def server_key(request: SipRequest, method: str | None = None) -> str:
    """§17.2.3: branch, sent-by and method (ACK given as INVITE); RFC 2543 fallback otherwise."""
    method = method or request.method
    via = request.top_via
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        host, port = via.sent_by
        return f"server {branch} {host.lower()}:{port or ''} {method}"
    # Without a usable branch (RFC 2543 peers, RFC 4475 §3.2.1) the request identifies itself.
    return (
        f"server2543 {request.uri} {request.call_id} {request.cseq.seq} {method} "
        f"{request.from_.tag or ''} {via}"
    )


class TransactionLayer:
    """All client and server transactions of one SIP endpoint (one B2BUA side or both)."""

    def __init__(self, timers: TimerSettings = TimerSettings()) -> None:
        self.settings = timers
        self._transactions: dict[str, Transaction] = {}
        self._out = Outbox()
        # Lazy-deletion heap of (deadline, order, key, timer name); ``_armed`` says which entry
        # of each transaction timer is current.
        self._heap: list[tuple[float, int, str, str]] = []
        self._armed: dict[tuple[str, str], float] = {}
        self._order = itertools.count()
        #: Responses that matched no transaction and were dropped (§17.1.3, §18.1.2).
        self.stray_responses_dropped = 0
        #: Request retransmissions absorbed by server transactions.
        self.retransmissions_absorbed = 0

    # -- client side ---------------------------------------------------------------------

    def send_request(
        self, request: SipRequest, destination: Hashable, *, reliable: bool, now: float
    ) -> str:
        """Start a client transaction; return its key.

        The request must carry a fresh top Via branch (``new_branch()``). An ACK is not a
        transaction (§17.1.1.3): it is sent once and no transaction is created.
        """
        branch = request.top_via.branch
        if not branch:
            raise TransactionStateError("a request needs a Via branch to start a transaction")
        key = client_key(branch, request.method)
        if request.method == "ACK":
            self._out.send(destination, request)
            return key
        if key in self._transactions:
            raise TransactionStateError(f"transaction {key} already exists (branch reused)")
        transaction: ClientTransaction
        if request.method == "INVITE":
            transaction = InviteClientTransaction(
                key, request, destination, reliable, self.settings, TransactionState.CALLING
            )
        else:
            transaction = NonInviteClientTransaction(
                key, request, destination, reliable, self.settings, TransactionState.TRYING
            )
        self._transactions[key] = transaction
        transaction.start(now, self._out)
        self._settle(transaction)
        return key

    def receive_response(self, response: SipResponse, now: float) -> None:
        """Hand a response to the client transaction it matches (§17.1.3)."""
        try:
            branch = response.top_via.branch
            method = response.cseq.method
        except SipParseError:
            self.stray_responses_dropped += 1
            return
        transaction = self._transactions.get(client_key(branch or "", method))
        if isinstance(transaction, InviteClientTransaction | NonInviteClientTransaction):
            transaction.on_response(response, now, self._out)
            self._settle(transaction)
        elif method == "INVITE" and 200 <= response.status < 300:
            self._out.emit(StrayResponse(response))
        else:
            self.stray_responses_dropped += 1

    # -- server side ---------------------------------------------------------------------

    def receive_request(
        self, request: SipRequest, source: Hashable, *, reliable: bool, now: float
    ) -> None:
        """Match a request to a server transaction (§17.2.3) or start one."""
        method = request.method
        if method == "ACK":
            key = server_key(request, "INVITE")
            transaction = self._transactions.get(key)
            if isinstance(transaction, InviteServerTransaction) and transaction.state in (
                TransactionState.COMPLETED,
                TransactionState.CONFIRMED,
            ):
                transaction.on_ack(now)  # ACK to our non-2xx: the transaction's business
                self._settle(transaction)
            else:
                self._out.emit(RequestReceived(key, request, source))
            return
        key = server_key(request)
        existing = self._transactions.get(key)
        if isinstance(existing, InviteServerTransaction | NonInviteServerTransaction):
            self.retransmissions_absorbed += 1
            existing.on_retransmission(self._out)
            return
        if method == "INVITE":
            invite = InviteServerTransaction(
                key, request, source, reliable, self.settings, TransactionState.PROCEEDING
            )
            self._transactions[key] = invite
            invite.start(now, source, self._out)
            self._settle(invite)
            return
        matches: str | None = None
        if method == "CANCEL":
            invite_key = server_key(request, "INVITE")
            if isinstance(self._transactions.get(invite_key), InviteServerTransaction):
                matches = invite_key
        other = NonInviteServerTransaction(
            key, request, source, reliable, self.settings, TransactionState.TRYING
        )
        self._transactions[key] = other
        other.start(now, source, matches, self._out)
        self._settle(other)

    def send_response(self, key: str, response: SipResponse, now: float) -> None:
        """Send a response on a server transaction; raises TransactionStateError when the
        transaction is unknown, already terminated, or its state forbids the response."""
        transaction = self._transactions.get(key)
        if not isinstance(transaction, InviteServerTransaction | NonInviteServerTransaction):
            raise TransactionStateError(f"no server transaction {key}")
        transaction.send_response(response, now, self._out)
        self._settle(transaction)

    def invite_cancelled(self, key: str, now: float) -> None:
        """The TU sent a CANCEL for the INVITE client transaction ``key`` (RFC 3261 §9.1):
        without a final response within 64*T1 it times out (``TransactionTimedOut``)."""
        transaction = self._transactions.get(key)
        if isinstance(transaction, InviteClientTransaction):
            transaction.cancelled(now)
            self._settle(transaction)

    # -- time and output -----------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, each at its own deadline, in deadline order."""
        while self._heap and self._heap[0][0] <= now:
            at, _, key, name = heapq.heappop(self._heap)
            if self._armed.get((key, name)) != at:
                continue  # stale: the timer was reset or cancelled
            del self._armed[(key, name)]
            transaction = self._transactions.get(key)
            if transaction is None or transaction.timers.get(name) != at:
                continue
            del transaction.timers[name]
            transaction.on_timer(name, at, self._out)
            self._settle(transaction)

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or None when nothing is pending."""
        while self._heap:
            at, _, key, name = self._heap[0]
            if self._armed.get((key, name)) == at:
                return at
            heapq.heappop(self._heap)
        return None

    def datagrams_to_send(self) -> list[tuple[Hashable, bytes]]:
        """Messages to transmit as (destination, bytes), in order; the queue is drained."""
        datagrams, self._out.datagrams = self._out.datagrams, []
        return datagrams

    def next_event(self) -> TransactionEvent | None:
        """The next event for the TU, or None."""
        return self._out.events.popleft() if self._out.events else None

    def transaction(self, key: str) -> Transaction | None:
        """The live transaction with this key, or None once it terminated."""
        return self._transactions.get(key)

    def client_transaction(self, key: str) -> ClientTransaction | None:
        transaction = self._transactions.get(key)
        if isinstance(transaction, InviteClientTransaction | NonInviteClientTransaction):
            return transaction
        return None

    def server_transaction(self, key: str) -> ServerTransaction | None:
        transaction = self._transactions.get(key)
        if isinstance(transaction, InviteServerTransaction | NonInviteServerTransaction):
            return transaction
        return None

    def __len__(self) -> int:
        return len(self._transactions)

    @property
    def timers_pending(self) -> tuple[int, int]:
        """Armed transaction timers and heap entries (armed plus stale ones not yet popped):
        a soak watches both stay flat."""
        return len(self._armed), len(self._heap)

    def _settle(self, transaction: Transaction) -> None:
        """Arm the transaction's new timers, or forget it once it terminated."""
        key = transaction.key
        if transaction.state is TransactionState.TERMINATED:
            if self._transactions.get(key) is transaction:
                del self._transactions[key]
            for name in _TIMER_NAMES:
                self._armed.pop((key, name), None)
            self._out.emit(TransactionTerminated(key))
            return
        for name in _TIMER_NAMES:
            if name not in transaction.timers:
                self._armed.pop((key, name), None)  # cancelled: get_timer must not report it
        for name, at in transaction.timers.items():
            if self._armed.get((key, name)) != at:
                self._armed[(key, name)] = at
                heapq.heappush(self._heap, (at, next(self._order), key, name))
