"""Invariant 5: an emergency call from an allowed LAN phone is never refused.

Hypothesis builds hostile settings (deny-everything rules at every level, out-of-hours windows,
tiny caps, the spike lock) and a hostile history (floods, scanner agents, brute force, full
caps, bans) and then checks the whole path an emergency INVITE takes through the engine.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import (
    AllowlistSettings,
    CapLimits,
    CapSettings,
    DialPlanSettings,
    DialRuleSettings,
    EmergencySettings,
    FloodSettings,
    GroupPolicy,
    PhonePolicy,
    PolicySettings,
    RateLimit,
    SpikeSettings,
    TimeWindowSettings,
)

LAN = "192.0.2.0/24"
DENY_ALL = DialRuleSettings(
    name="deny-all", action="deny", pattern=".*", prefixes=("+", "0", "1", "9")
)
NIGHT = DialRuleSettings(
    name="night",
    action="deny",
    pattern=r".*",
    window=TimeWindowSettings(start="08:00", end="18:00", when="outside"),
)

tiny_caps = st.builds(
    CapLimits,
    concurrent=st.integers(0, 2),
    calls_per_hour=st.integers(0, 2),
    minutes_per_day=st.floats(0, 2),
    international_minutes_per_day=st.floats(0, 2),
)
rules = st.lists(st.sampled_from([DENY_ALL, NIGHT]), max_size=2).map(tuple)
sites = st.sampled_from(
    [
        ("1", "1", "011", ""),
        ("44", "0", "00", ""),
        ("61", "0", "0011", ""),
        ("33", "0", "00", "9"),
        ("1", "1", "011", "9"),
    ]
)


@st.composite
def hostile_settings(draw: st.DrawFn) -> PolicySettings:
    cc, national, international, outside = draw(sites)
    return PolicySettings(
        allowlist=AllowlistSettings(lan=(LAN,), on_deny=draw(st.sampled_from(["drop", "reject"]))),
        flood=FloodSettings(
            per_source=RateLimit(rate=1, burst=1),
            register=RateLimit(rate=1, burst=1),
            invite=RateLimit(rate=1, burst=1),
            site=RateLimit(rate=1, burst=1),
            auth_failures=1,
            enumeration_users=2,
        ),
        dialplan=DialPlanSettings(
            country_code=cc,
            national_prefix=national,
            international_prefix=international,
            national_prefix_optional=cc == "1",
            national_min_length=9 if cc != "1" else 10,
            outside_line_prefix=outside,
            default_action=draw(st.sampled_from(["allow", "deny"])),
            allow_short_codes=draw(st.booleans()),
            rules=draw(rules),
            groups={"g": GroupPolicy(phones=("201",), rules=(DENY_ALL,), caps=draw(tiny_caps))},
            phones={"202": PhonePolicy(rules=(DENY_ALL,), templates=(), caps=draw(tiny_caps))},
        ),
        caps=CapSettings(
            phone=draw(tiny_caps),
            site=draw(tiny_caps),
            spike=SpikeSettings(min_calls=1, factor=1.01, window_seconds=60, baseline_seconds=120),
        ),
        emergency=EmergencySettings(national=draw(st.booleans())),
    )


history_step = st.sampled_from(["flood", "scanner", "auth", "enum", "call", "longcall"])


@settings(max_examples=200, deadline=None)
@given(
    policy=hostile_settings(),
    history=st.lists(history_step, max_size=25),
    phone=st.sampled_from(["201", "202", "203"]),
    host=st.integers(1, 254),
    number=st.sampled_from(["911", "112", "999", "000"]),
    spacing=st.sampled_from(["", " ", "-"]),
    dial_outside=st.booleans(),
    minutes=st.integers(0, 7 * 24 * 60),
)
def test_emergency_call_from_allowed_phone_is_never_refused(
    policy: PolicySettings,
    history: list[str],
    phone: str,
    host: int,
    number: str,
    spacing: str,
    dial_outside: bool,
    minutes: int,
) -> None:
    engine = PolicyEngine(policy)
    ip = f"192.0.2.{host}"
    now = 0.0
    for i, step in enumerate(history):
        now += 0.1
        if step == "flood":
            for _ in range(5):
                engine.check_request("lan", ip, "INVITE", None, "2125550100", True, now)
        elif step == "scanner":
            engine.check_request("lan", ip, "OPTIONS", "friendly-scanner", None, True, now)
        elif step == "auth":
            engine.auth_result(ip, 403, now)
        elif step == "enum":
            for user in ("a", "b", "c"):
                engine.check_request("lan", ip, "REGISTER", None, user, False, now)
        else:
            verdict = engine.check_outbound_call(phone, ip, "2125550100", now, datetime(2024, 5, 1))
            if verdict.allowed and verdict.number is not None:
                engine.call_started(f"c{i}", phone, verdict.number.number, False, now)
                if step == "longcall":
                    engine.call_answered(f"c{i}", now)
    now += 1.0
    wall = datetime(2024, 5, 6) + timedelta(minutes=minutes)
    dialled = spacing.join(number)
    if dial_outside and policy.dialplan.outside_line_prefix:
        dialled = policy.dialplan.outside_line_prefix + dialled

    assert engine.check_source("lan", ip, now).allowed
    request = engine.check_request("lan", ip, "INVITE", "friendly-scanner", dialled, False, now)
    assert request.allowed, request
    call = engine.check_outbound_call(phone, ip, dialled, now, wall)
    assert call.allowed, call
    assert call.rule == "emergency"
    assert any(ev.action == "emergency" for ev in engine.drain_events())


def test_emergency_from_a_banned_phone_is_logged_and_allowed() -> None:
    engine = PolicyEngine(PolicySettings(allowlist=AllowlistSettings(lan=(LAN,))))
    engine.check_request("lan", "192.0.2.5", "OPTIONS", "sipvicious", None, True, 0.0)
    assert engine.bans(0.0)
    assert not engine.check_request(
        "lan", "192.0.2.5", "INVITE", None, "2125550100", True, 1.0
    ).allowed
    assert engine.check_request("lan", "192.0.2.5", "INVITE", None, "911", True, 1.0).allowed
    assert "emergency.ban-bypassed" in [ev.rule for ev in engine.drain_events()]


def test_emergency_numbers_are_configurable_and_additive() -> None:
    engine = PolicyEngine(
        PolicySettings(
            dialplan=DialPlanSettings(
                country_code="49",
                national_prefix="0",
                international_prefix="00",
                national_min_length=5,
                national_max_length=11,
                national_prefix_optional=False,
            )
        ),
        emergency_numbers=["19222"],
    )
    for number in ("911", "112", "999", "000", "110", "19222"):
        assert engine.is_emergency(number), number
    assert not engine.is_emergency("115")


def test_emergency_does_not_count_towards_caps() -> None:
    caps = CapLimits(
        concurrent=1, calls_per_hour=1, minutes_per_day=1, international_minutes_per_day=1
    )
    engine = PolicyEngine(PolicySettings(caps=CapSettings(phone=caps, site=caps)))
    wall = datetime(2024, 5, 1, 12)
    verdict = engine.check_outbound_call("201", "192.0.2.5", "911", 0.0, wall)
    assert verdict.allowed
    engine.call_started("e", "201", "911", False, 0.0)
    engine.call_ended("e", 3600.0)
    assert engine.check_outbound_call("201", "192.0.2.5", "2125550100", 3601.0, wall).allowed
