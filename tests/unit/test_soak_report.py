"""bench/soak_report.py: the soak's slopes and its account of calls against call records."""

from __future__ import annotations

import pytest

from bench.soak_report import PlacedCall, account, reconcile, slope_per_hour, slopes


def test_slope_is_per_hour_and_only_over_the_window() -> None:
    points = [(t, 10.0 + 0.5 * t) for t in range(0, 600, 15)]  # +0.5 per second
    assert slope_per_hour(points) == pytest.approx(1800.0)
    flat_after_warmup = [(t, 100.0 if t < 300 else 7.0) for t in range(0, 900, 15)]
    assert slope_per_hour(flat_after_warmup, after=300) == pytest.approx(0.0)
    assert slope_per_hour(flat_after_warmup, after=0, before=280) == pytest.approx(0.0)
    assert slope_per_hour([(0.0, 1.0), (1.0, 2.0)]) is None  # too few points
    assert slopes({"a": points, "b": []}, 0.0, 1e9) == {"a": pytest.approx(1800.0), "b": None}


def test_every_call_once_with_an_agreeing_outcome() -> None:
    placed = [
        PlacedCall("a", "answered", 200, ("completed",)),
        PlacedCall("b", "cancelled", 487, ("cancelled",)),
        PlacedCall("c", "busy", 486, ("failed",)),
        PlacedCall("d", "refused", 403, ("refused",)),
    ]
    records = [
        {"call_id": "a", "outcome": "completed"},
        {"call_id": "b", "outcome": "cancelled"},
        {"call_id": "b", "outcome": "cancelled"},
        {"call_id": "c", "outcome": "completed"},
        {"call_id": "z", "outcome": "refused"},
    ]
    result = account(placed, records)
    assert result.missing == ["d"]
    assert result.duplicated == ["b"]
    assert [m["call_id"] for m in result.mismatched] == ["c"]
    assert result.unknown == 1 and not result.ok
    summary = result.summary()
    assert summary["placed"] == 4 and summary["recorded"] == 5
    assert summary["by_kind"]["refused"] == {"missing": 1}
    clean = account(placed[:1], records[:1])
    assert clean.ok and clean.summary()["all_accounted"] is True


def test_reconciliation_tells_calls_that_never_reached_the_gateway_from_lost_records() -> None:
    placed = [
        PlacedCall("a", "answered", 200, ("completed",)),
        PlacedCall("b", "refused", 403, ("refused",)),
        # No response at all: the INVITE never reached the gateway.
        PlacedCall("c", "answered", None, ("completed", "unanswered"), heard=False),
    ]
    records = [{"call_id": "a", "outcome": "completed"}, {"call_id": "b", "outcome": "refused"}]
    metrics = {
        "gateway_call_setups_total": 1.0,
        'gateway_call_refusals_total{reason="dialplan.no-premium"}': 1.0,
        "gateway_call_records_written_total": 2.0,
    }
    udp_before = {"InDatagrams": 10, "RcvbufErrors": 5, "InErrors": 5}
    udp_after = {"InDatagrams": 30, "RcvbufErrors": 8, "InErrors": 8}
    calls = account(placed, records)
    assert calls.missing == ["c"] and calls.missing_unheard == ["c"]
    assert calls.gateway_ok and not calls.ok
    out = reconcile(calls, metrics, udp_before, udp_after)
    assert out["counted_by_gateway"] == 2 and out["records_written"] == 2
    assert out["never_reached_gateway"] == 1 and out["gateway_saw_but_no_record"] == 0
    assert out["udp_delta"] == {"InDatagrams": 20, "RcvbufErrors": 3, "InErrors": 3}
    assert out["every_counted_invite_has_one_record"] and out["consistent"]

    # A call the phone heard about (100 Trying) but the gateway did not record is its fault.
    heard = [PlacedCall("c", "answered", None, ("completed", "unanswered"), heard=True)]
    lost = account(placed[:2] + heard, records)
    assert lost.missing == ["c"] and lost.missing_unheard == []
    assert not lost.gateway_ok
    metrics["gateway_call_setups_total"] = 2.0
    out = reconcile(lost, metrics, udp_before, udp_after)
    assert out["gateway_saw_but_no_record"] == 1
    assert not out["every_counted_invite_has_one_record"] and not out["consistent"]
