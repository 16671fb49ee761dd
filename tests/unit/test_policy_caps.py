"""Call caps and the spike lock (fixed clock)."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.policy.caps import SpikeDetector
from gateway.policy.engine import PolicyEngine, Verdict
from gateway.policy.settings import (
    CapLimits,
    CapSettings,
    DialPlanSettings,
    GroupPolicy,
    PhonePolicy,
    PolicySettings,
    SpikeSettings,
)

WALL = datetime(2024, 5, 1, 12, 0)
IP = "192.0.2.20"
DOMESTIC = "212 555 0100"
ABROAD = "011 44 20 7946 0000"
UNLIMITED = CapLimits(
    concurrent=0, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
)


def make(
    phone: CapLimits = UNLIMITED,
    site: CapLimits = UNLIMITED,
    *,
    spike: bool = False,
    **dialplan: object,
) -> PolicyEngine:
    return PolicyEngine(
        PolicySettings(
            caps=CapSettings(phone=phone, site=site, spike=SpikeSettings(enabled=spike)),
            dialplan=DialPlanSettings(**{"templates": ("no-premium",), **dialplan}),  # type: ignore[arg-type]
        )
    )


def call(
    e: PolicyEngine, now: float, phone: str = "201", dialled: str = DOMESTIC, key: str | None = None
) -> Verdict:
    verdict = e.check_outbound_call(phone, IP, dialled, now, WALL)
    if verdict.allowed and key is not None:
        assert verdict.number is not None
        e.call_started(key, phone, verdict.number.number, verdict.number.international, now)
    return verdict


def test_phone_concurrent_cap_is_busy() -> None:
    e = make(
        phone=CapLimits(
            concurrent=2, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
        )
    )
    assert call(e, 0.0, key="a").allowed
    assert call(e, 0.0, key="b").allowed
    verdict = call(e, 0.0, key="c")
    assert (verdict.allowed, verdict.status, verdict.rule) == (False, 486, "caps.phone-concurrent")
    assert "too many calls" in verdict.warning
    assert call(e, 0.0, phone="202", key="d").allowed
    e.call_ended("a", 10.0)
    assert call(e, 10.0, key="e").allowed


def test_site_concurrent_cap() -> None:
    e = make(
        site=CapLimits(
            concurrent=2, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
        )
    )
    call(e, 0.0, phone="201", key="a")
    call(e, 0.0, phone="202", key="b")
    assert call(e, 0.0, phone="203").rule == "caps.site-concurrent"


def test_calls_per_hour_rolls() -> None:
    e = make(
        phone=CapLimits(
            concurrent=0, calls_per_hour=3, minutes_per_day=0, international_minutes_per_day=0
        )
    )
    for i in range(3):
        call(e, float(i), key=str(i))
        e.call_ended(str(i), float(i) + 0.5)
    verdict = call(e, 10.0)
    assert (verdict.status, verdict.rule) == (403, "caps.phone-calls-per-hour")
    assert call(e, 3601.0).allowed


def test_minutes_per_day_count_running_calls_and_answer_time() -> None:
    e = make(
        phone=CapLimits(
            concurrent=0, calls_per_hour=0, minutes_per_day=10, international_minutes_per_day=0
        )
    )
    call(e, 0.0, key="a")
    e.call_answered("a", 60.0)  # ringing for a minute does not count
    assert e.minutes_today("201", 360.0) == 5.0
    e.call_ended("a", 360.0)
    call(e, 400.0, key="b")  # still up, 5 more minutes at 700 s
    assert call(e, 700.0).rule == "caps.phone-minutes-per-day"
    e.call_ended("b", 700.0)
    assert call(e, 360.0 + 86401.0).allowed  # the first call has rolled out of the day


def test_international_minutes() -> None:
    e = make(
        phone=CapLimits(
            concurrent=0, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=5
        ),
        templates=(),
    )
    call(e, 0.0, dialled=ABROAD, key="a")
    e.call_answered("a", 0.0)
    e.call_ended("a", 300.0)
    verdict = call(e, 301.0, dialled=ABROAD)
    assert verdict.rule == "caps.phone-international-minutes-per-day"
    assert call(e, 301.0, dialled=DOMESTIC).allowed


def test_site_international_minutes() -> None:
    e = make(
        site=CapLimits(
            concurrent=0, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=1
        ),
        templates=(),
    )
    call(e, 0.0, phone="201", dialled=ABROAD, key="a")
    e.call_ended("a", 60.0)
    assert (
        call(e, 61.0, phone="202", dialled=ABROAD).rule == "caps.site-international-minutes-per-day"
    )


def test_per_phone_and_group_caps() -> None:
    one = CapLimits(
        concurrent=1, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
    )
    three = CapLimits(
        concurrent=3, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
    )
    e = make(
        phone=one,
        groups={"sales": GroupPolicy(phones=("300", "301"), caps=three)},
        phones={"301": PhonePolicy(caps=one)},
    )
    assert e.limits_for("300") == three
    assert e.limits_for("301") == one
    assert e.limits_for("201") == one
    for key in "abc":
        assert call(e, 0.0, phone="300", key=key).allowed
    assert call(e, 0.0, phone="300").rule == "caps.phone-concurrent"


def test_started_twice_counts_once() -> None:
    e = make(
        phone=CapLimits(
            concurrent=1, calls_per_hour=0, minutes_per_day=0, international_minutes_per_day=0
        )
    )
    call(e, 0.0, key="a")
    e.call_started("a", "201", "+12125550100", False, 0.0)
    e.call_ended("a", 1.0)
    assert call(e, 1.0).allowed


# --- spike lock


def spiky() -> PolicyEngine:
    return PolicyEngine(
        PolicySettings(
            caps=CapSettings(
                phone=UNLIMITED,
                site=UNLIMITED,
                spike=SpikeSettings(
                    window_seconds=300,
                    baseline_seconds=3600,
                    factor=4.0,
                    min_calls=10,
                    lock_seconds=600,
                ),
            )
        )
    )


def test_steady_traffic_does_not_lock() -> None:
    e = spiky()
    # Two calls a minute for two hours: 10 per window, steady.
    for i in range(240):
        assert call(e, i * 30.0).allowed


def test_spike_locks_then_expires() -> None:
    e = spiky()
    for i in range(60):  # one call a minute for an hour: baseline 5 per window
        assert call(e, i * 60.0).allowed
    now = 3600.0
    verdicts = [call(e, now + i) for i in range(30)]
    locked = [v for v in verdicts if not v.allowed]
    assert locked and all(v.rule == "spike.lock" and v.status == 403 for v in locked)
    assert e.spike_locked(now + 30)
    assert call(e, now + 30, dialled="911").allowed  # emergency ignores the lock
    assert ("spike.lock", "lock") in [(ev.rule, ev.action) for ev in e.drain_events()]
    deadline = e.next_deadline()
    assert deadline is not None and deadline <= now + 30 + 600
    e.handle_timer(now + 30 + 601)
    assert not e.spike_locked(now + 30 + 601)
    assert ("spike.lock", "unlock") in [(ev.rule, ev.action) for ev in e.drain_events()]


def test_operator_lifts_spike_lock() -> None:
    e = spiky()
    for i in range(40):
        call(e, float(i))
    assert e.spike_locked(40.0)
    assert e.lift_spike_lock(41.0)
    assert not e.lift_spike_lock(41.0)
    assert call(e, 41.0).allowed


def test_steady_rate_after_a_start_late_in_a_minute_never_locks() -> None:
    detector = SpikeDetector(
        SpikeSettings(
            enabled=True,
            window_seconds=300.0,
            baseline_seconds=3600.0,
            factor=4.0,
            min_calls=15,
            lock_seconds=600.0,
        )
    )
    now = 59.0  # the engine started one second before a minute ended
    for _ in range(6 * 90):  # 6 calls a minute for an hour and a half
        assert not detector.record(now)
        now += 10.0


def test_running_total_matches_a_recount() -> None:
    detector = SpikeDetector(
        SpikeSettings(
            enabled=True,
            window_seconds=120.0,
            baseline_seconds=1800.0,
            factor=50.0,
            min_calls=1000,
            lock_seconds=60.0,
        )
    )
    now = 0.0
    for i in range(2000):
        detector.record(now)
        now += 1.0 + (i % 7)
        assert detector._total == sum(n for _, n in detector._bins)


def test_daily_minute_sums_follow_calls_in_and_out_of_the_window() -> None:
    from gateway.policy.caps import CallCaps

    limits = CapLimits(
        concurrent=0, calls_per_hour=0, minutes_per_day=0.0, international_minutes_per_day=0.0
    )
    caps = CallCaps(limits)
    now = 1000.0
    for i in range(50):
        key = f"c{i}"
        caps.started(key, "201", international=i % 5 == 0, emergency=False, now=now)
        caps.answered(key, now)
        caps.ended(key, now + 60.0)  # one minute each
        now += 3600.0  # one call an hour: about 24 stay in the day window
    caps.prune(now)
    recount = sum(1 for i in range(50) if now - (1000.0 + i * 3600.0 + 60.0) <= 86400.0)
    assert caps.minutes_today("201", now) == pytest.approx(recount)
    intl = sum(1 for i in range(50) if i % 5 == 0 and now - (1000.0 + i * 3600.0 + 60.0) <= 86400.0)
    assert caps.minutes_today(None, now, international=True) == pytest.approx(intl)
