"""Caps across an HA takeover: a call carried on by the new active is counted once (issue 14).

The promoted gateway restores the caps document the old active wrote (its calls in progress
among them) and then restores the calls themselves, which report their start to the caps
again; neither step may count the call a second time.
"""

from __future__ import annotations

from gateway.policy.engine import PolicyEngine
from tests.unit.test_policy_caps import UNLIMITED, call, make

WALL = 1_780_000_000.0


def _old_active() -> PolicyEngine:
    """The old active: call "c1" started at 0 s, answered at 60 s, running at 360 s."""
    old = make(UNLIMITED)
    call(old, 0.0, key="c1")
    old.call_answered("c1", 60.0)
    return old


def _promoted(old: PolicyEngine, taking_over: frozenset[str]) -> PolicyEngine:
    """A standby's engine promoted 360 s into the call: the caps document restored (another
    process, another monotonic clock), then the call restored as the core does."""
    document = old.export_caps(360.0, WALL + 360.0)
    new = make(UNLIMITED)
    new.taking_over = taking_over
    new.import_caps(document, 1000.0, WALL + 360.0)
    new.taking_over = frozenset()
    if "c1" in taking_over:
        new.call_started("c1", "201", "+12125550100", False, 1000.0 - 360.0)
        new.call_answered("c1", 1000.0 - 300.0)
    return new


def test_a_taken_over_call_counts_one_start_and_its_minutes_once() -> None:
    new = _promoted(_old_active(), frozenset({"c1"}))
    document = new.export_caps(1000.0, WALL + 360.0)
    site = [u for u in document.usage if u.phone is None]
    assert [len(u.starts) for u in site] == [1]  # one start in the hour, not two
    assert [a.key for a in document.active] == ["c1"]  # still in progress
    # Five minutes since the answer, counted once (not also as a call ended at the takeover).
    assert new.minutes_today("201", 1000.0) == 5.0
    assert new.minutes_today(None, 1060.0) == 6.0
    new.call_ended("c1", 1060.0)
    assert new.minutes_today("201", 1060.0) == 6.0
    assert not new.export_caps(1060.0, WALL + 420.0).active


def test_a_call_not_taken_over_counts_as_ended_at_the_restore() -> None:
    new = _promoted(_old_active(), frozenset())
    document = new.export_caps(1000.0, WALL + 360.0)
    assert not document.active
    assert new.minutes_today("201", 1000.0) == 5.0
    assert [len(u.starts) for u in document.usage if u.phone is None] == [1]
