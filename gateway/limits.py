"""Connection limits of the stream listeners, and the counters of every limit ([limits]).

A listener asks ``ConnectionLimiter.admit`` for each accepted socket, before any TLS work or
parsing: a source over its share (``connections_per_source``) or a listener already full
(``connections_total``) is refused at once, so a flood of connections costs an accept and a
close, never a handshake. What was admitted is given back with ``Lease.release`` when the
connection ends, however it ends (exactly once: a lease released twice counts once).

Hitting a per-source limit is a security event, but one per refused connection would let a
flood write the log: the first refusal of a source is reported, the following ones within
``report_interval`` seconds are folded into the next report's ``repeats``.

Sans-IO like the cores: the time comes in with every call, events are drained by the glue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.policy.events import SecurityEvent
from gateway.sip.limits import (
    MAX_CALLS,
    MAX_DIALOGS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_MESSAGE_BYTES,
    MAX_REGISTRATIONS,
)

#: Counter names of the glue's limits, as they appear with the core's counters on /metrics.
CONNECTIONS_PER_SOURCE = "limit_connections_per_source"
CONNECTIONS_TOTAL = "limit_connections_total"
TLS_HANDSHAKE_TIMEOUT = "limit_tls_handshake_timeout"
IDLE_TIMEOUT = "limit_idle_timeout"
#: The admin HTTP(S) listener's and the control socket's (gateway/admin/limits.py).
ADMIN_CONNECTIONS_PER_SOURCE = "limit_admin_connections_per_source"
ADMIN_CONNECTIONS_TOTAL = "limit_admin_connections_total"
ADMIN_TLS_HANDSHAKE_TIMEOUT = "limit_admin_tls_handshake_timeout"
ADMIN_IDLE_TIMEOUT = "limit_admin_idle_timeout"
ADMIN_MAX_HEADER_BYTES = "limit_admin_max_header_bytes"
ADMIN_MAX_BODY_BYTES = "limit_admin_max_body_bytes"
ADMIN_REQUEST_RATE = "limit_admin_request_rate"
CONTROL_CONNECTIONS = "limit_control_connections"
#: Every limit's counter name, in the order of docs/robustness.md's table.
ALL_LIMITS = (
    CONNECTIONS_PER_SOURCE,
    CONNECTIONS_TOTAL,
    TLS_HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_MESSAGE_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_CALLS,
    MAX_DIALOGS,
    MAX_REGISTRATIONS,
    ADMIN_CONNECTIONS_PER_SOURCE,
    ADMIN_CONNECTIONS_TOTAL,
    ADMIN_TLS_HANDSHAKE_TIMEOUT,
    ADMIN_IDLE_TIMEOUT,
    ADMIN_MAX_HEADER_BYTES,
    ADMIN_MAX_BODY_BYTES,
    ADMIN_REQUEST_RATE,
    CONTROL_CONNECTIONS,
)


class LimitCounters:
    """How often each limit was hit, by counter name (the glue's share; the core counts its
    own limits with its other counters)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def hit(self, name: str) -> None:
        self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        return self._counts[name]


@dataclass
class Lease:
    """One admitted connection; ``release`` gives its place back (idempotent)."""

    limiter: ConnectionLimiter
    source: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.give_back(self.source)


@dataclass
class _Reports:
    """Per-source report rate limiting: when the last report went out, and refusals since."""

    last: dict[str, float] = field(default_factory=dict)
    folded: Counter[str] = field(default_factory=Counter)


class ConnectionLimiter:
    """Open connections of one listener, per source address and in total."""

    def __init__(
        self,
        name: str,
        side: str,
        *,
        per_source: int,
        total: int,
        counters: LimitCounters,
        report_interval: float = 60.0,
        per_source_counter: str = CONNECTIONS_PER_SOURCE,
        total_counter: str = CONNECTIONS_TOTAL,
    ) -> None:
        #: The listener's name in events ("lan-tcp", "wan-tls").
        self.name = name
        self._side = side
        self.per_source = per_source
        self.total = total
        self._counters = counters
        #: The counters this listener's refusals go to (the admin listener has its own).
        self._per_source_counter = per_source_counter
        self._total_counter = total_counter
        self._interval = report_interval
        self._open: Counter[str] = Counter()
        self._count = 0
        self._reports = _Reports()
        self._events: list[SecurityEvent] = []

    @property
    def open_connections(self) -> int:
        return self._count

    def open_from(self, source: str) -> int:
        return self._open.get(source, 0)

    def admit(self, source: str, now: float) -> Lease | None:
        """A lease for a new connection from ``source``, or None: close it unanswered."""
        if self._count >= self.total:
            # The listener is full: whoever fills it, the refusal says nothing about this
            # source, so it is counted but not reported per source.
            self._counters.hit(self._total_counter)
            return None
        if self._open[source] >= self.per_source:
            self._counters.hit(self._per_source_counter)
            self._report(source, now)
            return None
        self._open[source] += 1
        self._count += 1
        return Lease(self, source)

    def give_back(self, source: str) -> None:
        """One connection from ``source`` ended (called by its ``Lease``)."""
        left = self._open[source] - 1
        if left > 0:
            self._open[source] = left
        else:
            del self._open[source]
        self._count -= 1

    def _report(self, source: str, now: float) -> None:
        reports = self._reports
        last = reports.last.get(source)
        if last is not None and now - last < self._interval:
            reports.folded[source] += 1
            return
        if len(reports.last) > 4 * self.total:
            # Many sources refused once each: forget the old report times rather than grow.
            reports.last = {s: t for s, t in reports.last.items() if now - t < self._interval}
        reports.last[source] = now
        self._events.append(
            SecurityEvent(
                now,
                self._side,
                source,
                "",
                "limit.connections-per-source",
                "drop",
                detail=f"{self.name}: {self.per_source} connections open from this source",
                repeats=reports.folded.pop(source, 0),
            )
        )

    def drain_events(self) -> list[SecurityEvent]:
        events, self._events = self._events, []
        return events
