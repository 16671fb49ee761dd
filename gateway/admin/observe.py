"""What the operator surface remembers between requests: recent security events, refusals and
bans per minute, call set-ups and refusals by reason.

The composition root feeds an :class:`Observatory` with every security event (as the policy
engine decided it) and every call event; the admin API and the metrics read it. Nothing here
does I/O or imports aiohttp, so the gateway keeps it whether or not the admin surface runs.

Reasons used as metric labels stay a small, fixed set: policy rule codes (``dialplan.*``,
``allowlist.*`` …, defined by the policy engine), ``media`` for a 488 without acceptable crypto,
and ``other``. Free text (a Warning's wording) never becomes a label.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.policy.events import SecurityEvent
from gateway.sip.call_events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRefused,
    CallStarted,
    PlaintextDowngrade,
)

__all__ = ["Observatory", "SecurityRecord"]

#: Security-event actions that are refusals (the others are bans, lifts, locks …).
REFUSAL_ACTIONS = frozenset({"drop", "reject"})


@dataclass(frozen=True)
class SecurityRecord:
    """A security event as the operator sees it: Unix time, and the event's fields."""

    wall: float
    event: SecurityEvent

    def as_json(self) -> dict[str, Any]:
        e = self.event
        return {
            "time": datetime.fromtimestamp(self.wall, tz=UTC).isoformat(timespec="milliseconds"),
            "side": e.side,
            "source": e.source,
            "phone": e.phone,
            "rule": e.rule,
            "action": e.action,
            "status": e.status,
            "detail": e.detail,
            "repeats": e.repeats,
        }


class Observatory:
    """Ring buffer of security events, per-minute history, call counters."""

    def __init__(
        self, *, keep_events: int = 2000, bucket_seconds: int = 60, buckets: int = 60
    ) -> None:
        self.events: deque[SecurityRecord] = deque(maxlen=keep_events)
        self.bucket_seconds = bucket_seconds
        self.buckets = buckets
        #: bucket start (Unix seconds) -> {"refusals": n, "bans": n, "calls": n}
        self._history: dict[int, Counter[str]] = {}
        self.call_setups = 0
        self.calls_answered = 0
        self.call_refusals: Counter[str] = Counter()
        self.calls_failed: Counter[str] = Counter()
        self.calls_ended: Counter[str] = Counter()
        self.suites: Counter[str] = Counter()
        self.downgrades = 0

    # -- inputs --------------------------------------------------------------------------

    def security_event(self, event: SecurityEvent, clock_offset: float) -> None:
        """One event from the policy engine; ``clock_offset`` turns its time into Unix time."""
        wall = event.time + clock_offset
        self.events.append(SecurityRecord(wall, event))
        weight = 1 + event.repeats  # folded repeats count as the refusals they were
        if event.action in REFUSAL_ACTIONS:
            self._bucket(wall)["refusals"] += weight
        elif event.action == "ban":
            self._bucket(wall)["bans"] += 1

    def call_event(self, event: CallEvent, wall: float) -> None:
        """One call event at Unix time ``wall``."""
        match event:
            case CallStarted(method="INVITE"):
                self.call_setups += 1
                self._bucket(wall)["calls"] += 1
            case CallAnswered(suite=suite):
                self.calls_answered += 1
                self.suites[suite or "none"] += 1
            case CallRefused():
                self.call_refusals[refusal_reason(event)] += 1
                self._bucket(wall)["call_refusals"] += 1
            case CallFailed(status=status):
                self.calls_failed[f"{status // 100}xx" if status else "other"] += 1
            case CallEnded(reason=reason):
                self.calls_ended[end_reason(reason)] += 1
            case PlaintextDowngrade():
                self.downgrades += 1

    def _bucket(self, wall: float) -> Counter[str]:
        start = int(wall // self.bucket_seconds) * self.bucket_seconds
        bucket = self._history.get(start)
        if bucket is None:
            bucket = self._history[start] = Counter()
            oldest = start - self.bucket_seconds * self.buckets
            for key in [k for k in self._history if k <= oldest]:
                del self._history[key]
        return bucket

    # -- outputs -------------------------------------------------------------------------

    def recent(
        self,
        *,
        limit: int = 100,
        since: float | None = None,
        side: str | None = None,
        rule: str | None = None,
        action: str | None = None,
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``rule`` matches a prefix ("dialplan" finds "dialplan.premium")."""
        found: list[dict[str, Any]] = []
        for record in reversed(self.events):
            e = record.event
            if since is not None and record.wall < since:
                break  # the buffer is in time order
            if side is not None and e.side != side:
                continue
            if action is not None and e.action != action:
                continue
            if source is not None and e.source != source:
                continue
            if rule is not None and not (e.rule == rule or e.rule.startswith(rule + ".")):
                continue
            found.append(record.as_json())
            if len(found) >= limit:
                break
        return found

    def timeline(self, now: float) -> list[dict[str, Any]]:
        """One entry per bucket over the kept window, oldest first, zeros included."""
        step = self.bucket_seconds
        last = int(now // step) * step
        rows = []
        for start in range(last - step * (self.buckets - 1), last + step, step):
            bucket = self._history.get(start, Counter())
            rows.append(
                {
                    "start": start,
                    "refusals": bucket["refusals"],
                    "call_refusals": bucket["call_refusals"],
                    "bans": bucket["bans"],
                    "calls": bucket["calls"],
                }
            )
        return rows


def refusal_reason(event: CallRefused) -> str:
    """A bounded label for a refused call: the policy rule, ``media`` or ``other``."""
    if event.rule:
        return event.rule
    if event.status == 488 or event.reason:
        return "media"
    return "other"


def end_reason(reason: str) -> str:
    """A bounded label for why a call ended."""
    if reason.startswith("BYE from lan"):
        return "bye_phone"
    if reason.startswith("BYE from wan"):
        return "bye_provider"
    if "shutting down" in reason:
        return "shutdown"
    if "media" in reason:
        return "media"
    if "ACK" in reason:
        return "no_ack"
    return "other"
