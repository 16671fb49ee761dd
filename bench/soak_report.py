"""The soak's arithmetic, without I/O: least-squares slopes of the sampled series and the
account of every call the soak placed against the gateway's call detail records.

A slope is per hour, fitted over the samples after the warm-up (ordinary least squares of
value on time). The account matches records to calls by the phone's Call-ID (the gateway keeps
the phone leg's Call-ID in its record): every call must appear exactly once, with an outcome
the phone's view of the call allows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CallAccount",
    "PlacedCall",
    "account",
    "reconcile",
    "slope_per_hour",
    "slopes",
    "table",
]


def slope_per_hour(
    points: Sequence[tuple[float, float]], after: float = 0.0, before: float = float("inf")
) -> float | None:
    """Least-squares slope (units per hour) of the (seconds, value) points from ``after`` to
    ``before``; None with fewer than three points."""
    chosen = [(t, v) for t, v in points if after <= t <= before]
    if len(chosen) < 3:
        return None
    n = len(chosen)
    mean_t = sum(t for t, _ in chosen) / n
    mean_v = sum(v for _, v in chosen) / n
    var = sum((t - mean_t) ** 2 for t, _ in chosen)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in chosen)
    return cov / var * 3600.0


def slopes(
    series: Mapping[str, Sequence[tuple[float, float]]], after: float, before: float
) -> dict[str, float | None]:
    return {name: slope_per_hour(points, after, before) for name, points in series.items()}


@dataclass(frozen=True)
class PlacedCall:
    """One call the soak placed: the phone's Call-ID, what it meant to do, what it saw."""

    call_id: str
    kind: str
    #: Final status the phone received (None: no final response before its timeout).
    status: int | None
    #: CDR outcomes that agree with what the phone saw.
    expected: tuple[str, ...]
    #: Whether the phone had any response to its INVITE (a 100 Trying at least): the gateway
    #: saw the call. A call without a record that the phone heard nothing for never reached
    #: the gateway (or every datagram of it was lost); one it heard from is the gateway's fault.
    heard: bool = True


@dataclass
class CallAccount:
    placed: int = 0
    recorded: int = 0
    missing: list[str] = field(default_factory=list)
    #: The missing calls whose phone never heard from the gateway (a subset of ``missing``).
    missing_unheard: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    #: Records of calls the soak did not place (should be none).
    unknown: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.mismatched or self.unknown)

    @property
    def gateway_ok(self) -> bool:
        """Every call the gateway answered anything to has exactly one record that agrees
        (the calls missing are only ones the phone never heard from the gateway about)."""
        heard_missing = len(self.missing) - len(self.missing_unheard)
        return not (heard_missing or self.duplicated or self.mismatched or self.unknown)

    def summary(self) -> dict[str, Any]:
        return {
            "placed": self.placed,
            "recorded": self.recorded,
            "missing": len(self.missing),
            "missing_never_heard_from_gateway": len(self.missing_unheard),
            "missing_after_gateway_answered": len(self.missing) - len(self.missing_unheard),
            "all_the_gateway_saw_accounted": self.gateway_ok,
            "duplicated": len(self.duplicated),
            "mismatched": len(self.mismatched),
            "unknown_records": self.unknown,
            "all_accounted": self.ok,
            "by_outcome": self.by_outcome,
            "by_kind": self.by_kind,
            "examples": {
                "missing": self.missing[:10],
                "missing_after_gateway_answered": [
                    c for c in self.missing if c not in set(self.missing_unheard)
                ][:10],
                "duplicated": self.duplicated[:10],
                "mismatched": self.mismatched[:10],
            },
        }


def account(placed: Iterable[PlacedCall], records: Iterable[Mapping[str, Any]]) -> CallAccount:
    """Every placed call exactly once in ``records``, with an expected outcome."""
    calls = {c.call_id: c for c in placed}
    seen: Counter[str] = Counter()
    outcome_of: dict[str, str] = {}
    result = CallAccount(placed=len(calls))
    outcomes: Counter[str] = Counter()
    for record in records:
        call_id = str(record.get("call_id"))
        result.recorded += 1
        outcomes[str(record.get("outcome"))] += 1
        if call_id not in calls:
            result.unknown += 1
            continue
        seen[call_id] += 1
        outcome_of[call_id] = str(record.get("outcome"))
    result.by_outcome = dict(sorted(outcomes.items()))
    kinds: dict[str, Counter[str]] = {}
    for call_id, call in calls.items():
        count = seen.get(call_id, 0)
        outcome = outcome_of.get(call_id, "missing")
        kinds.setdefault(call.kind, Counter())[outcome] += 1
        if count == 0:
            result.missing.append(call_id)
            if not call.heard:
                result.missing_unheard.append(call_id)
        elif count > 1:
            result.duplicated.append(call_id)
        elif outcome not in call.expected:
            result.mismatched.append(
                {
                    "call_id": call_id,
                    "kind": call.kind,
                    "status": call.status,
                    "expected": list(call.expected),
                    "outcome": outcome,
                }
            )
    result.by_kind = {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())}
    return result


def reconcile(
    calls: CallAccount,
    metrics: dict[str, float],
    udp_before: dict[str, int],
    udp_after: dict[str, int],
) -> dict[str, Any]:
    """The call account by cause: what the phones placed, what the gateway counted (a call
    set-up or a refusal for every new INVITE its core took), what it recorded, and for the
    calls without a record whether the phone ever heard from the gateway, next to the UDP
    datagrams the kernel dropped for full receive buffers meanwhile. Every INVITE the gateway
    counted must have exactly one record; a call the phone never heard about never reached it.
    """
    setups = metrics.get("gateway_call_setups_total", 0.0)
    refusals = sum(v for k, v in metrics.items() if k.startswith("gateway_call_refusals_total"))
    written = metrics.get("gateway_call_records_written_total", 0.0)
    counted = int(setups + refusals)
    missing_heard = len(calls.missing) - len(calls.missing_unheard)
    out: dict[str, Any] = {
        "placed_by_phones": calls.placed,
        "counted_by_gateway": counted,
        "of_which_call_setups": int(setups),
        "of_which_refusals": int(refusals),
        "records_written": int(written),
        "records_read": calls.recorded,
        "missing_records": len(calls.missing),
        "never_reached_gateway": len(calls.missing_unheard),
        "gateway_saw_but_no_record": missing_heard,
        "placed_minus_counted": calls.placed - counted,
        "udp_delta": {
            name: udp_after[name] - udp_before[name]
            for name in ("InDatagrams", "RcvbufErrors", "InErrors")
            if name in udp_after and name in udp_before
        },
    }
    out["every_counted_invite_has_one_record"] = (
        counted == int(written) == calls.recorded and not calls.duplicated
    )
    out["consistent"] = bool(
        out["every_counted_invite_has_one_record"]
        and calls.gateway_ok
        and calls.placed - counted == len(calls.missing_unheard)
    )
    return out


def table(
    series: Mapping[str, Sequence[tuple[float, float]]], fitted: Mapping[str, float | None]
) -> str:
    """One line per series: first and last value after warm-up and the slope per hour."""
    lines = [f"{'series':<34} {'first':>12} {'last':>12} {'slope/h':>12}"]
    for name, points in series.items():
        if not points:
            continue
        slope = fitted.get(name)
        lines.append(
            f"{name:<34} {points[0][1]:>12.2f} {points[-1][1]:>12.2f} "
            + (f"{slope:>12.3f}" if slope is not None else f"{'n/a':>12}")
        )
    return "\n".join(lines)
