"""Trunks toward providers, routes choosing them, and which are usable now (RFC 3261 §8.1.3.4
and §16.7 on 503/408 as "try elsewhere"; RFC 3263 for where each trunk is).

A site may have several trunks: a primary and a backup provider, or one provider for
international calls and another for the rest. Each trunk is one verified TLS link (the glue
reports it up or down, with the reason), a SIP domain, how it wants numbers written, and the
time it gets to answer. Routes choose an ordered list of trunks by destination; a trunk is
skipped for new calls while its link is down, and goes last for ``down_for`` seconds after
it failed a call with 503, 408 or no answer at all (last, not away: a site's only trunk
that refused one call must not refuse the next ones). Emergency calls go out on whichever
trunk is up first, whatever the routes say: a route is a cost decision, an emergency call
is not.

Nothing here reads a clock: ``now`` comes with every question.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.policy.numbering import DialledNumber, NumberFormat
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.peer import Peer

#: Final statuses that say "this trunk cannot take the call now": try the next one.
FAILOVER_STATUSES = frozenset({408, 500, 502, 503, 504})


@dataclass(frozen=True)
class Trunk:
    """One provider trunk as the core sees it."""

    name: str
    #: The provider connection (connection None: whichever is current for this trunk).
    peer: Peer
    #: SIP domain in Request-URIs, From and To toward this trunk.
    domain: str
    #: How the dialled number goes in the Request-URI and To.
    number_format: NumberFormat = "e164"
    #: How the caller's number goes in From and P-Asserted-Identity.
    caller_id_format: NumberFormat = "e164"
    #: Seconds for the first response (provisional or final) before the next trunk is tried.
    answer_timeout: float = 10.0
    #: Seconds a trunk that failed a call (503, 408, no answer) is tried last for new calls.
    down_for: float = 30.0
    #: Media keying and suites toward this trunk (None: the site's).
    media: MediaPolicy | None = None


@dataclass(frozen=True)
class Route:
    """Destinations (prefixes of the normalised number; "*" for any) and their trunks, in
    the order they are tried."""

    destinations: tuple[str, ...]
    trunks: tuple[str, ...]

    def matches(self, number: str) -> bool:
        return any(d == "*" or number.startswith(d) for d in self.destinations)


@dataclass(slots=True)
class _TrunkState:
    up: bool = False
    reason: str = "not connected to the provider yet"
    skipped_until: float = 0.0
    skip_reason: str = ""


@dataclass
class TrunkTable:
    """The trunks, their routes and their state."""

    trunks: tuple[Trunk, ...]
    routes: tuple[Route, ...] = ()
    _state: dict[str, _TrunkState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.trunks:
            raise ValueError("at least one trunk is needed")
        self._by_name = {t.name: t for t in self.trunks}
        self._by_peer = {t.peer.address: t for t in self.trunks}
        self._state = {t.name: _TrunkState() for t in self.trunks}

    @property
    def registrar(self) -> Trunk:
        """Where phones' registrations and out-of-dialog requests go: the first trunk whose
        link is up (the first trunk while none is), so phones stay registered while the
        primary provider is away."""
        return next((t for t in self.trunks if self._state[t.name].up), self.trunks[0])

    def get(self, name: str) -> Trunk:
        return self._by_name[name]

    def of_peer(self, peer: Peer) -> Trunk | None:
        return self._by_peer.get(peer.address)

    # ------------------------------------------------------------- state

    def link_state(self, name: str, up: bool, reason: str) -> bool:
        """The glue reports a trunk's link; True when it just came up."""
        state = self._state[name]
        came_up = up and not state.up
        state.up, state.reason = up, reason
        return came_up

    def is_up(self, name: str) -> bool:
        return self._state[name].up

    def down_reason(self, name: str) -> str:
        return self._state[name].reason

    def failed(self, name: str, reason: str, now: float) -> None:
        """A call on this trunk failed in a way that says the trunk is in trouble."""
        state = self._state[name]
        state.skipped_until = now + self._by_name[name].down_for
        state.skip_reason = reason

    def answered(self, name: str) -> None:
        """A call on this trunk was answered: it is fine, whatever failed before."""
        self._state[name].skipped_until = 0.0

    def usable(self, name: str, now: float) -> bool:
        state = self._state[name]
        return state.up and now >= state.skipped_until

    # ------------------------------------------------------------ routing

    def candidates(self, number: DialledNumber | None, dialled: str, now: float) -> list[Trunk]:
        """The trunks to try for a new call, in order; empty when none is usable."""
        if number is not None and number.kind == "emergency":
            # Any trunk that is up, skipped ones last: never refuse an emergency call for cost
            # or for a trunk's recent trouble while its link is up.
            up = [t for t in self.trunks if self._state[t.name].up]
            return sorted(up, key=lambda t: not self.usable(t.name, now))
        key = number.number if number is not None else dialled
        names = next((r.trunks for r in self.routes if r.matches(key)), None)
        chosen = [self._by_name[n] for n in names] if names is not None else list(self.trunks)
        # A trunk that failed a call recently goes last, not away: with no other trunk up
        # (a site with one provider) it still takes the call rather than the phone a 503.
        usable = [t for t in chosen if self.usable(t.name, now)]
        skipped = [t for t in chosen if self._state[t.name].up and t not in usable]
        return usable + skipped

    def why_none(self, number: DialledNumber | None, dialled: str) -> str:
        """Why ``candidates`` came back empty, for the 503's Warning."""
        key = number.number if number is not None else dialled
        names = next((r.trunks for r in self.routes if r.matches(key)), None)
        chosen = names if names is not None else tuple(t.name for t in self.trunks)
        reasons = []
        for name in chosen:
            state = self._state[name]
            reason = state.reason if not state.up else f"skipped after {state.skip_reason}"
            reasons.append(reason if len(self.trunks) == 1 else f"{name}: {reason}")
        return "; ".join(reasons) or "no trunk routes this number"
