"""JSON views of a running gateway for the admin API, the status page and the metrics.

Each function reads the composition root's public parts (``Gateway.core``, ``.policy``,
``.media``, ``.provider``, ``.tls``, ``.cdr``, ``.observatory``) and returns plain dicts; none of
them changes anything. Times go out as Unix seconds and ISO 8601 UTC strings; the cores' own
clock (``loop.time()``) is converted with the offset between the two clocks.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cdr import DROP_FIELDS, stream_totals
from gateway.media.control import StreamCounters
from gateway.media.controller import MediaError

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["MediaSample", "MediaSampler", "call_views", "certificate_views", "readiness"]

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
    streams: dict[str, StreamCounters]
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

    def __init__(self, gateway: Gateway, *, max_age: float = 0.5) -> None:
        self._gateway = gateway
        self._max_age = max_age
        self._history: deque[MediaSample] = deque(maxlen=64)
        self._lock = asyncio.Lock()
        self._closed = _Closed()
        self._high: dict[str, int] = {}
        gateway.cdr.media_listeners.append(self._media_closed)

    def _media_closed(self, pair: str, streams: dict[str, StreamCounters]) -> None:
        totals = stream_totals(streams.values())
        for name, value in totals.items():
            self._closed.totals[name] += value
        slot = worker_slot(pair, len(self._gateway.media.worker_pids()))
        packets = totals["lan_in_packets"] + totals["wan_in_packets"]
        self._closed.per_worker[slot] = self._closed.per_worker.get(slot, 0) + packets

    async def sample(self) -> MediaSample:
        """The latest sample, taken now unless one younger than ``max_age`` exists."""
        async with self._lock:
            last = self._history[-1] if self._history else None
            if last is not None and time.monotonic() - last.monotonic < self._max_age:
                return last
            sample = await self._take()
            self._history.append(sample)
            return sample

    async def _take(self) -> MediaSample:
        media = self._gateway.media
        pids = media.worker_pids()
        error = None
        try:
            streams = await asyncio.wait_for(media.stats(), 3.0)
        except (MediaError, TimeoutError) as exc:
            streams, error = {}, str(exc) or "media workers did not answer"
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


def call_views(gateway: Gateway, sample: MediaSample | None) -> list[dict[str, Any]]:
    """Every active call: parties, times, suite, encryption and per-direction media counters."""
    now_wall = time.time()
    offset = now_wall - _core_now(gateway)
    views = []
    streams = sample.streams if sample is not None else {}
    for pair in gateway.core.active_calls:
        info = gateway.cdr.call_info(pair.key) or {}
        media = pair.media
        suite = media.chosen_suite() if media is not None else None
        downgrade = bool(media is not None and media.uses_plaintext_downgrade)
        prefix = pair.key + "/"
        mine = [c for k, c in streams.items() if k.startswith(prefix)]
        first = mine[0] if mine else None
        drops = {label: sum(int(getattr(c, n)) for c in mine) for n, label in DROP_FIELDS.items()}
        started = info.get("started") or (pair.started + offset)
        answered = info.get("answered") or (pair.answered + offset if pair.answered else None)
        if suite is not None and not downgrade:
            encryption = "srtp"
        elif downgrade:
            encryption = "plaintext-downgrade"
        else:
            encryption = "pending"  # no answer yet: nothing has crossed the WAN
        views.append(
            {
                "call_id": pair.caller.call_id,
                "pair": pair.key,
                "state": str(pair.state),
                "direction": info.get("direction")
                or ("outbound" if pair.caller_side == "lan" else "inbound"),
                "caller": info.get("caller") or getattr(pair.caller.remote.uri, "user", None),
                "callee": info.get("callee"),
                "phone": info.get("phone"),
                "provider": info.get("provider"),
                "started": iso(started),
                "started_unix": round(started, 3),
                "answered": iso(answered),
                "duration": round(now_wall - answered, 1) if answered else 0.0,
                "suite": suite.value if suite is not None else None,
                "encryption": encryption,
                "encrypted": encryption == "srtp",
                "media": {
                    "streams": len(mine),
                    "phone_to_provider": _direction_view(first, "lan"),
                    "provider_to_phone": _direction_view(first, "wan"),
                    "drops": drops,
                },
            }
        )
    return views


def _core_now(gateway: Gateway) -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


# --------------------------------------------------------------------------- the rest


def registration_views(gateway: Gateway) -> list[dict[str, Any]]:
    """Phones registered through the gateway (never their credentials or routing tokens)."""
    now = _core_now(gateway)
    rows = []
    for b in gateway.core.registrations.all():
        rows.append(
            {
                "user": b.user,
                "aor": b.aor,
                "contact": b.phone_contact,
                "address": "{}:{}".format(*b.phone_peer.address),
                "transport": b.phone_peer.transport,
                "user_agent": b.user_agent,
                "active": b.active(now),
                "expires_in": round(max(0.0, b.expires_at - now), 1) if b.expires_at else None,
            }
        )
    return sorted(rows, key=lambda r: (r["user"], r["address"]))


def ban_views(gateway: Gateway) -> list[dict[str, Any]]:
    now = _core_now(gateway)
    offset = time.time() - now
    return [
        {
            "address": b.address,
            "rule": b.rule,
            "since": iso(b.since + offset),
            "until": iso(b.until + offset),
            "seconds_left": round(max(0.0, b.until - now), 1),
            "offences": b.offences,
        }
        for b in gateway.policy.bans(now)
    ]


def certificate_views(gateway: Gateway) -> list[dict[str, Any]]:
    """The gateway's certificate in service (and its chain) and the provider trust anchors."""
    from gateway.certs.inspect import common_name, spki_pin
    from gateway.certs.status import trust_status

    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    tls = gateway.tls
    identity = tls.identity
    if identity is not None:
        for index, cert in enumerate(identity.chain):
            left = (cert.not_valid_after_utc - now).total_seconds()
            rows.append(
                {
                    "role": "identity" if index == 0 else "identity chain",
                    "file": identity.cert_path,
                    "subject": common_name(cert.subject),
                    "issuer": common_name(cert.issuer),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "seconds_left": round(left),
                    "days_left": int(left // 86400),
                    "pin": spki_pin(cert),
                    "in_service": True,
                    "problems": [],
                }
            )
        if rows:
            rows[0]["reloads"] = tls.reloads
            rows[0]["last_error"] = tls.last_error
    trust = gateway.config.wan.trust
    for row in trust_status(trust.ca_bundle, trust.spki_pins, now=now):
        if row.role != "provider trust" or row.days_left is None:
            continue
        try:
            not_after = dt.datetime.fromisoformat(row.not_after).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        rows.append(
            {
                "role": row.role,
                "file": row.file,
                "subject": row.subject,
                "issuer": row.issuer,
                "not_after": not_after.isoformat(),
                "seconds_left": round((not_after - now).total_seconds()),
                "days_left": row.days_left,
                "pin": row.pin,
                "in_service": True,
                "problems": list(row.problems),
            }
        )
    return rows


def provider_view(gateway: Gateway) -> dict[str, Any]:
    link = gateway.provider
    up, reason = gateway.wan_state
    return {
        "up": bool(link is not None and link.up and up),
        "state": reason,
        "host": gateway.config.wan.provider_host,
        "port": gateway.config.wan.provider_port,
        "tls_version": link.tls_version if link is not None else None,
        "tls_cipher": link.tls_cipher if link is not None else None,
        "peer_certificate_subject": link.peer_certificate_subject if link is not None else None,
        "connects": link.connects if link is not None else 0,
        "plaintext_signalling": gateway.config.wan.insecure_plaintext_signalling,
    }


def readiness(gateway: Gateway) -> dict[str, Any]:
    """Ready = taking calls, the provider reachable over verified TLS, every media worker up."""
    pids = gateway.media.worker_pids()
    provider = provider_view(gateway)
    checks = {
        "accepting_calls": bool(gateway.core.accepting_calls),
        "provider_connected": provider["up"],
        "media_workers_up": bool(pids) and all(pid is not None for pid in pids),
        "certificate_loaded": gateway.tls.identity is not None
        or gateway.config.wan.identity is None,
    }
    return {"ready": all(checks.values()), "checks": checks}
