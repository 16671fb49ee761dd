"""Number normalisation to E.164: examples per site and properties (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.numbering import NumberPlan, emergency_numbers
from gateway.policy.settings import DialPlanSettings

NANP = DialPlanSettings()
UK = DialPlanSettings(
    country_code="44",
    national_prefix="0",
    international_prefix="00",
    national_min_length=9,
    national_max_length=10,
    national_prefix_optional=False,
)
FRANCE = DialPlanSettings(
    country_code="33",
    national_prefix="0",
    international_prefix="00",
    national_min_length=9,
    national_max_length=9,
    national_prefix_optional=False,
)
AUSTRALIA = DialPlanSettings(
    country_code="61",
    national_prefix="0",
    international_prefix="0011",
    national_min_length=9,
    national_max_length=9,
    national_prefix_optional=False,
)
SITES = [NANP, UK, FRANCE, AUSTRALIA]


def plan(settings: DialPlanSettings) -> NumberPlan:
    return NumberPlan(
        settings, emergency_numbers(settings.country_code, ("911", "112", "999", "000"))
    )


@pytest.mark.parametrize(
    ("settings", "dialled", "kind", "number", "international"),
    [
        (NANP, "(212) 555-0100", "e164", "+12125550100", False),
        (NANP, "1 212 555 0100", "e164", "+12125550100", False),
        (NANP, "011 44 20 7946 0000", "e164", "+442079460000", True),
        (NANP, "+1 876 555 0100", "e164", "+18765550100", True),  # Jamaica: NANP but abroad
        (NANP, "1-900-555-0100", "e164", "+19005550100", False),
        (NANP, "911", "emergency", "911", False),
        (NANP, "*97", "short", "*97", False),
        (NANP, "201", "short", "201", False),
        (NANP, "alice", "name", "alice", False),
        (NANP, "reception", "name", "reception", False),
        (NANP, "sales.team", "name", "sales.team", False),
        (NANP, "#@!", "invalid", "#@!", False),
        (NANP, "5550100", "invalid", "5550100", False),  # 7 digits need an area code
        (UK, "020 7946 0000", "e164", "+442079460000", False),
        (UK, "00 1 212 555 0100", "e164", "+12125550100", True),
        (UK, "0901 234 567", "e164", "+44901234567", False),
        (UK, "999", "emergency", "999", False),
        (FRANCE, "01 23 45 67 89", "e164", "+33123456789", False),
        (FRANCE, "15", "emergency", "15", False),
        (AUSTRALIA, "000", "emergency", "000", False),
        (AUSTRALIA, "0011 44 20 7946 0000", "e164", "+442079460000", True),
        (AUSTRALIA, "02 9876 5432", "e164", "+61298765432", False),
    ],
)
def test_examples(
    settings: DialPlanSettings, dialled: str, kind: str, number: str, international: bool
) -> None:
    result = plan(settings).classify(dialled)
    assert (result.kind, result.number, result.international) == (kind, number, international)


def test_area_code_and_outside_line() -> None:
    settings = DialPlanSettings(area_code="212", local_length=7, outside_line_prefix="9")
    p = plan(settings)
    assert p.classify("9 555 0100").number == "+12125550100"
    assert p.classify("9 1 415 555 0100").number == "+14155550100"
    assert p.classify("9911").kind == "emergency"
    assert p.classify("911").kind == "emergency"


def test_too_long_is_invalid() -> None:
    assert plan(NANP).classify("+1234567890123456").kind == "invalid"
    assert plan(NANP).classify("+0441234").kind == "invalid"
    assert plan(NANP).classify("").kind == "invalid"


E164 = re.compile(r"\+[1-9]\d{1,14}")
sites = st.sampled_from(SITES)
#: A world number: country code then subscriber digits, at most 15 digits in all.
world_numbers = st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True)
separators = st.lists(st.sampled_from([" ", "-", ".", "(", ")"]), max_size=4)


@given(site=sites, dialled=st.text(max_size=40))
def test_never_raises_and_e164_is_well_formed(site: DialPlanSettings, dialled: str) -> None:
    result = plan(site).classify(dialled)
    if result.kind == "e164":
        assert E164.fullmatch(result.number)


@given(site=sites, digits=world_numbers)
def test_e164_is_a_fixed_point(site: DialPlanSettings, digits: str) -> None:
    p = plan(site)
    first = p.classify("+" + digits)
    assert first.kind == "e164" and first.number == "+" + digits
    assert p.classify(first.number) == first


@given(site=sites, digits=world_numbers)
def test_international_prefix_equals_plus(site: DialPlanSettings, digits: str) -> None:
    p = plan(site)
    assert p.classify(site.international_prefix + digits).number == "+" + digits


@given(site=sites, data=st.data())
def test_national_form_maps_into_the_home_country(
    site: DialPlanSettings, data: st.DataObject
) -> None:
    length = data.draw(st.integers(site.national_min_length, site.national_max_length))
    nsn = data.draw(st.from_regex(rf"[2-9][0-9]{{{length - 1}}}", fullmatch=True))
    result = plan(site).classify(site.national_prefix + nsn)
    assert result.number == "+" + site.country_code + nsn
    assert result.kind == "e164"


@given(site=sites, digits=world_numbers, seps=st.lists(separators, min_size=1, max_size=3))
def test_visual_separators_do_not_matter(
    site: DialPlanSettings, digits: str, seps: list[list[str]]
) -> None:
    p = plan(site)
    spaced = "+"
    for i, ch in enumerate(digits):
        spaced += ch + ("".join(seps[i % len(seps)]) if i % 3 == 2 else "")
    assert p.classify(spaced).number == p.classify("+" + digits).number


@given(site=sites, digits=world_numbers)
def test_international_flag_is_the_country_code(site: DialPlanSettings, digits: str) -> None:
    result = plan(site).classify("+" + digits)
    if not result.number.startswith("+" + site.country_code):
        assert result.international


@pytest.mark.parametrize(
    ("dialled", "style", "expected"),
    [
        ("2025550123", "e164", "+12025550123"),
        ("2025550123", "e164-no-plus", "12025550123"),
        ("2025550123", "national", "2025550123"),  # NANP: the national prefix is optional
        ("1 (202) 555-0123", "as-dialled", "12025550123"),
        ("011 44 20 7946 0000", "national", "011442079460000"),  # international stays so
        ("011 44 20 7946 0000", "e164-no-plus", "442079460000"),
        ("911", "e164", "911"),  # emergency numbers go as dialled in every format
        ("911", "national", "911"),
        ("*97", "e164", "*97"),
        ("reception", "national", "reception"),
    ],
)
def test_numbers_are_written_as_the_trunk_wants_them(dialled: str, style: str, expected: str) -> None:
    p = plan(NANP)
    assert p.format(p.classify(dialled), style) == expected  # type: ignore[arg-type]


def test_the_national_form_keeps_a_mandatory_national_prefix() -> None:
    uk = plan(DialPlanSettings(
        country_code="44", national_prefix="0", international_prefix="00",
        national_min_length=9, national_max_length=10, national_prefix_optional=False,
    ))
    assert uk.format(uk.classify("+44 20 7946 0000"), "national") == "02079460000"
    assert uk.format(uk.classify("001 202 555 0123"), "national") == "0012025550123"
