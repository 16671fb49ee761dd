"""JSON views of a running gateway for the admin API, the status page and the metrics.

Each function reads the gateway's :class:`~gateway.operations.StatusView` (frozen records in
Unix time) and returns plain dicts; none of them changes anything. Times go out as Unix seconds
and ISO 8601 UTC strings.

:class:`MediaSampler` asks the media workers for their counters at most every half second,
however many pages and scrapers ask, and keeps a short history to turn totals into rates.
Totals include the streams of calls already closed (fed from the call records' media hook), so
relayed-packet counters never go backwards when a call ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.media.control import StreamCounters
from gateway.operations import DROP_FIELDS, LadderCall, StatusView, stream_totals

__all__ = [
    "MediaSample",
    "MediaSampler",
    "ban_views",
    "call_views",
    "certificate_views",
    "ladder_list",
    "ladder_view",
    "media_worker_views",
    "phone_views",
    "provider_view",
    "readiness",
    "registration_views",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Rates are taken over at least this many seconds of history.
_RATE_WINDOW = 1.0


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return dt.datetime.fromtimestamp(wall, tz=dt.UTC).isoformat(timespec="seconds")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process from /proc (Linux), None when unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def worker_slot(call_key: str, workers: int) -> int:
    """The media worker slot of a call: the controller's documented CRC-32 of the call key."""
    return zlib.crc32(call_key.encode()) % max(1, workers)


@dataclass
class MediaSample:
    """One look at the media workers."""

    wall: float
    monotonic: float
    streams: Mapping[str, StreamCounters]
    #: Summed counters (StreamCounters field -> n), closed calls included.
    totals: dict[str, int]
    #: Per worker slot: packets received so far (closed calls included), CPU seconds, pid.
    worker_packets: list[int]
    worker_cpu: list[float | None]
    worker_pids: list[int | None]
    error: str | None = None


@dataclass
class _Closed:
    totals: dict[str, int] = field(default_factory=lambda: stream_totals(()))
    per_worker: dict[int, int] = field(default_factory=dict)


class MediaSampler:
    """Cached, rate-aware view of the media workers' counters."""

    def __init__(self, status: StatusView, *, max_age: float = 0.5) -> None:
        self._status = status
        self._max_age = max_age
        self._history: deque[MediaSample] = deque(maxlen=64)
        self._lock = asyncio.Lock()
        self._closed = _Closed()
        self._high: dict[str, int] = {}
        status.on_media_closed(self._media_closed)

    def _media_closed(self, pair: str, streams: Mapping[str, StreamCounters]) -> None:
        totals = stream_totals(streams.values())
        for name, value in totals.items():
            self._closed.totals[name] += value
        slot = worker_slot(pair, len(self._status.media_workers()))
        packets = totals["lan_in_packets"] + totals["wan_in_packets"]
        self._closed.per_worker[slot] = self._closed.per_worker.get(slot, 0) + packets

    async def sample(self) -> MediaSample:
        """The latest sample, taken now unless one younger than ``max_age`` exists."""
        async with self._lock:
            last = self._history[-1] if self._history else None
            if last is not None and time.monotonic() - last.monotonic < self._max_age:
                return last
            sample = await self._take()
            if last is not None:
                # Only the newest sample's per-stream counters are read (call views); the
                # history is for rates. Keeping every sample's streams held 64 copies of
                # every call's counters (soak: megabytes that grew with the scrape count).
                self._history[-1] = replace(last, streams={})
            self._history.append(sample)
            return sample

    async def _take(self) -> MediaSample:
        pids = self._status.media_workers()
        reading = await self._status.media_streams()
        streams, error = reading.streams, reading.error
        live = stream_totals(streams.values())
        totals = {}
        for name, value in live.items():
            # Never backwards: a call counted live and, a moment later, as closed is the
            # only way to over-count, and its next sample only confirms the higher figure.
            total = max(self._high.get(name, 0), value + self._closed.totals[name])
            self._high[name] = totals[name] = total
        per_worker = [self._closed.per_worker.get(slot, 0) for slot in range(len(pids))]
        for key, counters in streams.items():
            slot = worker_slot(key.split("/", 1)[0], len(pids))
            per_worker[slot] += counters.lan_in_packets + counters.wan_in_packets
        cpu = [process_cpu_seconds(pid) if pid is not None else None for pid in pids]
        return MediaSample(
            time.time(), time.monotonic(), streams, totals, per_worker, cpu, pids, error
        )

    def rates(self) -> dict[str, Any]:
        """Packets per second overall and per worker, CPU share per worker, from history."""
        if len(self._history) < 2:
            return {"packets_per_second": 0.0, "workers": []}
        last = self._history[-1]
        base = None
        for sample in reversed(self._history):
            if last.monotonic - sample.monotonic >= _RATE_WINDOW:
                base = sample
                break
        if base is None:
            base = self._history[0]
        span = last.monotonic - base.monotonic
        if span <= 0:
            return {"packets_per_second": 0.0, "workers": []}
        received = ("lan_in_packets", "wan_in_packets")
        pps = sum(last.totals[n] - base.totals[n] for n in received) / span
        workers = []
        for slot, pid in enumerate(last.worker_pids):
            packets = cpu = None
            if slot < len(base.worker_packets):
                packets = max(0, last.worker_packets[slot] - base.worker_packets[slot]) / span
            now_cpu = last.worker_cpu[slot]
            then_cpu = base.worker_cpu[slot] if slot < len(base.worker_cpu) else None
            if now_cpu is not None and then_cpu is not None and base.worker_pids[slot] == pid:
                cpu = max(0.0, now_cpu - then_cpu) / span
            workers.append(
                {
                    "worker": slot,
                    "pid": pid,
                    "up": pid is not None,
                    "packets_per_second": round(packets or 0.0, 1),
                    "cpu_ratio": round(cpu, 4) if cpu is not None else None,
                    "cpu_seconds": now_cpu,
                }
            )
        return {"packets_per_second": round(pps, 1), "workers": workers}


# --------------------------------------------------------------------------- calls


def _direction_view(c: StreamCounters | None, inbound: str) -> dict[str, Any]:
    """Counters of one direction: ``inbound`` is "lan" (phone→provider) or "wan"."""
    if c is None:
        return {}
    if inbound == "lan":
        return {
            "packets_in": c.lan_in_packets,
            "packets_out": c.wan_out_packets,
            "bytes_in": c.lan_in_bytes,
            "lost": c.lost_lan_in,
            "jitter_ms": round(c.jitter_ms_lan_in, 2),
            "far_end_reported_lost": c.provider_reported_lost,
            "far_end_reported_jitter_ms": round(c.provider_reported_jitter_ms, 2),
        }
    return {
        "packets_in": c.wan_in_packets,
        "packets_out": c.lan_out_packets,
        "bytes_in": c.wan_in_bytes,
        "lost": c.lost_wan_in,
        "jitter_ms": round(c.jitter_ms_wan_in, 2),
        "far_end_reported_lost": c.phone_reported_lost,
        "far_end_reported_jitter_ms": round(c.phone_reported_jitter_ms, 2),
    }


def call_views(status: StatusView, sample: MediaSample | None) -> list[dict[str, Any]]:
    """Every active call: parties, times, suite, encryption and per-direction media counters."""
    now_wall = time.time()
    views = []
    streams = sample.streams if sample is not None else {}
    for call in status.calls():
        prefix = call.pair + "/"
        mine = [c for k, c in streams.items() if k.startswith(prefix)]
        first = mine[0] if mine else None
        drops = {label: sum(int(getattr(c, n)) for c in mine) for n, label in DROP_FIELDS.items()}
        views.append(
            {
                "call_id": call.call_id,
                "pair": call.pair,
                "state": call.state,
                "direction": call.direction,
                "caller": call.caller,
                "callee": call.callee,
                "phone": call.phone,
                "provider": call.provider,
                "started": iso(call.started),
                "started_unix": round(call.started, 3),
                "answered": iso(call.answered),
                "duration": round(now_wall - call.answered, 1) if call.answered else 0.0,
                "suite": call.suite,
                "keying": call.keying,
                "encryption": call.encryption,
                "encrypted": call.encryption == "srtp",
                "media": {
                    "streams": len(mine),
                    "phone_to_provider": _direction_view(first, "lan"),
                    "provider_to_phone": _direction_view(first, "wan"),
                    "drops": drops,
                },
            }
        )
    return views


# --------------------------------------------------------------------------- SIP ladders


def _ladder_call(call: LadderCall) -> dict[str, Any]:
    direction = {"lan": "outbound", "wan": "inbound"}.get(call.from_side or "")
    return {
        "pair": call.pair,
        "call_ids": {"lan": call.lan_call_id, "wan": call.wan_call_id},
        "caller_call_id": call.caller_call_id,
        "callee_call_id": call.callee_call_id,
        "direction": direction,
        "method": call.method,
        "caller": call.caller,
        "callee": call.callee,
        "started": iso(call.started),
        "started_unix": round(call.started, 3),
        "ended": iso(call.ended),
        "outcome": call.outcome,
        "messages": call.messages,
        "dropped": call.dropped,
    }


def ladder_list(status: StatusView) -> list[dict[str, Any]]:
    """The calls whose SIP ladders are kept, newest first (no messages)."""
    return [_ladder_call(call) for call in status.ladder_calls()]


def ladder_view(status: StatusView, ref: str) -> dict[str, Any] | None:
    """A call's SIP ladder by its key or either Call-ID: both legs' messages in time order,
    already redacted by the gateway (no credentials, nonces or SDES keys)."""
    found = status.call_ladder(ref)
    if found is None:
        return None
    return {
        **_ladder_call(found.call),
        "messages": [
            {
                "time": dt.datetime.fromtimestamp(m.time, tz=dt.UTC).isoformat(
                    timespec="milliseconds"
                ),
                "time_unix": round(m.time, 3),
                "side": m.side,
                "direction": m.direction,
                "transport": m.transport,
                "peer": m.peer,
                "call_id": m.call_id,
                "first_line": m.first_line,
                "headers": [{"name": name, "value": value} for name, value in m.headers],
                "text": m.text,
                "truncated": m.truncated,
            }
            for m in found.messages
        ],
        "kept": found.call.messages,
    }


# --------------------------------------------------------------------------- the rest


def registration_views(status: StatusView) -> list[dict[str, Any]]:
    """Phones registered through the gateway (never their credentials or routing tokens)."""
    return [
        {
            "user": r.user,
            "aor": r.aor,
            "contact": r.contact,
            "address": "{}:{}".format(*r.address),
            "transport": r.transport,
            "user_agent": r.user_agent,
            "active": r.active,
            "expires_in": r.expires_in,
        }
        for r in status.registrations()
    ]


def phone_views(status: StatusView) -> list[dict[str, Any]]:
    """The phone inventory: vendor, model and firmware from each phone's User-Agent, where and
    when it was seen, and whether its firmware is below [inventory] minimum_firmware."""
    return [
        {
            "phone": p.key,
            "user": p.user,
            "address": p.address,
            "transport": p.transport,
            "user_agent": p.user_agent,
            "vendor": p.vendor,
            "model": p.model,
            "firmware": p.firmware,
            "first_seen": iso(p.first_seen),
            "last_seen": iso(p.last_seen),
            "last_seen_unix": round(p.last_seen, 3),
            "registered": p.registered,
            "minimum_firmware": p.minimum_firmware,
            "outdated": p.outdated,
        }
        for p in status.phones()
    ]


def ban_views(status: StatusView) -> list[dict[str, Any]]:
    return [
        {
            "address": b.address,
            "rule": b.rule,
            "since": iso(b.since),
            "until": iso(b.until),
            "seconds_left": b.seconds_left,
            "offences": b.offences,
        }
        for b in status.bans()
    ]


def certificate_views(status: StatusView) -> list[dict[str, Any]]:
    """The gateway's certificate in service (and its chain) and the provider trust anchors."""
    tls = status.tls()
    rows: list[dict[str, Any]] = []
    for cert in tls.certificates:
        rows.append(
            {
                "role": cert.role,
                "file": cert.file,
                "subject": cert.subject,
                "issuer": cert.issuer,
                "not_after": cert.not_after.isoformat(),
                "seconds_left": cert.seconds_left,
                "days_left": cert.days_left,
                "pin": cert.pin,
                "in_service": True,
                "problems": list(cert.problems),
            }
        )
    if rows and rows[0]["role"] == "identity":
        rows[0]["reloads"] = tls.reloads
        rows[0]["last_error"] = tls.last_error
    return rows


def provider_view(status: StatusView) -> dict[str, Any]:
    p = status.provider()
    return {
        "up": p.up,
        "state": p.state,
        "host": p.host,
        "port": p.port,
        "tls_version": p.tls_version,
        "tls_cipher": p.tls_cipher,
        "peer_certificate_subject": p.peer_certificate_subject,
        "connects": p.connects,
        "plaintext_signalling": p.plaintext_signalling,
        "trunks": [
            {"name": t.name, "host": t.host, "port": t.port, "up": t.up, "state": t.state}
            for t in status.trunks()
        ],
    }


def media_worker_views(status: StatusView) -> list[dict[str, Any]]:
    """Each media worker slot: pid, state (running / restarting / failed), restarts and the
    last restart's calls restored and lost; [] from a view without them (test doubles)."""
    states = getattr(status, "media_worker_states", None)
    if not callable(states):
        return []
    return [
        {
            "slot": w.slot,
            "pid": w.pid,
            "state": w.state,
            "restarts": w.restarts,
            "last_restored": w.last_restored,
            "last_lost": w.last_lost,
            "failed": w.failed,
        }
        for w in states()
    ]


def readiness(status: StatusView) -> dict[str, Any]:
    """Ready = taking calls, the provider reachable over verified TLS, every media worker up."""
    pids = status.media_workers()
    tls = status.tls()
    checks = {
        "accepting_calls": status.accepting_calls(),
        "provider_connected": status.provider().up,
        "media_workers_up": bool(pids) and all(pid is not None for pid in pids),
        "certificate_loaded": tls.identity_loaded or not tls.identity_configured,
    }
    return {"ready": all(checks.values()), "checks": checks}
