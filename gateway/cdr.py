"""Call detail records: one JSON line per finished call, in a size-rotated file.

A record says who called whom (the extensions as the phone and the provider named them), where
(direction, the phone's and the provider's signalling addresses), when (start, answer, end in
UTC), for how long, with which SRTP suite, how many packets crossed each way, what the media
path dropped and why, and why the call ended. Calls refused before they started (policy, no
acceptable crypto) get a record too, so toll-fraud attempts show up beside the calls.

:class:`CallRecorder` is fed by the composition root, with no I/O of its own until a record is
complete:

- ``on_event`` with every typed call event (:mod:`gateway.sip.call_events`: ``CallStarted``,
  ``CallAnswered``, ``CallRefused``, ``CallFailed``, ``CallCancelled``, ``CallEnded`` …);
- ``expect_media`` when the core closes a call's media (``CloseCall``), and ``media_closed``
  with that call's last stream counters, queried just before the worker forgets them;
- ``settle`` once per batch of core actions, with the keys of the calls still active: a call
  that is no longer active is finished, and is written as soon as its media counters are in.

:class:`RecordFile` appends lines and rotates ``calls.jsonl`` → ``calls.jsonl.1`` … ``.N``
(``.1`` newest) past a size limit. Records never hold keys, passwords or credentials: only what
the call events and media counters carry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.media.control import StreamCounters
from gateway.operations import DROP_FIELDS, stream_totals
from gateway.sip.call_events import (
    TERMINAL_EVENTS,
    AckMissing,
    BadResponse,
    CallAnswered,
    CallCancelled,
    CallEnded,
    CallEvent,
    CallFailed,
    CallKeyed,
    CallRefused,
    CallStarted,
    MediaEnded,
    PhoneRegistered,
    PlaintextDowngrade,
)

__all__ = ["CallFacts", "CallRecorder", "RecordFile", "read_records"]

log = logging.getLogger("gateway.cdr")


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the records know of an active call, for the operator's view of it."""

    caller: str | None
    callee: str | None
    #: "outbound" (a phone called out) or "inbound".
    direction: str
    #: Signalling addresses ("host:port") of the phone's and the provider's legs.
    phone: str | None
    provider: str | None
    #: Unix times.
    started: float
    answered: float | None


@dataclass
class _Pending:
    """A call between its first event and its record."""

    pair: str
    call_id: str
    started: float
    caller: str | None
    callee: str | None
    direction: str
    phone: str | None = None
    provider: str | None = None
    answered: float | None = None
    suite: str | None = None
    #: "sdes" or "dtls" (how the WAN leg's SRTP is keyed), None: no secured media.
    keying: str | None = None
    outcome: str = "unanswered"
    reason: str = ""
    status: int | None = None
    finished: float | None = None
    media: dict[str, StreamCounters] | None = None
    #: A terminal event came; the record waits for the core to let the call go.
    ended: bool = False


class RecordFile:
    """An append-only JSON-lines file rotated by size, ``keep`` old files kept."""

    def __init__(self, path: Path, *, max_bytes: int = 10_000_000, keep: int = 10) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep

    def append(self, record: dict[str, Any]) -> None:
        """Write one line; rotate first when the file would grow past ``max_bytes``."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        # O_APPEND: one write per line, so a concurrent reader never sees half a record.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        oldest = self._numbered(self.keep)
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                self._numbered(n).rename(self._numbered(n + 1))
        self.path.rename(self._numbered(1))

    def _numbered(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def files(self) -> list[Path]:
        """The current file and the rotated ones, newest first (only those that exist)."""
        candidates = [self.path, *(self._numbered(n) for n in range(1, self.keep + 1))]
        return [p for p in candidates if p.exists()]


def read_records(
    record_file: RecordFile,
    *,
    limit: int = 100,
    match: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` records (newest first) that ``match``; unreadable lines skipped."""
    found: list[dict[str, Any]] = []
    for path in record_file.files():
        for record in _lines_newest_first(path):
            if match is None or match(record):
                found.append(record)
                if len(found) >= limit:
                    return found
    return found


def _lines_newest_first(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return
    for raw in reversed(lines):
        try:
            record = json.loads(raw)
        except ValueError:
            continue  # a torn line after a crash must not hide the rest
        if isinstance(record, dict):
            yield record


class CallRecorder:
    """Turns call events and media counters into one record per finished call."""

    def __init__(
        self,
        record_file: RecordFile | None,
        *,
        locate: Callable[[str], tuple[str | None, str | None]] | None = None,
    ) -> None:
        """``locate(pair_key)`` says where a call runs when it starts: the phone's and the
        provider's signalling addresses ("host:port", None when unknown)."""
        self.file = record_file
        self._locate = locate
        self._calls: dict[str, _Pending] = {}
        self._by_call_id: dict[str, str] = {}
        self._awaiting_media: set[str] = set()
        self._dirty = False
        #: Called with (pair key, streams) for every call whose media closed.
        self.media_listeners: list[Callable[[str, dict[str, StreamCounters]], None]] = []
        #: Called with every finished record (the admin surface keeps the recent ones).
        self.record_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.written = 0
        self.write_errors = 0

    # -- inputs --------------------------------------------------------------------------

    def on_event(self, event: CallEvent, wall: float) -> None:
        """One call event at Unix time ``wall``."""
        match event:
            case CallStarted():
                self._started(event, wall)
                return
            case PhoneRegistered() | PlaintextDowngrade():
                return  # not about a call's outcome
        pending = self._pending_for(event)
        if pending is None:
            if isinstance(event, CallRefused):
                # Refused before it became a call (policy, no acceptable crypto in the offer).
                self._write(self._refused_record(event, wall))
            return
        if isinstance(event, CallAnswered):
            pending.answered = wall
            pending.suite = event.suite or pending.suite  # a DTLS handshake may be done already
            pending.keying = event.keying
            pending.outcome = "answered"
            return
        if isinstance(event, CallKeyed):  # the DTLS-SRTP handshake's suite
            pending.suite, pending.keying = event.suite, event.keying
            return
        if not isinstance(event, TERMINAL_EVENTS):
            return
        self._dirty = True
        pending.ended = True
        match event:
            case CallEnded(reason=reason):
                pending.reason = reason
                pending.outcome = "completed" if pending.answered is not None else "unanswered"
            case CallFailed(status=status):
                pending.status = status
                pending.outcome = "failed"
                pending.reason = pending.reason or f"callee answered {status}"
            case CallRefused():
                pending.status = event.status or pending.status
                pending.outcome = "refused"
                pending.reason = event.reason or event.rule or "refused"
            case CallCancelled(by=by):
                pending.outcome = "cancelled"
                pending.reason = f"cancelled by {by}"
            case MediaEnded(reason=reason):
                pending.reason = pending.reason or reason
            case AckMissing() | BadResponse():
                pending.reason = pending.reason or event.kind

    def _started(self, event: CallStarted, wall: float) -> None:
        if event.method != "INVITE":
            return  # SUBSCRIBE, REFER dialogs and the like are not calls
        call = _Pending(
            event.pair,
            event.call_id,
            wall,
            caller=event.caller,
            callee=event.callee,
            direction="outbound" if event.from_side == "lan" else "inbound",
        )
        if self._locate is not None:
            with contextlib.suppress(Exception):  # a record without addresses is still one
                call.phone, call.provider = self._locate(event.pair)
        self._calls[event.pair] = call
        self._by_call_id[event.call_id] = event.pair

    def _pending_for(self, event: CallEvent) -> _Pending | None:
        """The call an event is about: by the core's key, else by the caller's Call-ID."""
        key: str | None
        match event:
            case (
                CallAnswered(pair=key)
                | CallKeyed(pair=key)
                | CallFailed(pair=key)
                | CallCancelled(pair=key)
                | CallEnded(pair=key)
                | MediaEnded(pair=key)
                | AckMissing(pair=key)
                | CallRefused(pair=str() as key)
            ):
                pass
            case _:
                key = self._by_call_id.get(event.call_id)
        return self._calls.get(key) if key is not None else None

    def expect_media(self, pair: str) -> None:
        """The core closed this call's media: its counters will follow (``media_closed``)."""
        if pair in self._calls:
            self._awaiting_media.add(pair)

    def media_closed(
        self, pair: str, streams: dict[str, StreamCounters] | None, wall: float
    ) -> None:
        """A call's last stream counters (None when the worker could not say)."""
        if streams:
            for listener in self.media_listeners:
                listener(pair, streams)
        pending = self._calls.get(pair)
        if pending is not None:
            pending.media = streams
        self._awaiting_media.discard(pair)
        if pending is not None and pending.finished is not None:
            self._finish(pending)

    def settle(self, active: Callable[[], Iterable[str]], wall: float) -> None:
        """After a batch of core actions: calls no longer ``active`` are finished."""
        if not self._dirty:
            return
        self._dirty = False
        still = set(active())
        for pair, pending in list(self._calls.items()):
            if pair in still:
                # Ended while still filed (a cancelled call waits for the ACK of its 487):
                # look again at the next batch, which may bring no event of its own.
                self._dirty = self._dirty or pending.ended
                continue
            if pending.finished is not None:
                continue
            pending.finished = wall
            if pair not in self._awaiting_media:
                self._finish(pending)

    def flush(self, wall: float) -> None:
        """At shutdown: write whatever is finished, with or without its media counters."""
        for pending in list(self._calls.values()):
            if pending.finished is not None:
                self._finish(pending)

    @property
    def pending(self) -> int:
        return len(self._calls)

    def call_info(self, pair: str) -> CallFacts | None:
        """What is known of an active call (parties, addresses, Unix times)."""
        p = self._calls.get(pair)
        if p is None:
            return None
        return CallFacts(
            p.caller, p.callee, p.direction, p.phone, p.provider, p.started, p.answered
        )

    # -- records -------------------------------------------------------------------------

    def _finish(self, pending: _Pending) -> None:
        self._calls.pop(pending.pair, None)
        self._awaiting_media.discard(pending.pair)
        if self._by_call_id.get(pending.call_id) == pending.pair:
            del self._by_call_id[pending.call_id]
        self._write(self._record(pending))

    def _record(self, p: _Pending) -> dict[str, Any]:
        ended = p.finished if p.finished is not None else p.started
        record: dict[str, Any] = {
            "call_id": p.call_id,
            "pair": p.pair,
            "direction": p.direction,
            "caller": p.caller,
            "callee": p.callee,
            "phone": p.phone,
            "provider": p.provider,
            "started": _iso(p.started),
            "answered": _iso(p.answered),
            "ended": _iso(ended),
            "duration": round(ended - p.answered, 3) if p.answered is not None else 0.0,
            "setup_seconds": round(p.answered - p.started, 3) if p.answered is not None else None,
            "suite": p.suite,
            "keying": p.keying,
            "outcome": p.outcome,
            "status": p.status,
            "end_reason": p.reason,
        }
        streams = list((p.media or {}).values())
        totals = stream_totals(streams)
        record["packets"] = {
            "phone_to_provider": {
                "received": totals["lan_in_packets"],
                "sent": totals["wan_out_packets"],
                "bytes": totals["lan_in_bytes"],
            },
            "provider_to_phone": {
                "received": totals["wan_in_packets"],
                "sent": totals["lan_out_packets"],
                "bytes": totals["wan_in_bytes"],
            },
        }
        record["drops"] = {label: totals[name] for name, label in DROP_FIELDS.items()}
        if streams:
            record["quality"] = {
                "lost_phone_to_gateway": sum(s.lost_lan_in for s in streams),
                "lost_provider_to_gateway": sum(s.lost_wan_in for s in streams),
                "jitter_ms_from_phone": round(max(s.jitter_ms_lan_in for s in streams), 3),
                "jitter_ms_from_provider": round(max(s.jitter_ms_wan_in for s in streams), 3),
            }
        record["media_counters"] = p.media is not None
        return record

    def _refused_record(self, event: CallRefused, wall: float) -> dict[str, Any]:
        return {
            "call_id": event.call_id,
            "pair": None,
            "direction": None,
            "caller": event.caller,
            "callee": event.callee,
            "started": _iso(wall),
            "answered": None,
            "ended": _iso(wall),
            "duration": 0.0,
            "suite": None,
            "outcome": "refused",
            "status": event.status or None,
            "end_reason": event.reason or event.rule or "refused",
            "packets": None,
            "drops": None,
            "media_counters": False,
        }

    def _write(self, record: dict[str, Any]) -> None:
        for listener in self.record_listeners:
            listener(record)
        if self.file is None:
            return
        try:
            self.file.append(record)
            self.written += 1
        except OSError as exc:
            self.write_errors += 1
            log.error("cannot write call record to %s: %s", self.file.path, exc)
