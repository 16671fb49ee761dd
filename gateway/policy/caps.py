"""Credit caps and the outbound spike lock.

``CallCaps`` tracks the calls in progress and the recent ones, per phone and for the site, and
says whether one more may start: concurrent calls (a busy cap, answered 486), calls in the last
hour, call minutes and international minutes in the last 24 hours (answered 403). Minutes count
from the answer when the core reports it (``answered``) and otherwise from the start, which can
only overcount: a cap that errs errs towards the owner's money. Calls in progress count towards
the minutes as they run, so a call that is still up cannot hide its cost.

``SpikeDetector`` compares the outbound call count of the last few minutes with its own rolling
baseline (the average count per window over the last day) and locks new non-emergency outbound
calls when it jumps: toll fraud usually starts as a burst of calls from a hijacked account. The
lock lifts after ``lock_seconds`` or when an operator lifts it.

Emergency calls are never refused here (the engine does not ask), and they are not counted
towards per-hour or per-day caps, so one emergency can never use up a phone's quota.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from gateway.policy.settings import CapLimits, SpikeSettings
from gateway.state.model import ActiveCallRecord, UsageRecord

_HOUR = 3600.0
_DAY = 86400.0
#: Finished calls of one phone (or the site) that end in the same slot of this many seconds
#: are kept as one record: what a day of records costs is bounded by the slots of a day, not
#: by how many calls there were (a soak at 13 calls/s grew by megabytes an hour, in memory and
#: in the saved caps document). A merged record carries its latest end, so a call counts
#: towards the day's minutes up to this much longer: a cap that errs errs towards the owner's
#: money.
FINISHED_SLOT_S = 300.0


@dataclass(slots=True)
class ActiveCall:
    phone: str
    started: float
    answered: float | None
    international: bool
    emergency: bool

    def billable_from(self) -> float:
        return self.answered if self.answered is not None else self.started


@dataclass(slots=True)
class _Usage:
    """Recent usage of one phone or of the site."""

    starts: deque[float]
    #: (end time, seconds, international) of finished calls in the last day.
    finished: deque[tuple[float, float, bool]]
    #: Sums over ``finished``, kept as records come and go: a cap check must not walk a
    #: day of calls (at a busy site that was most of the cost of a call set-up).
    finished_seconds: float = 0.0
    finished_international_seconds: float = 0.0

    @classmethod
    def empty(cls) -> _Usage:
        return cls(deque(), deque())

    def add_finished(self, record: tuple[float, float, bool]) -> None:
        end, seconds, international = record
        self.finished_seconds += seconds
        if international:
            self.finished_international_seconds += seconds
        slot = end // FINISHED_SLOT_S
        finished = self.finished
        # The last two records: a national and an international call ending in turns still
        # merge into one record of each kind per slot.
        for back in range(1, min(len(finished), 2) + 1):
            last_end, last_seconds, last_international = finished[-back]
            if last_international == international and last_end // FINISHED_SLOT_S == slot:
                finished[-back] = (max(end, last_end), last_seconds + seconds, international)
                return
        finished.append(record)

    def prune(self, now: float) -> None:
        while self.starts and now - self.starts[0] > _HOUR:
            self.starts.popleft()
        while self.finished and now - self.finished[0][0] > _DAY:
            _, seconds, international = self.finished.popleft()
            self.finished_seconds -= seconds
            if international:
                self.finished_international_seconds -= seconds
        if not self.finished:
            # Exact zero once empty, so float rounding never accumulates across days.
            self.finished_seconds = self.finished_international_seconds = 0.0

    def is_idle(self) -> bool:
        return not self.starts and not self.finished


@dataclass(frozen=True, slots=True)
class CapRefusal:
    rule: str
    status: int
    message: str


class CallCaps:
    """Concurrent, hourly and daily call caps; pure, fed with ``now``."""

    def __init__(self, site: CapLimits) -> None:
        self._site = site
        self._calls: dict[str, ActiveCall] = {}
        self._phones: dict[str, _Usage] = {}
        self._site_usage = _Usage.empty()

    # --- questions ---

    def check(
        self, phone: str, limits: CapLimits, *, international: bool, now: float
    ) -> CapRefusal | None:
        """Whether one more non-emergency call from ``phone`` may start now."""
        active = [c for c in self._calls.values() if not c.emergency]
        mine = [c for c in active if c.phone == phone]
        if limits.concurrent and len(mine) >= limits.concurrent:
            return CapRefusal(
                "caps.phone-concurrent", 486, "this phone has too many calls in progress"
            )
        if self._site.concurrent and len(active) >= self._site.concurrent:
            return CapRefusal(
                "caps.site-concurrent", 486, "the site has too many calls in progress"
            )
        usage = self._phones.get(phone) or _Usage.empty()
        usage.prune(now)
        self._site_usage.prune(now)
        if limits.calls_per_hour and len(usage.starts) >= limits.calls_per_hour:
            return CapRefusal("caps.phone-calls-per-hour", 403, "hourly call cap for this phone")
        if self._site.calls_per_hour and len(self._site_usage.starts) >= self._site.calls_per_hour:
            return CapRefusal("caps.site-calls-per-hour", 403, "hourly call cap for the site")
        checks: list[tuple[float, float, str]] = [
            (limits.minutes_per_day, self._minutes(usage, mine, now, False), "phone-minutes"),
            (
                self._site.minutes_per_day,
                self._minutes(self._site_usage, active, now, False),
                "site-minutes",
            ),
        ]
        if international:
            checks += [
                (
                    limits.international_minutes_per_day,
                    self._minutes(usage, mine, now, True),
                    "phone-international-minutes",
                ),
                (
                    self._site.international_minutes_per_day,
                    self._minutes(self._site_usage, active, now, True),
                    "site-international-minutes",
                ),
            ]
        for cap, used, name in checks:
            if cap and used >= cap:
                return CapRefusal(f"caps.{name}-per-day", 403, f"daily {name} cap reached")
        return None

    def minutes_today(self, phone: str | None, now: float, *, international: bool = False) -> float:
        """Minutes used in the last 24 h by ``phone`` (or the site, for None)."""
        active = [c for c in self._calls.values() if not c.emergency]
        if phone is None:
            self._site_usage.prune(now)
            return self._minutes(self._site_usage, active, now, international)
        usage = self._phones.get(phone) or _Usage.empty()
        usage.prune(now)
        return self._minutes(usage, [c for c in active if c.phone == phone], now, international)

    @staticmethod
    def _minutes(
        usage: _Usage, active: list[ActiveCall], now: float, international_only: bool
    ) -> float:
        seconds = (
            usage.finished_international_seconds if international_only else usage.finished_seconds
        )
        seconds += sum(
            max(0.0, now - c.billable_from())
            for c in active
            if c.international or not international_only
        )
        return seconds / 60.0

    # --- reports from the signalling core ---

    def started(
        self, key: str, phone: str, *, international: bool, emergency: bool, now: float
    ) -> None:
        if key in self._calls:
            return  # a retransmitted or re-reported start must not count twice
        self._calls[key] = ActiveCall(phone, now, None, international, emergency)
        if emergency:
            return
        self._phones.setdefault(phone, _Usage.empty()).starts.append(now)
        self._site_usage.starts.append(now)

    def answered(self, key: str, now: float) -> None:
        call = self._calls.get(key)
        if call is not None and call.answered is None:
            call.answered = now

    def ended(self, key: str, now: float) -> ActiveCall | None:
        call = self._calls.pop(key, None)
        if call is None or call.emergency:
            return call
        record = (now, max(0.0, now - call.billable_from()), call.international)
        self._phones.setdefault(call.phone, _Usage.empty()).add_finished(record)
        self._site_usage.add_finished(record)
        return call

    # --- state kept across a restart (gateway.state) ---

    def export(self, now: float, wall: float) -> tuple[list[UsageRecord], list[ActiveCallRecord]]:
        """Running totals per phone and for the site, and the calls in progress, in Unix time
        (``wall`` is Unix time at ``now``)."""

        def unix(t: float) -> float:
            return round(t - now + wall, 3)

        usage = [
            UsageRecord(
                phone=phone,
                starts=[unix(t) for t in u.starts],
                finished=[(unix(end), round(sec, 3), intl) for end, sec, intl in u.finished],
            )
            for phone, u in [(None, self._site_usage), *self._phones.items()]
            if not u.is_idle()
        ]
        active = [
            ActiveCallRecord(
                key=key,
                phone=c.phone,
                started=unix(c.started),
                answered=unix(c.answered) if c.answered is not None else None,
                international=c.international,
            )
            for key, c in self._calls.items()
            if not c.emergency
        ]
        return usage, active

    def restore(
        self,
        usage: list[UsageRecord],
        active: list[ActiveCallRecord],
        now: float,
        wall: float,
        running: Collection[str] = (),
    ) -> None:
        """Totals saved before a restart. Calls in progress then ended with the process: they
        count as ended now, which overcounts by the downtime at most (errs towards the
        owner's money). Calls named in ``running`` go on here (an HA takeover): they stay in
        progress with their start already counted, so restoring the call counts it once."""

        def core(t: float) -> float:
            return t - wall + now

        for record in usage:
            target = (
                self._site_usage
                if record.phone is None
                else self._phones.setdefault(record.phone, _Usage.empty())
            )
            target.starts.extend(sorted(core(t) for t in record.starts))
            for end, seconds, intl in sorted(record.finished):
                target.add_finished((core(end), seconds, intl))
        for call in active:
            if call.key in running:
                self._calls[call.key] = ActiveCall(
                    call.phone,
                    core(call.started),
                    core(call.answered) if call.answered is not None else None,
                    call.international,
                    False,
                )
                continue
            billable = call.answered if call.answered is not None else call.started
            ended = (now, max(0.0, wall - billable), call.international)
            self._phones.setdefault(call.phone, _Usage.empty()).add_finished(ended)
            self._site_usage.add_finished(ended)
        self.prune(now)

    def prune(self, now: float) -> None:
        self._site_usage.prune(now)
        for phone in list(self._phones):
            usage = self._phones[phone]
            usage.prune(now)
            if usage.is_idle():
                del self._phones[phone]


class SpikeDetector:
    """Locks outbound calling when the recent call rate jumps above its rolling baseline."""

    def __init__(self, settings: SpikeSettings) -> None:
        self._s = settings
        # Minute bins: (minute index, calls). A day of them is 1440 small tuples at most.
        self._bins: deque[list[int]] = deque()
        self._first_minute: int | None = None
        # Sum of every bin, kept as bins come and go, so a decision costs O(window), not a day.
        self._total = 0
        self.locked_until: float | None = None

    def is_locked(self, now: float) -> bool:
        if self.locked_until is not None and now >= self.locked_until:
            self.locked_until = None
        return self.locked_until is not None

    def lift(self) -> bool:
        """Operator lift. The calls of the recent window are forgotten too: the operator has
        looked at them, and keeping them would set the lock off again on the next call."""
        was = self.locked_until is not None
        self.locked_until = None
        if self._bins:
            window = max(1, int(self._s.window_seconds // 60))
            last = self._bins[-1][0]
            while self._bins and last - self._bins[-1][0] < window:
                self._total -= self._bins.pop()[1]
        return was

    def record(self, now: float) -> bool:
        """Count one outbound attempt; True if it set off the lock."""
        if not self._s.enabled:
            return False
        minute = int(now // 60)
        if self._first_minute is None:
            self._first_minute = minute
        if self._bins and self._bins[-1][0] == minute:
            self._bins[-1][1] += 1
        else:
            self._bins.append([minute, 1])
        self._total += 1
        self._prune(minute)
        if self.is_locked(now):
            return False
        recent, baseline = self.rates(now)
        if baseline is None:
            # No history yet (a fresh start): nothing to compare with, so only a burst of
            # ``factor`` times the minimum counts as a spike.
            threshold = self._s.factor * self._s.min_calls
        else:
            threshold = max(float(self._s.min_calls), self._s.factor * baseline + 1e-9)
        if recent >= threshold:
            self.locked_until = now + self._s.lock_seconds
            return True
        return False

    def rates(self, now: float) -> tuple[int, float | None]:
        """(calls in the recent window, baseline calls per window before it or None while
        there is no history before the recent window)."""
        minute = int(now // 60)
        window = max(1, int(self._s.window_seconds // 60))
        span = max(window * 2, int(self._s.baseline_seconds // 60))
        first = self._first_minute if self._first_minute is not None else minute
        recent = 0
        for m, n in reversed(self._bins):  # bins are in minute order: newest at the right
            if minute - m >= window:
                break
            recent += n
        stale = 0  # bins past the baseline span that pruning has not dropped yet
        for m, n in self._bins:
            if minute - m < span:
                break
            stale += n
        # The first minute was seen only in part (the engine started during it): it stays out
        # of the baseline, or a steady rate reads as a spike minutes after a (re)start.
        partial = 0
        if self._bins and self._bins[0][0] == first and window <= minute - first < span:
            partial = self._bins[0][1]
        older = self._total - recent - stale - partial
        # Average over the history actually seen, so a fresh start is not a zero baseline
        # forever, nor diluted by a day it has not lived through.
        seen = min(span, minute - first) - window
        return recent, (older / (seen / window) if seen > 0 else None)

    def _prune(self, minute: int) -> None:
        span = max(2, int(self._s.baseline_seconds // 60)) + 1
        while self._bins and minute - self._bins[0][0] > span:
            self._total -= self._bins.popleft()[1]
