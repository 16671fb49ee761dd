"""Dial plan: templates, prefix and pattern rules, overrides, time windows."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from gateway.policy.engine import PolicyEngine, Verdict
from gateway.policy.settings import (
    DialPlanSettings,
    DialRuleSettings,
    GroupPolicy,
    PhonePolicy,
    PolicySettings,
    TimeWindowSettings,
)

WEDNESDAY_NOON = datetime(2024, 5, 1, 12, 0)
WEDNESDAY_NIGHT = datetime(2024, 5, 1, 23, 30)
SATURDAY_NOON = datetime(2024, 5, 4, 12, 0)
PHONE_IP = "192.0.2.20"


def engine(**dialplan: object) -> PolicyEngine:
    return PolicyEngine(PolicySettings(dialplan=DialPlanSettings(**dialplan)))  # type: ignore[arg-type]


def check(
    e: PolicyEngine, dialled: str, phone: str = "201", wall: datetime = WEDNESDAY_NOON
) -> Verdict:
    return e.check_outbound_call(phone, PHONE_IP, dialled, 0.0, wall)


@pytest.mark.parametrize(
    ("dialled", "rule"),
    [
        ("011 44 20 7946 0000", "dialplan.no-international"),
        ("+1 876 555 0100", "dialplan.no-international"),
        ("1 900 555 0100", "dialplan.no-premium"),
        ("+1 212 976 1234", "dialplan.no-premium"),
        ("+881 631 234 567", "dialplan.no-satellite"),
    ],
)
def test_default_templates_refuse(dialled: str, rule: str) -> None:
    # The satellite template comes after no-international in the chain, so test it alone.
    e = engine(templates=("no-satellite",)) if "satellite" in rule else engine()
    verdict = check(e, dialled)
    assert (verdict.allowed, verdict.status, verdict.rule) == (False, 403, rule)
    assert verdict.warning.startswith('399 gateway "')


@pytest.mark.parametrize(
    "e164", ["+44 9 0123 4567", "+33 89 123 4567", "+49 900 1234567", "+1900 5550100"]
)
def test_premium_template_real_prefixes(e164: str) -> None:
    e = engine(templates=("no-premium",))
    assert check(e, e164).rule == "dialplan.no-premium"


def test_domestic_allowed_by_default() -> None:
    verdict = check(engine(), "212 555 0100")
    assert verdict.allowed and verdict.number is not None
    assert verdict.number.number == "+12125550100"


def test_prefix_and_pattern_rules() -> None:
    e = engine(
        rules=(
            DialRuleSettings(name="no-nyc", action="deny", prefixes=("+1 212",)),
            DialRuleSettings(name="no-555", action="deny", pattern=r"\+1\d{3}555\d{4}"),
            DialRuleSettings(name="no-411", action="deny", prefixes=("411",), message="no"),
        )
    )
    assert check(e, "212 444 0100").rule == "dialplan.no-nyc"
    assert check(e, "415 555 0100").rule == "dialplan.no-555"
    assert check(e, "411").rule == "dialplan.no-411"
    assert check(e, "411").warning == '399 gateway "no"'
    assert check(e, "415 444 0100").allowed


def test_default_deny_with_allow_rule() -> None:
    e = engine(
        default_action="deny",
        rules=(DialRuleSettings(name="local", action="allow", prefixes=("+1",)),),
    )
    assert check(e, "415 444 0100").allowed
    assert check(e, "*97").rule == "dialplan.default-deny"


def test_short_codes_can_be_refused() -> None:
    assert check(engine(allow_short_codes=False), "*97").rule == "dialplan.short-code"


def test_per_phone_override_beats_site_template() -> None:
    e = engine(
        phones={
            "300": PhonePolicy(
                rules=(DialRuleSettings(name="uk", action="allow", prefixes=("+44",)),)
            ),
            "301": PhonePolicy(templates=("no-premium",)),
        }
    )
    assert check(e, "011 44 20 7946 0000", phone="300").allowed
    assert not check(e, "011 33 1 23 45 67 89", phone="300").allowed
    assert check(e, "011 33 1 23 45 67 89", phone="301").allowed
    assert check(e, "1 900 555 0100", phone="301").rule == "dialplan.no-premium"
    assert not check(e, "011 44 20 7946 0000", phone="201").allowed


def test_group_override_and_phone_beats_group() -> None:
    e = engine(
        groups={
            "sales": GroupPolicy(phones=("400", "401"), templates=("no-premium",)),
        },
        phones={"401": PhonePolicy(templates=("no-international", "no-premium"))},
    )
    assert check(e, "011 44 20 7946 0000", phone="400").allowed
    assert not check(e, "011 44 20 7946 0000", phone="401").allowed
    assert not check(e, "011 44 20 7946 0000", phone="402").allowed


OUT_OF_HOURS = DialRuleSettings(
    name="out-of-hours",
    action="deny",
    pattern=".*",
    message="outside office hours",
    window=TimeWindowSettings(
        days=("mon", "tue", "wed", "thu", "fri"), start="08:00", end="18:00", when="outside"
    ),
)


def test_out_of_hours_rule() -> None:
    e = engine(rules=(OUT_OF_HOURS,))
    assert check(e, "212 555 0100", wall=WEDNESDAY_NOON).allowed
    assert check(e, "212 555 0100", wall=WEDNESDAY_NIGHT).rule == "dialplan.out-of-hours"
    assert check(e, "212 555 0100", wall=SATURDAY_NOON).rule == "dialplan.out-of-hours"
    # Emergency numbers are never subject to it.
    assert check(e, "911", wall=WEDNESDAY_NIGHT).allowed


def test_window_wrapping_midnight() -> None:
    night = DialRuleSettings(
        name="night",
        action="deny",
        prefixes=("+1",),
        window=TimeWindowSettings(days=("fri",), start="22:00", end="06:00"),
    )
    e = engine(rules=(night,))
    assert not check(e, "212 555 0100", wall=datetime(2024, 5, 3, 23, 0)).allowed  # Fri 23:00
    assert not check(e, "212 555 0100", wall=datetime(2024, 5, 4, 5, 59)).allowed  # Sat 05:59
    assert check(e, "212 555 0100", wall=datetime(2024, 5, 4, 6, 0)).allowed
    assert check(e, "212 555 0100", wall=datetime(2024, 5, 4, 23, 0)).allowed  # Sat night


def test_timezone_converts_aware_wall_clock() -> None:
    e = engine(rules=(OUT_OF_HOURS,), timezone="America/New_York")
    # 15:00 UTC is 11:00 in New York (EDT): office hours.
    assert check(e, "212 555 0100", wall=datetime(2024, 5, 1, 15, 0, tzinfo=UTC)).allowed
    # 23:00 UTC is 19:00 in New York: out of hours.
    assert not check(e, "212 555 0100", wall=datetime(2024, 5, 1, 23, 0, tzinfo=UTC)).allowed


def test_settings_reject_bad_rules() -> None:
    toml = b"""
[[rules]]
name = "x"
action = "deny"
pattern = "("
"""
    with pytest.raises(msgspec.ValidationError, match="bad pattern"):
        msgspec.toml.decode(toml, type=DialPlanSettings)
    with pytest.raises(msgspec.ValidationError, match="unknown template"):
        msgspec.toml.decode(b'templates = ["no-fun"]', type=DialPlanSettings)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.toml.decode(b'country = "44"', type=DialPlanSettings)
