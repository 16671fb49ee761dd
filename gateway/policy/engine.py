"""The policy engine: every security decision the signalling core asks for, and nothing else.

Sans-IO and pure: the engine never reads a clock, opens a file or touches a socket. The core
passes ``now`` (its monotonic clock, seconds) and, for dial-plan time windows, the wall-clock
``datetime``; the engine answers with a :class:`Verdict` and queues :class:`SecurityEvent`\\ s.

How the core uses it (hooks in the order a request meets them)::

    datagram / connection from ip   -> check_source(side, ip, now)       before parsing
    parsed request                  -> check_request(side, ip, method, user_agent,
                                                     to_user, known_user, now)
    INVITE from a LAN phone         -> check_outbound_call(phone, ip, dialled, now, wall)
    INVITE forwarded to the WAN     -> call_started(call_key, phone, e164, international, now)
    200 OK to that INVITE           -> call_answered(call_key, now)
    BYE / failure / timeout         -> call_ended(call_key, now)
    final response to a source      -> auth_result(ip, status, now, had_credentials=...)
    timer                           -> handle_timer(now) at next_deadline()
    after any call                  -> drain_events(); save export_bans() if bans_version moved

A refused Verdict with ``status`` None is dropped silently; otherwise the core answers with
``status`` and puts ``warning`` in a Warning header.

Invariant 5 (emergency numbers are never blocked by toll-fraud rules) is kept structurally: an
INVITE from an allowlisted LAN source whose Request-URI user is an emergency number is allowed by
``check_request`` before bans, rate limits and scan checks are consulted, and
``check_outbound_call`` returns before the dial plan, caps and spike lock. That is also why
``check_source`` does not apply bans to LAN sources: before parsing it cannot tell an emergency
INVITE from anything else, so LAN bans are applied in ``check_request``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from gateway.policy.allowlist import Allowlist, normalise_address, parse_address
from gateway.policy.bans import BanList, BanRecord, PersistedBan, SharedBan
from gateway.policy.caps import CallCaps, SpikeDetector
from gateway.policy.dialplan import DialPlan
from gateway.policy.events import Action, SecurityEvent, counter_name
from gateway.policy.flood import (
    SourceTable,
    TokenBucket,
    count_in_window,
    distinct_unknown_users,
)
from gateway.policy.numbering import DialledNumber, NumberFormat, NumberPlan, emergency_numbers
from gateway.policy.settings import CapLimits, PolicySettings
from gateway.state.model import VERSION as STATE_VERSION
from gateway.state.model import CapsDocument

Side = Literal["lan", "wan"]

#: How often housekeeping (pruning idle sources, flushing folded events) runs.
_HOUSEKEEPING_SECONDS = 60.0


class Verdict(msgspec.Struct, frozen=True):
    """The engine's answer."""

    allowed: bool
    #: For a refusal: the SIP status to answer (403, 486), or None to drop silently.
    status: int | None = None
    #: Reason code, e.g. "dialplan.no-international"; "emergency" for an emergency call.
    rule: str = ""
    #: Warning header value for a refusal with a status, e.g.
    #: '399 gateway "international calls are not allowed from this phone"'.
    warning: str = ""
    #: For outbound calls: the normalised number (pass it back to ``call_started``).
    number: DialledNumber | None = None


ALLOWED = Verdict(True, rule="allow")


class PolicyEngine:
    """Facade over the allowlists, flood guard, ban list, dial plan, caps and spike lock."""

    def __init__(
        self,
        settings: PolicySettings | None = None,
        *,
        emergency_numbers: Iterable[str] = (),
        now: float = 0.0,
    ) -> None:
        """``emergency_numbers`` adds to the configured set; it can never shrink it."""
        s = settings if settings is not None else PolicySettings()
        self.settings = s
        emergency = emergency_numbers_for(s) | frozenset(emergency_numbers)
        self._numbers = NumberPlan(s.dialplan, emergency)
        self._dialplan = DialPlan(s.dialplan)
        self._allow = {"lan": Allowlist(s.allowlist.lan), "wan": Allowlist(s.allowlist.wan)}
        self._providers = Allowlist()
        self._never_ban = Allowlist(s.flood.never_ban)
        f = s.flood
        self._sources = SourceTable(
            per_source=f.per_source,
            register=f.register,
            invite=f.invite,
            max_sources=f.max_tracked_sources,
        )
        self._site_bucket = TokenBucket(f.site, now)
        self._scanner_agents = tuple(a.lower() for a in f.scanner_user_agents if a)
        self._bans = BanList(
            growth=f.ban_growth,
            max_seconds=f.ban_max_seconds,
            offence_memory_seconds=f.offence_memory_seconds,
        )
        self._caps = CallCaps(s.caps.site)
        #: Keys of the calls an HA promotion is about to take over (gateway.ha.node).
        self.taking_over: frozenset[str] = frozenset()
        self._spike = SpikeDetector(s.caps.spike)
        self._events: list[SecurityEvent] = []
        self._counters: Counter[str] = Counter()
        # (side, source, phone, rule, action, status) -> (last emitted event's time, repeats)
        self._folded: dict[tuple[str, str, str, str, Action, int | None], tuple[float, int]] = {}
        self._next_housekeeping = now + _HOUSEKEEPING_SECONDS

    # ------------------------------------------------------------------ sources and requests

    def set_provider_peers(self, addresses: Iterable[str]) -> None:
        """The provider's current addresses (resolved by the glue from the trunk's DNS name):
        allowed on the WAN side and never banned, so a burst of calls from the provider can
        never cut the site off."""
        self._providers = Allowlist(addresses)

    def check_source(self, side: Side, ip: str, now: float) -> Verdict:
        """Before parsing: is this source allowed at all, and (WAN) is it banned?"""
        address = parse_address(ip)
        if address is None:
            return self._refuse(side, ip, "", "source.invalid-address", None, "", now)
        key = address.compressed
        if address not in self._allow[side] and not (side == "wan" and address in self._providers):
            status = 403 if self.settings.allowlist.on_deny == "reject" else None
            return self._refuse(
                side, key, "", f"allowlist.{side}", status, "source not allowed", now
            )
        if side == "wan":
            ban = self._bans.get(key, now)
            if ban is not None:
                return self._refuse(side, key, "", "ban.active", None, "", now, detail=ban.rule)
        return ALLOWED

    def check_request(
        self,
        side: Side,
        ip: str,
        method: str,
        user_agent: str | None,
        to_user: str | None,
        known_user: bool,
        now: float,
    ) -> Verdict:
        """After parsing a request: bans, scanners, rate limits and enumeration.

        ``to_user`` is the Request-URI user; ``known_user`` whether the gateway knows it (a
        registered phone or a configured DID). Self-contained: repeats the allowlist check.
        """
        verdict = self.check_source(side, ip, now)
        if not verdict.allowed:
            return verdict
        key = normalise_address(ip) or ip  # check_source refused anything that does not parse
        method = method.upper()
        if (
            side == "lan"
            and method == "INVITE"
            and to_user is not None
            and self._numbers.is_emergency(to_user)
        ):
            # Invariant 5: nothing below may refuse an emergency call from an allowed phone.
            ban = self._bans.get(key, now)
            if ban is not None:
                self._emit(
                    side,
                    key,
                    "",
                    "emergency.ban-bypassed",
                    "emergency",
                    None,
                    now,
                    detail=ban.rule,
                    fold=False,
                )
            return Verdict(True, rule="emergency")
        ban = self._bans.get(key, now)
        if ban is not None:
            return self._refuse(side, key, "", "ban.active", None, "", now, detail=ban.rule)
        f = self.settings.flood
        if user_agent and self._is_scanner(user_agent):
            return self._ban(
                side, key, "scan.user-agent", now, f.scanner_ban_seconds, detail=user_agent[:120]
            )
        state = self._sources.get(key, now)
        if not state.all_requests.take(now):
            return self._ban(side, key, "flood.source", now, f.ban_seconds, detail=method)
        if method == "REGISTER" and not state.register.take(now):
            return self._ban(side, key, "flood.register", now, f.ban_seconds)
        if method == "INVITE" and not state.invite.take(now):
            return self._ban(side, key, "flood.invite", now, f.ban_seconds)
        if not self._site_bucket.take(now):
            # Nobody to blame for the site total: drop, ban no one.
            return self._refuse(side, key, "", "flood.site", None, "", now, detail=method)
        if to_user and not known_user:
            state.unknown_users[to_user[:64]] = now
            distinct = distinct_unknown_users(
                state.unknown_users, now, f.enumeration_window_seconds
            )
            if distinct >= f.enumeration_users:
                state.unknown_users.clear()
                return self._ban(
                    side,
                    key,
                    "scan.enumeration",
                    now,
                    f.scanner_ban_seconds,
                    detail=f"{distinct} unknown users",
                )
        return ALLOWED

    def auth_result(
        self, ip: str, status: int, now: float, *, had_credentials: bool = True, side: Side = "lan"
    ) -> None:
        """Report the final status answered to ``ip``'s request.

        401/407 count as failures only when the request carried credentials (the first
        challenge of every digest exchange is normal); 403 always counts; 2xx resets.
        """
        key = normalise_address(ip)
        if key is None:
            return
        if 200 <= status < 300:
            state = self._sources.peek(key)
            if state is not None:
                state.auth_failures.clear()
            return
        if status not in (401, 403, 407) or (status != 403 and not had_credentials):
            return
        f = self.settings.flood
        state = self._sources.get(key, now)
        state.auth_failures.append(now)
        if count_in_window(state.auth_failures, now, f.auth_window_seconds) >= f.auth_failures:
            state.auth_failures.clear()
            self._ban(side, key, "auth.failures", now, f.ban_seconds, detail=str(status))

    # ------------------------------------------------------------------ outbound calls

    def is_emergency(self, dialled: str) -> bool:
        return self._numbers.is_emergency(dialled)

    def classify(self, dialled: str) -> DialledNumber:
        """Normalise a dialled number the way ``check_outbound_call`` does."""
        return self._numbers.classify(dialled)

    def format_number(self, number: DialledNumber, style: NumberFormat) -> str:
        """``number`` written for a trunk (see ``NumberPlan.format``)."""
        return self._numbers.format(number, style)

    def check_outbound_call(
        self, phone: str, source_ip: str, dialled: str, now: float, wall: datetime
    ) -> Verdict:
        """Dial plan, spike lock and caps for a new call from LAN ``phone``.

        Emergency numbers are allowed before any of them is consulted.
        """
        source = normalise_address(source_ip) or source_ip
        number = self._numbers.classify(dialled)
        if number.kind == "emergency":
            self._emit(
                "lan",
                source,
                phone,
                "emergency",
                "emergency",
                None,
                now,
                detail=number.number,
                fold=False,
            )
            return Verdict(True, rule="emergency", number=number)
        decision = self._dialplan.decide(phone, number, wall)
        if not decision.allowed:
            return self._refuse(
                "lan",
                source,
                phone,
                decision.rule,
                403,
                decision.message,
                now,
                detail=number.number,
                number=number,
            )
        if self._spike.is_locked(now):
            return self._refuse(
                "lan",
                source,
                phone,
                "spike.lock",
                403,
                "outbound calling is locked after a call spike",
                now,
                detail=number.number,
                number=number,
            )
        if self._spike.record(now):
            recent, baseline = self._spike.rates(now)
            self._emit(
                "",
                source,
                phone,
                "spike.lock",
                "lock",
                None,
                now,
                detail=f"{recent} calls vs baseline {baseline or 0.0:.1f}",
                fold=False,
            )
            return self._refuse(
                "lan",
                source,
                phone,
                "spike.lock",
                403,
                "outbound calling is locked after a call spike",
                now,
                detail=number.number,
                number=number,
            )
        refusal = self._caps.check(
            phone, self.limits_for(phone), international=number.international, now=now
        )
        if refusal is not None:
            return self._refuse(
                "lan",
                source,
                phone,
                refusal.rule,
                refusal.status,
                refusal.message,
                now,
                detail=number.number,
                number=number,
            )
        return Verdict(True, rule=decision.rule, number=number)

    def limits_for(self, phone: str) -> CapLimits:
        """The caps in force for ``phone``: its own, else its group's, else the site default."""
        phone_policy = self.settings.dialplan.phones.get(phone)
        if phone_policy is not None and phone_policy.caps is not None:
            return phone_policy.caps
        group = self._dialplan.group_of(phone)
        if group is not None:
            caps = self.settings.dialplan.groups[group].caps
            if caps is not None:
                return caps
        return self.settings.caps.phone

    def call_started(
        self,
        call_key: str,
        phone: str,
        e164: str,
        international: bool,
        now: float,
        *,
        emergency: bool = False,
    ) -> None:
        """An allowed outbound call was sent to the WAN (counts towards caps from now)."""
        emergency = emergency or self._numbers.is_emergency(e164)
        self._caps.started(
            call_key, phone, international=international, emergency=emergency, now=now
        )

    def call_answered(self, call_key: str, now: float) -> None:
        """The call was answered: minutes count from here."""
        self._caps.answered(call_key, now)

    def call_ended(self, call_key: str, now: float) -> None:
        self._caps.ended(call_key, now)

    def minutes_today(self, phone: str | None, now: float, *, international: bool = False) -> float:
        return self._caps.minutes_today(phone, now, international=international)

    def export_caps(self, now: float, wall: float) -> CapsDocument:
        """The caps' running totals, for the state kept across a restart (gateway.state)."""
        usage, active = self._caps.export(now, wall)
        return CapsDocument(version=STATE_VERSION, usage=usage, active=active)

    def import_caps(self, document: CapsDocument, now: float, wall: float) -> None:
        """Restore the caps' running totals saved before a restart; the calls named in
        ``taking_over`` (an HA promotion sets it) stay in progress instead of ending now."""
        self._caps.restore(document.usage, document.active, now, wall, self.taking_over)

    # ------------------------------------------------------------------ spike lock

    def spike_locked(self, now: float) -> bool:
        return self._spike.is_locked(now)

    def lift_spike_lock(self, now: float) -> bool:
        """Operator lift; True if a lock was in force."""
        lifted = self._spike.lift()
        if lifted:
            self._emit(
                "",
                "",
                "",
                "spike.lock",
                "unlock",
                None,
                now,
                detail="operator",
                fold=False,
            )
        return lifted

    # ------------------------------------------------------------------ bans

    def banned(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is banned now; counts nothing and emits nothing (the glue's look
        before parsing, ``gateway.sip.early_drop``)."""
        return self._bans.get(normalise_address(ip) or ip, now) is not None

    def note_banned_drop(self, ip: str, now: float) -> bool:
        """A datagram of banned ``ip`` dropped before parsing: counted and reported as the
        ``ban.active`` drop a parsed request gets (folded like it). True when a new security
        event waits to be taken (the first of a fold window)."""
        key = normalise_address(ip) or ip
        ban = self._bans.get(key, now)
        if ban is None:
            return False
        pending = len(self._events)
        self._emit("lan", key, "", "ban.active", "drop", None, now, detail=ban.rule, fold=True)
        return len(self._events) > pending

    def bans(self, now: float) -> list[BanRecord]:
        """Active bans, soonest to expire first."""
        return self._bans.active(now)

    def lift_ban(self, ip: str, now: float) -> bool:
        """Operator lift: the ban goes and the source's offences are forgotten."""
        key = normalise_address(ip)
        if key is None or not self._bans.lift(key):
            return False
        self._sources.forget(key)
        self._emit(
            "", key, "", "ban.lift", "lift", None, now, detail="operator", fold=False
        )
        return True

    def remote_ban(self, ban: SharedBan, now: float, wall: float) -> bool:
        """A ban another gateway on the shared store made (``wall``: Unix time at ``now``).

        Applied as it is, expiry kept as the absolute time it was given; this site's own
        exemptions (never_ban, the provider's peers) still win. True when it changed the list.
        """
        key = normalise_address(ban.address)
        if key is None or ban.expires_at <= wall:
            return False
        address = parse_address(key)
        if address is not None and (address in self._never_ban or address in self._providers):
            detail = f"site {ban.site}: ban not applied, exempt here"
            self._emit("", key, "", ban.rule, "drop", None, now, detail=detail, fold=False)
            return False
        until = now + (ban.expires_at - wall)
        record = BanRecord(key, ban.rule, min(now, now + ban.banned_at - wall), until, ban.offences)
        if not self._bans.apply(record):
            return False
        detail = f"site {ban.site}: {until - now:.0f}s left, offence {ban.offences}"
        self._emit("", key, "", ban.rule, "ban", None, now, detail=detail, fold=False)
        return True

    def remote_lift(self, ip: str, site: str, now: float) -> bool:
        """Another gateway on the shared store lifted its ban on ``ip``."""
        key = normalise_address(ip)
        if key is None or not self._bans.lift(key):
            return False
        self._sources.forget(key)
        self._emit("", key, "", "ban.lift", "lift", None, now, detail=f"site {site}", fold=False)
        return True

    @property
    def bans_version(self) -> int:
        """Changes whenever the ban list does: the glue saves when it moved."""
        return self._bans.version

    def export_bans(self, now: float, wall: float) -> list[PersistedBan]:
        """Active bans for ``bans_store.save_bans``; ``wall`` is Unix time at ``now``."""
        return self._bans.export(now, wall)

    def import_bans(self, records: Iterable[PersistedBan], now: float, wall: float) -> int:
        """Restore saved bans after a restart; expired records are skipped."""
        return self._bans.restore(list(records), now, wall)

    # ------------------------------------------------------------------ timers and output

    def handle_timer(self, now: float) -> None:
        """Expire bans and the spike lock, prune idle state, flush folded events."""
        for record in self._bans.expire(now):
            self._emit("", record.address, "", record.rule, "expire", None, now, fold=False)
        if self._spike.locked_until is not None and not self._spike.is_locked(now):
            self._emit("", "", "", "spike.lock", "unlock", None, now, detail="expired", fold=False)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_SECONDS
            f = self.settings.flood
            self._sources.prune(now, max(f.auth_window_seconds, f.enumeration_window_seconds, 60.0))
            self._caps.prune(now)
            self._flush_folded(now, force=False)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run."""
        candidates = [self._next_housekeeping]
        expiry = self._bans.next_expiry()
        if expiry is not None:
            candidates.append(expiry)
        if self._spike.locked_until is not None:
            candidates.append(self._spike.locked_until)
        return min(candidates)

    def drain_events(self) -> list[SecurityEvent]:
        events, self._events = self._events, []
        return events

    def counters(self) -> dict[str, int]:
        """Counts of every event kind, "<action>.<rule>" -> n, folded repeats included."""
        return dict(self._counters)

    # ------------------------------------------------------------------ internals

    def _is_scanner(self, user_agent: str) -> bool:
        agent = user_agent.lower()
        return any(fragment in agent for fragment in self._scanner_agents)

    def _warning(self, text: str) -> str:
        # A quoted-string may not hold an unescaped quote or backslash (RFC 3261 §25.1).
        safe = text.replace("\\", "").replace('"', "'")
        return f'399 {self.settings.events.warning_agent} "{safe}"'

    def _refuse(
        self,
        side: str,
        source: str,
        phone: str,
        rule: str,
        status: int | None,
        message: str,
        now: float,
        *,
        detail: str = "",
        number: DialledNumber | None = None,
    ) -> Verdict:
        action: Action = "drop" if status is None else "reject"
        self._emit(side, source, phone, rule, action, status, now, detail=detail, fold=True)
        warning = self._warning(message) if status is not None and message else ""
        return Verdict(False, status, rule, warning, number)

    def _ban(
        self, side: str, source: str, rule: str, now: float, seconds: float, *, detail: str = ""
    ) -> Verdict:
        address = parse_address(source)
        if address is not None and (address in self._never_ban or address in self._providers):
            return self._refuse(
                side,
                source,
                "",
                rule,
                None,
                "",
                now,
                detail=f"exempt from bans; {detail}".rstrip("; "),
            )
        record = self._bans.ban(source, rule, now, seconds)
        length = record.until - record.since
        self._emit(
            side,
            source,
            "",
            rule,
            "ban",
            None,
            now,
            detail=f"{length:.0f}s, offence {record.offences}; {detail}".rstrip("; "),
            fold=False,
        )
        return Verdict(False, None, rule)

    def _emit(
        self,
        side: str,
        source: str,
        phone: str,
        rule: str,
        action: Action,
        status: int | None,
        now: float,
        *,
        detail: str = "",
        fold: bool,
    ) -> None:
        self._counters[counter_name(action, rule)] += 1
        repeats = 0
        if fold:
            key = (side, source, phone, rule, action, status)
            previous = self._folded.get(key)
            window = self.settings.events.coalesce_seconds
            if previous is not None and now - previous[0] < window:
                self._folded[key] = (previous[0], previous[1] + 1)
                return
            repeats = previous[1] if previous is not None else 0
            self._folded[key] = (now, 0)
            if len(self._folded) > self.settings.flood.max_tracked_sources:
                self._flush_folded(now, force=True)
        self._events.append(
            SecurityEvent(now, side, source, phone, rule, action, status, detail, repeats)
        )

    def _flush_folded(self, now: float, *, force: bool) -> None:
        """Report folded repeats whose window has closed (all of them when ``force``)."""
        window = self.settings.events.coalesce_seconds
        for key, (since, repeats) in list(self._folded.items()):
            if force or now - since >= window:
                del self._folded[key]
                if repeats:
                    side, source, phone, rule, action, status = key
                    self._events.append(
                        SecurityEvent(
                            now,
                            side,
                            source,
                            phone,
                            rule,
                            action,
                            status,
                            "folded repeats",
                            repeats,
                        )
                    )


def emergency_numbers_for(settings: PolicySettings) -> frozenset[str]:
    """The emergency set the settings describe (defaults plus the site's national numbers)."""
    return emergency_numbers(
        settings.dialplan.country_code,
        settings.emergency.numbers,
        national=settings.emergency.national,
    )
