"""``/metrics``: the gateway's state in the Prometheus text exposition format (version 0.0.4).

Names follow Prometheus conventions: the ``gateway_`` prefix, ``_total`` on counters, base
units in the name (``_seconds``, ``_bytes``), labels of small fixed sets only (call state, drop
reason, direction, worker slot, policy rule). Nothing secret is exported: no keys, tokens, phone
passwords, and no per-call labels (Call-IDs would make every call a new series).

The exposition is written by hand: a few dozen families do not justify a client library, and
values are computed at scrape time from the gateway's status view and the observatory (no
registry to keep in step).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from gateway.admin.observe import Observatory
from gateway.admin.views import MediaSample, MediaSampler
from gateway.operations import DROP_FIELDS, LIMIT_COUNTERS, StatusView

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Collects metric families and renders them, HELP and TYPE once per family."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Labels, float]],
    ) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                self._lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self._lines.append(f"{name} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


async def render_metrics(
    status: StatusView, observatory: Observatory, sampler: MediaSampler
) -> str:
    """The whole exposition, computed now."""
    sample = await sampler.sample()
    out = Exposition()
    out.one("gateway_up", "gauge", "1 while the gateway process serves.", 1)
    out.one(
        "gateway_start_time_seconds", "gauge", "Unix time the gateway started.", status.started_at
    )
    out.one(
        "gateway_accepting_calls",
        "gauge",
        "1 while new calls are taken, 0 while draining for a stop.",
        1 if status.accepting_calls() else 0,
    )
    _calls(out, status, observatory)
    out.family(
        "gateway_core_state",
        "gauge",
        "State held by the signalling core now, by kind (pairs, transactions, timers, ports).",
        [({"kind": k}, v) for k, v in sorted(status.core_sizes().items())],
    )
    _policy(out, status)
    _phones(out, status)
    _media(out, sample, sampler)
    _media_loop(out, status)
    _media_restarts(out, status)
    _ha(out, status)
    _tls(out, status)
    return out.render()


def _phones(out: Exposition, status: StatusView) -> None:
    """The phone inventory: bounded by its own size, and scanners never enter it."""
    phones = status.phones()
    models = Counter((p.vendor, p.model or "") for p in phones)
    out.family(
        "gateway_phones",
        "gauge",
        "Phones in the inventory (seen registering or calling), by vendor and model.",
        [({"vendor": v, "model": m}, n) for (v, m), n in sorted(models.items())],
    )
    out.one(
        "gateway_phones_outdated",
        "gauge",
        "Phones whose firmware is below [inventory] minimum_firmware for their model.",
        sum(1 for p in phones if p.outdated),
    )


def _calls(out: Exposition, status: StatusView, seen: Observatory) -> None:
    calls = status.calls()
    states = Counter(c.state for c in calls)
    out.family(
        "gateway_calls",
        "gauge",
        "Calls through the gateway now, by dialog state.",
        [({"state": s}, states.get(s, 0)) for s in ("calling", "early", "confirmed")],
    )
    encrypted = sum(1 for c in calls if c.encryption == "srtp")
    out.one("gateway_calls_encrypted", "gauge", "Active calls with SRTP agreed.", encrypted)
    out.one("gateway_call_setups_total", "counter", "INVITE dialogs started.", seen.call_setups)
    out.one("gateway_calls_answered_total", "counter", "Calls answered.", seen.calls_answered)
    out.family(
        "gateway_call_refusals_total",
        "counter",
        "Calls refused, by reason (a policy rule, or media: no acceptable crypto).",
        [({"reason": r}, n) for r, n in sorted(seen.call_refusals.items())],
    )
    out.family(
        "gateway_calls_failed_total",
        "counter",
        "Calls the callee refused, by status class.",
        [({"status": s}, n) for s, n in sorted(seen.calls_failed.items())],
    )
    out.family(
        "gateway_calls_ended_total",
        "counter",
        "Answered calls ended, by reason.",
        [({"reason": r}, n) for r, n in sorted(seen.calls_ended.items())],
    )
    out.one(
        "gateway_call_downgrades_total",
        "counter",
        "Calls under the operator's plaintext-media downgrade.",
        seen.downgrades,
    )
    out.one(
        "gateway_registrations",
        "gauge",
        "Phone contacts registered through the gateway.",
        sum(1 for r in status.registrations() if r.active),
    )
    out.family(
        "gateway_sip_events_total",
        "counter",
        "Signalling events counted by the core (malformed, rejected, refusals …).",
        [({"event": k}, v) for k, v in sorted(status.sip_counters().items())],
    )
    hits = status.sip_counters()
    out.family(
        "gateway_limit_hits_total",
        "counter",
        "Times each [limits] limit was hit (a connection refused or closed, a message or "
        "request refused).",
        [({"limit": name.removeprefix("limit_")}, hits.get(name, 0)) for name in LIMIT_COUNTERS],
    )
    records = status.call_record_stats()
    out.one(
        "gateway_call_records_written_total",
        "counter",
        "Call detail records written.",
        records.written,
    )
    out.one(
        "gateway_call_record_errors_total",
        "counter",
        "Call detail records that could not be written.",
        records.write_errors,
    )


def _policy(out: Exposition, status: StatusView) -> None:
    counters = status.policy_counters()
    refusals: list[tuple[Labels, float]] = []
    bans: list[tuple[Labels, float]] = []
    others: list[tuple[Labels, float]] = []
    for key, value in sorted(counters.items()):
        action, _, rule = key.partition(".")
        if action in ("drop", "reject"):
            refusals.append(({"action": action, "reason": rule}, value))
        elif action == "ban":
            bans.append(({"reason": rule}, value))
        else:
            others.append(({"action": action, "rule": rule}, value))
    out.family(
        "gateway_refusals_total",
        "counter",
        "Requests refused by policy (allowlists, floods, scanners, dial plan, caps), by reason.",
        refusals,
    )
    out.family("gateway_bans_total", "counter", "Source bans imposed, by reason.", bans)
    out.family(
        "gateway_policy_events_total",
        "counter",
        "Other policy events: lifts, expiries, spike locks, emergency calls.",
        others,
    )
    out.one("gateway_bans", "gauge", "Sources banned now.", len(status.bans()))


def _media(out: Exposition, sample: MediaSample, sampler: MediaSampler) -> None:
    t = sample.totals
    out.family(
        "gateway_media_packets_total",
        "counter",
        "RTP/RTCP packets: received from each side (in) and relayed to each side (out).",
        [
            ({"side": "lan", "direction": "in"}, t["lan_in_packets"]),
            ({"side": "wan", "direction": "out"}, t["wan_out_packets"]),
            ({"side": "wan", "direction": "in"}, t["wan_in_packets"]),
            ({"side": "lan", "direction": "out"}, t["lan_out_packets"]),
        ],
    )
    out.family(
        "gateway_media_bytes_total",
        "counter",
        "Bytes received on the media ports, by side.",
        [
            ({"side": "lan"}, t["lan_in_bytes"]),
            ({"side": "wan"}, t["wan_in_bytes"]),
        ],
    )
    out.family(
        "gateway_media_drops_total",
        "counter",
        "Media packets dropped, by reason (auth: SRTP authentication failed; replay; "
        "wrong_source: not the signalled peer; no_session: no keys or peer yet; "
        "plain_rtcp; malformed).",
        [({"reason": label}, t[name]) for name, label in DROP_FIELDS.items()],
    )
    out.one("gateway_media_streams", "gauge", "Media streams relayed now.", len(sample.streams))
    rates = sampler.rates()
    workers = rates["workers"]
    out.family(
        "gateway_media_worker_up",
        "gauge",
        "1 when the media worker process of a slot runs.",
        [({"worker": str(slot)}, 1 if pid else 0) for slot, pid in enumerate(sample.worker_pids)],
    )
    out.family(
        "gateway_media_worker_packets_per_second",
        "gauge",
        "Packets received per second by each media worker (over the last seconds).",
        [({"worker": str(w["worker"])}, w["packets_per_second"]) for w in workers],
    )
    out.family(
        "gateway_media_worker_cpu_seconds_total",
        "counter",
        "CPU time used by each media worker process (since it started).",
        [
            ({"worker": str(slot)}, cpu)
            for slot, cpu in enumerate(sample.worker_cpu)
            if cpu is not None
        ],
    )
    out.family(
        "gateway_media_worker_cpu_ratio",
        "gauge",
        "Share of one core used by each media worker (over the last seconds).",
        [
            ({"worker": str(w["worker"])}, w["cpu_ratio"])
            for w in workers
            if w["cpu_ratio"] is not None
        ],
    )


def _media_restarts(out: Exposition, status: StatusView) -> None:
    """Media worker crash recovery (issue 14): restarts per slot, calls carried over."""
    states = getattr(status, "media_worker_states", None)
    restored = getattr(status, "media_calls_restored", None)
    if not callable(states) or not callable(restored):
        return  # a view without them (test doubles)
    out.family(
        "gateway_media_worker_restarts_total",
        "counter",
        "Times the media worker of a slot died and was restarted with its calls.",
        [({"worker": str(w.slot)}, w.restarts) for w in states()],
    )
    out.family(
        "gateway_media_worker_failed",
        "gauge",
        "1 when a slot's worker died in a loop and is no longer restarted.",
        [({"worker": str(w.slot)}, 1 if w.state == "failed" else 0) for w in states()],
    )
    out.one(
        "gateway_media_calls_restored_total",
        "counter",
        "Calls whose streams were re-opened on a restarted media worker.",
        restored(),
    )


def _ha(out: Exposition, status: StatusView) -> None:
    """One of an active/standby pair (gateway/ha/): role, its changes, replication lag."""
    facts = getattr(status, "ha_facts", None)
    ha = facts() if callable(facts) else None
    if ha is None:
        return  # a single box
    roles = ("starting", "standby", "promoting", "active", "fenced")
    out.family(
        "gateway_ha_role",
        "gauge",
        "1 for this node's current role in its active/standby pair.",
        [({"role": r}, 1 if ha["role"] == r else 0) for r in roles],
    )
    out.one(
        "gateway_ha_role_changes_total",
        "counter",
        "Role changes of this node since it started (promotions, demotions, fencing).",
        ha["changes"],
    )
    out.family(
        "gateway_ha_replication_lag_seconds",
        "gauge",
        "Standby: age of the newest replica write seen; active: age of the oldest change "
        "not yet written to Redis (no sample before the first).",
        [] if ha["lag"] is None else [({}, ha["lag"])],
    )
    out.one(
        "gateway_ha_calls_held",
        "gauge",
        "Calls this node holds: live on the active, in the warm copy on the standby.",
        ha["calls_held"],
    )


def _media_loop(out: Exposition, status: StatusView) -> None:
    loop = status.media_loop()
    labels = {"engine": loop.engine, "reason": loop.reason}
    # media.keep_core_awake needs the C loop; set on the Python loop it does nothing.
    labels["keep_core_awake_ignored"] = "true" if loop.keep_core_awake_ignored else "false"
    out.family(
        "gateway_media_loop_info",
        "gauge",
        "The media workers' packet loop (engine c or python) and why it was chosen (value 1).",
        [(labels, 1)],
    )


def _tls(out: Exposition, status: StatusView) -> None:
    now = time.time()
    tls = status.tls()
    certs = tls.certificates
    out.family(
        "gateway_certificate_expiry_seconds",
        "gauge",
        "Seconds until a certificate's not-after (negative once expired).",
        [({"role": c.role, "subject": c.subject, "file": c.file}, c.seconds_left) for c in certs],
    )
    out.family(
        "gateway_certificate_not_after_timestamp_seconds",
        "gauge",
        "Unix time of a certificate's not-after.",
        [
            ({"role": c.role, "subject": c.subject, "file": c.file}, now + c.seconds_left)
            for c in certs
        ],
    )
    out.one("gateway_certificate_reloads_total", "counter", "Certificate hot reloads.", tls.reloads)
    out.family(
        "gateway_trunk_up",
        "gauge",
        "1 while a trunk's verified TLS link to its provider is up.",
        [({"trunk": t.name}, 1 if t.up else 0) for t in status.trunks()],
    )
    provider = status.provider()
    out.one(
        "gateway_provider_tls_up",
        "gauge",
        "1 while the verified TLS connection to the provider is up.",
        1 if provider.up else 0,
    )
    out.one(
        "gateway_provider_tls_connects_total",
        "counter",
        "TLS connections established to the provider.",
        provider.connects,
    )
    if provider.up:
        out.family(
            "gateway_provider_tls_info",
            "gauge",
            "The provider connection's TLS version, cipher and verified peer (value 1).",
            [
                (
                    {
                        "version": provider.tls_version or "",
                        "cipher": provider.tls_cipher or "",
                        "peer": provider.peer_certificate_subject or "",
                    },
                    1,
                )
            ],
        )
