"""Every question the B2BUA asks the policy engine, in one adapter (docs/design.md §4).

Who may send to the gateway (allowlists, bans, floods, scanners), whether a dialled number may
be called (dial plan, caps, spike lock; emergency numbers always may), what a final answer to
a phone's credentials says about password guessing, and which calls count towards the caps.
Without a policy engine every question is answered "yes" and every report is dropped, so the
B2BUA asks the same way either way.

The B2BUA turns each refusal into SIP itself: a refusal with a status is answered statelessly
(no transaction, no state kept for a source being refused), one without is dropped in silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.policy.engine import PolicyEngine
from gateway.policy.events import SecurityEvent
from gateway.policy.numbering import DialledNumber, NumberFormat
from gateway.sip.edge import request_user, user_of
from gateway.sip.message import SipRequest
from gateway.sip.peer import Peer, Side
from gateway.sip.registrations import RegistrationTable


@dataclass(frozen=True, slots=True)
class Refusal:
    """The policy said no: answer ``status`` (None: drop in silence) with ``warning``."""

    status: int | None
    warning: str = ""
    rule: str = ""


@dataclass(frozen=True, slots=True)
class CallAdmitted:
    """An outbound call the dial plan allows, with the number as the plan understood it."""

    number: DialledNumber | None


def _side(peer: Peer) -> Literal["lan", "wan"]:
    return "lan" if peer.side == Side.LAN else "wan"


class Admission:
    def __init__(self, policy: PolicyEngine | None, registrations: RegistrationTable) -> None:
        self.policy = policy
        self._registrations = registrations
        #: Calls counted towards the caps: each owes the engine one ``call_ended``.
        self._counted: set[str] = set()

    # ------------------------------------------------------------ requests

    def check_request(self, peer: Peer, request: SipRequest, now: float) -> Refusal | None:
        """Allowlists, bans, floods, scanners: asked before anything else about a request."""
        if self.policy is None:
            return None
        method = request.method
        to_user: str | None
        if peer.side == Side.LAN:
            if method == "INVITE":
                # The Request-URI is a dialled number: never "unknown user" enumeration, but the
                # engine must see it to let emergency calls through whatever else applies.
                to_user, known = request_user(request), True
            else:
                to_user = user_of(request.to if method == "REGISTER" else request.from_)
                # A request inside a dialog (To tag) belongs to a call the gateway let through
                # (or gets 481 and learns nothing): never evidence of enumeration. Phones that
                # do not register (static set-ups) behind one address otherwise got the site
                # banned by the ACKs of their tenth call.
                known = request.to.tag is not None or (
                    bool(to_user) and self._registrations.has_user(to_user or "")
                )
        else:
            to_user = request_user(request)
            known = to_user is None or self._registrations.find(to_user, now) is not None
        verdict = self.policy.check_request(
            _side(peer), peer.address[0], method, request.get("User-Agent"), to_user, known, now
        )
        if verdict.allowed:
            return None
        return Refusal(verdict.status, verdict.warning, verdict.rule)

    def check_malformed(self, peer: Peer, now: float) -> Refusal | None:
        """Garbage is a request too: banned sources get nothing, and a flood of it from one
        source earns a ban like any other flood."""
        if self.policy is None:
            return None
        verdict = self.policy.check_request(
            _side(peer), peer.address[0], "MALFORMED", None, None, True, now
        )
        return None if verdict.allowed else Refusal(None, verdict.warning, verdict.rule)

    def check_call(
        self, caller: str, source: str, dialled: str, now: float, wall: datetime
    ) -> CallAdmitted | Refusal:
        """May this phone call this number now? ``wall`` is local time for time windows."""
        if self.policy is None:
            return CallAdmitted(None)
        verdict = self.policy.check_outbound_call(caller, source, dialled, now, wall)
        if verdict.allowed:
            return CallAdmitted(verdict.number)
        return Refusal(verdict.status or 403, verdict.warning, verdict.rule)

    def is_emergency(self, dialled: str) -> bool:
        """Whether a dialled number is an emergency number: admitted over every count limit
        (docs/design.md §3.5). Without a policy engine no number is known to be one."""
        return self.policy is not None and self.policy.is_emergency(dialled)

    # ------------------------------------------------------------- numbers

    def format_number(self, number: DialledNumber, style: NumberFormat) -> str:
        """A dialled number as a trunk wants it (as classified: without a policy there is
        no number plan, and the number goes as dialled)."""
        if self.policy is None:
            return number.dialled
        return self.policy.format_number(number, style)

    def format_caller(self, user: str, style: NumberFormat) -> str:
        """A phone's identity as a trunk wants it: only a full number changes form."""
        if self.policy is None or style == "as-dialled":
            return user
        number = self.policy.classify(user)
        return self.policy.format_number(number, style) if number.kind == "e164" else user

    # ------------------------------------------------------------- reports

    def auth_result(
        self, request: SipRequest, source: Peer | None, status: int, now: float
    ) -> None:
        """Final answers to a LAN source feed brute-force detection (401/407/403, 2xx)."""
        if self.policy is None or source is None or source.side != Side.LAN or status < 200:
            return
        had_credentials = request.has("Authorization") or request.has("Proxy-Authorization")
        self.policy.auth_result(
            source.address[0], status, now, had_credentials=had_credentials, side="lan"
        )

    def overlapping_register(self, source: str, now: float) -> bool:
        """Credentials sent before the previous REGISTER was answered count as a failed guess
        at once (§10.2: a UA waits). True when that guess earned the source a ban."""
        if self.policy is None:
            return False
        self.policy.auth_result(source, 403, now, side="lan")
        return any(ban.address == source for ban in self.policy.bans(now))

    def call_started(
        self, key: str, caller: str, dialled: str, number: DialledNumber | None, now: float
    ) -> None:
        """An outbound call went to the provider: it counts towards the caps."""
        if self.policy is None:
            return
        e164 = number.number if number is not None else dialled
        self.policy.call_started(
            key,
            caller,
            e164,
            bool(number and number.international),
            now,
            emergency=bool(number and number.kind == "emergency"),
        )
        self._counted.add(key)

    def call_answered(self, key: str, now: float) -> None:
        if self.policy is not None and key in self._counted:
            self.policy.call_answered(key, now)

    def call_ended(self, key: str, now: float) -> None:
        if self.policy is not None and key in self._counted:
            self._counted.discard(key)
            self.policy.call_ended(key, now)

    # -------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        if self.policy is not None:
            self.policy.handle_timer(now)

    def next_deadline(self) -> float | None:
        return self.policy.next_deadline() if self.policy is not None else None

    def drain_events(self) -> list[SecurityEvent]:
        return self.policy.drain_events() if self.policy is not None else []
