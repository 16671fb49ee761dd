"""The "no-premium" template on phonenumbers' per-region classification.

Every number below was checked with phonenumbers.number_type (9.0.x) before it was written
down: premium-rate and shared-cost numbers are refused, toll-free ones never, and the hand-kept
fallbacks only catch what that metadata cannot classify or types as ordinary.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.policy.engine import PolicyEngine
from gateway.policy.numbering import is_premium, number_rate
from gateway.policy.settings import DialPlanSettings, PolicySettings

NOON = datetime(2024, 5, 1, 12, 0)

#: Number normalisation of a site in each country (what an operator writes in [policy.dialplan]).
SITES: dict[str, DialPlanSettings] = {
    "US": DialPlanSettings(templates=("no-premium",)),
    "GB": DialPlanSettings(
        country_code="44",
        national_prefix="0",
        international_prefix="00",
        national_min_length=9,
        national_max_length=10,
        national_prefix_optional=False,
        templates=("no-premium",),
    ),
    "DE": DialPlanSettings(
        country_code="49",
        national_prefix="0",
        international_prefix="00",
        national_min_length=6,
        national_max_length=11,
        national_prefix_optional=False,
        templates=("no-premium",),
    ),
    "FR": DialPlanSettings(
        country_code="33",
        national_prefix="0",
        international_prefix="00",
        national_min_length=9,
        national_max_length=9,
        national_prefix_optional=False,
        templates=("no-premium",),
    ),
    "AU": DialPlanSettings(
        country_code="61",
        national_prefix="0",
        international_prefix="0011",
        national_min_length=9,
        national_max_length=9,
        national_prefix_optional=False,
        templates=("no-premium",),
    ),
}


def decide(site: str, dialled: str) -> tuple[bool, str]:
    engine = PolicyEngine(PolicySettings(dialplan=SITES[site]))
    verdict = engine.check_outbound_call("201", "192.0.2.20", dialled, 0.0, NOON)
    return verdict.allowed, verdict.rule


@pytest.mark.parametrize(
    ("site", "dialled", "e164", "rate"),
    [
        ("GB", "0909 879 0000", "+449098790000", "premium"),
        ("GB", "0871 234 5678", "+448712345678", "premium"),
        ("US", "1 900 555 0100", "+19005550100", "premium"),
        ("DE", "0900 1234567", "+499001234567", "premium"),
        ("DE", "0180 6 996633", "+491806996633", "shared-cost"),
        ("FR", "08 91 23 45 67", "+33891234567", "premium"),
        ("FR", "08 21 23 45 67", "+33821234567", "shared-cost"),
        ("AU", "+61 1900 123 456", "+611900123456", "premium"),
        ("US", "+808 1234 5678", "+80812345678", "shared-cost"),
    ],
)
def test_premium_and_shared_cost_refused(site: str, dialled: str, e164: str, rate: str) -> None:
    assert number_rate(e164) == rate
    assert decide(site, dialled) == (False, "dialplan.no-premium")


@pytest.mark.parametrize(
    ("site", "dialled", "e164"),
    [
        ("GB", "0800 123 4567", "+448001234567"),
        ("US", "1 800 555 0100", "+18005550100"),
        # A 976 exchange under a toll-free code: the hand-kept NANP pattern used to refuse it.
        ("US", "1 800 976 1234", "+18009761234"),
        ("DE", "0800 1234 5678", "+4980012345678"),
        ("FR", "08 01 23 45 67", "+33801234567"),
        ("AU", "+61 1800 123 456", "+611800123456"),
        ("US", "011 800 1234 5678", "+80012345678"),
    ],
)
def test_toll_free_allowed(site: str, dialled: str, e164: str) -> None:
    assert number_rate(e164) == "toll-free"
    assert decide(site, dialled) == (True, "dialplan.default-allow")


@pytest.mark.parametrize(
    ("site", "dialled"),
    [
        # Reading (0118): the old prefix table refused it as "directory enquiries".
        ("GB", "0118 496 0000"),
        ("GB", "020 7946 0000"),
        ("DE", "030 123456"),
        ("AU", "02 9000 1234"),
        ("US", "212 555 0143"),
    ],
)
def test_ordinary_numbers_allowed(site: str, dialled: str) -> None:
    assert decide(site, dialled) == (True, "dialplan.default-allow")


@pytest.mark.parametrize(
    ("e164", "rate"),
    [
        # UK 070 personal numbers: PERSONAL_NUMBER to phonenumbers, a fraud range to us.
        ("+447012345678", "other"),
        # A NANP 976 exchange: FIXED_LINE_OR_MOBILE to phonenumbers.
        ("+12129761234", "other"),
        # One digit short of a UK 09 number, one too many for Germany 0900: UNKNOWN, yet a
        # switch routing on leading digits may connect them; the country's block refuses them.
        ("+44909879000", "unknown"),
        ("+4990012345678", "unknown"),
    ],
)
def test_fallback_tables_cover_what_phonenumbers_misses(e164: str, rate: str) -> None:
    assert number_rate(e164) == rate
    assert is_premium(e164)


def test_unknown_outside_the_blocks_is_handled_as_before() -> None:
    # An unassigned UK range: not premium, so the dial plan's default decides.
    assert number_rate("+44909") == "unknown"
    assert not is_premium("+4420")
    assert decide("GB", "+44 20") == (True, "dialplan.default-allow")


def test_emergency_numbers_come_first() -> None:
    settings = DialPlanSettings(
        country_code="44",
        national_prefix="0",
        international_prefix="00",
        national_min_length=9,
        national_max_length=10,
        national_prefix_optional=False,
        templates=("no-premium",),
        default_action="deny",
    )
    engine = PolicyEngine(PolicySettings(dialplan=settings))
    for dialled in ("999", "112"):
        verdict = engine.check_outbound_call("201", "192.0.2.20", dialled, 0.0, NOON)
        assert verdict.allowed and verdict.rule == "emergency"
