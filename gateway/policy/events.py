"""Security events: one structured record per refusal, ban, lift and lock.

Events are small msgspec Structs the engine queues and the glue drains
(``PolicyEngine.drain_events``) and writes as JSON lines to the security log. The engine's
clock is monotonic, so an event's ``time`` is in that clock; ``encode_line`` turns it into UTC
given the offset between the two clocks (``time.time() - loop.time()``), which keeps the engine
free of clocks.

One line looks like::

    {"time":"2024-05-01T10:00:00.123Z","side":"lan","source":"192.168.1.23","phone":"201",
     "rule":"dialplan.no-international","action":"reject","status":403,"detail":"+442079460000",
     "repeats":0}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

#: drop: refused without an answer; reject: refused with a status; ban / lift: a source ban set
#: or removed (by an operator or by expiry); lock / unlock: the outbound spike lock;
#: emergency: an emergency call let through (logged so it can be reviewed, never refused).
Action = Literal["drop", "reject", "ban", "lift", "expire", "lock", "unlock", "emergency"]


class SecurityEvent(msgspec.Struct, frozen=True):
    """One security-relevant decision."""

    #: The engine's ``now`` when it happened.
    time: float
    #: "lan", "wan" or "" when not tied to a side (an operator action).
    side: str
    #: Source address, "" when none.
    source: str
    #: The phone (SIP user) concerned, "" when none.
    phone: str
    #: Reason code, e.g. "allowlist.wan", "flood.invite", "caps.phone-concurrent".
    rule: str
    action: Action
    #: The SIP status answered, None when nothing was answered.
    status: int | None = None
    #: Free detail: the dialled number, the User-Agent, a ban's length. Never a secret.
    detail: str = ""
    #: Identical refusals folded into this event since the previous one (see EventSettings).
    repeats: int = 0


class _Line(msgspec.Struct, frozen=True):
    time: datetime
    side: str
    source: str
    phone: str
    rule: str
    action: str
    status: int | None
    detail: str
    repeats: int


_encoder = msgspec.json.Encoder()


def encode_line(event: SecurityEvent, clock_offset: float = 0.0) -> bytes:
    """The event as one JSON line (with the trailing newline), time in UTC.

    ``clock_offset`` is added to ``event.time`` to get Unix time.
    """
    line = _Line(
        datetime.fromtimestamp(event.time + clock_offset, tz=UTC),
        event.side,
        event.source,
        event.phone,
        event.rule,
        event.action,
        event.status,
        event.detail,
        event.repeats,
    )
    return _encoder.encode(line) + b"\n"


def counter_name(action: str, rule: str) -> str:
    """The counter an event increments: "<action>.<rule>", e.g. "ban.scan.user-agent"."""
    return f"{action}.{rule}"
