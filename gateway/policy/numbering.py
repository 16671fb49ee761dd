"""Dialled numbers: normalisation to E.164 (ITU-T E.164, E.123 visual separators), emergency
numbers, and the number ranges behind the dial-plan templates (premium-rate, shared-cost and
toll-free per region from phonenumbers, the port of Google's libphonenumber metadata).

A phone dials what its user types: "9 011 44 20 7946 0000", "(212) 555-0100", "0207 946 0000",
"*97", "112". The dial plan only reasons about one form, so everything is first turned into a
:class:`DialledNumber`: an E.164 number (with whether it leaves the country), a short code
(extensions and feature codes that go to the provider's PBX as dialled), an emergency number,
a name (a named extension, a hunt group or an operator on the provider's PBX: "reception",
"bob"; passed as dialled, never PSTN), or invalid. Emergency numbers are recognised before
anything else, on the digits as dialled, so that no normalisation quirk can turn 112 into
something a rule matches. ``NumberPlan.format`` writes a number the way a trunk wants it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal

import msgspec
import phonenumbers
from phonenumbers import PhoneNumberType

from gateway.policy.settings import DialPlanSettings

#: Separators people and phones put in numbers (E.123 and tel: URI visual separators).
_SEPARATORS = re.compile(r"[\s\-.()/\[\]]")
_SHORT = re.compile(r"[0-9*#]+")
#: A name on the provider's PBX: a letter first, then what a SIP user part carries unescaped
#: (RFC 3261 §25.1 unreserved and user-unreserved characters).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.!~'()&=+$,;?/]*")

NumberKind = Literal["e164", "short", "name", "emergency", "invalid"]
#: How a number is written toward a trunk: E.164 with or without "+", the national form
#: (as dialled inside the site's country; international numbers with the international
#: prefix), or exactly as the phone dialled it.
NumberFormat = Literal["e164", "e164-no-plus", "national", "as-dialled"]


class DialledNumber(msgspec.Struct, frozen=True):
    """A dialled number after normalisation."""

    #: What the phone sent.
    dialled: str
    kind: NumberKind
    #: "+<digits>" for kind "e164"; the compacted digits for "short" and "emergency"; the
    #: name as dialled for "name".
    number: str
    #: The call leaves the site's country (or, on a NANP site, the US and Canada).
    international: bool = False


#: Emergency and rescue numbers by country calling code, added to the always-on defaults.
NATIONAL_EMERGENCY: dict[str, tuple[str, ...]] = {
    "1": ("911",),
    "7": ("112", "101", "102", "103"),
    "27": ("10111", "10177", "112"),
    "31": ("112",),
    "32": ("112", "100", "101"),
    "33": ("15", "17", "18", "112", "114", "115", "119", "191", "196", "197"),
    "34": ("112", "091", "092", "061", "062", "080", "085"),
    "39": ("112", "113", "115", "118"),
    "41": ("112", "117", "118", "144"),
    "43": ("112", "122", "133", "144"),
    "44": ("999", "112"),
    "46": ("112",),
    "49": ("110", "112"),
    "52": ("911",),
    "55": ("190", "192", "193"),
    "61": ("000", "112", "106"),
    "64": ("111",),
    "81": ("110", "118", "119"),
    "86": ("110", "119", "120", "122"),
    "91": ("112", "100", "101", "102", "108"),
    "353": ("112", "999"),
}

#: NANP area codes outside the US and Canada: dialled like domestic numbers (+1 ...) but billed
#: as international, and the classic toll-fraud destinations (Caribbean "one-ring" scams).
NANP_FOREIGN_AREA_CODES = frozenset(
    {
        "242", "246", "264", "268", "284", "345", "441", "473", "649", "658", "664",
        "721", "758", "767", "784", "809", "829", "849", "868", "869", "876",
    }
)  # fmt: skip

#: Premium-rate and revenue-share numbers ("no-premium" template) are classified with
#: phonenumbers (Google's libphonenumber metadata, per region): PREMIUM_RATE and SHARED_COST are
#: refused, TOLL_FREE never. The two hand-kept tables below are fallbacks for what that
#: metadata misses, and only for that.
#:
#: Blocks consulted when phonenumbers cannot classify a number at all (UNKNOWN: a wrong length,
#: an unassigned range, or a range its metadata does not type). A switch that routes on the
#: leading digits may still connect "+49 900 1234567 8" to a premium line, so a number of the
#: wrong length inside a country's premium block is refused as the block. E.164 prefixes.
PREMIUM_BLOCKS: tuple[str, ...] = (
    "+1900",  # NANP premium
    "+449",  # UK 09
    "+4487",  # UK 087 revenue share
    "+3389",  # France 089
    "+3308",  # France 08 with the trunk 0 kept (seen from some PBXs)
    "+49900",  # Germany 0900
    "+49137",  # Germany 0137 televoting
    "+49118",  # Germany directory enquiries (phonenumbers types none of 118xx)
    "+39899",  # Italy
    "+39892",
    "+39895",
    "+34803",  # Spain
    "+34806",
    "+34807",
    "+34905",  # Spain televoting (phonenumbers types none of it)
    "+31900",  # Netherlands
    "+31906",
    "+31909",
    "+3290",  # Belgium 090x
    "+43900",  # Austria
    "+43930",
    "+43931",
    "+43939",
    "+41900",  # Switzerland
    "+41901",
    "+41906",
    "+35315",  # Ireland 15xx (valid Dublin numbers +353 1 5xx are FIXED_LINE: not touched)
    "+46900",  # Sweden
    "+46939",
    "+46944",
    "+61190",  # Australia
    "+64900",  # New Zealand
    "+979",  # International Premium Rate Service
    "+808",  # International Shared Cost Service
)
#: Ranges phonenumbers classifies as something ordinary that are revenue-share in practice,
#: refused whatever their type (except toll-free). E.164 prefixes.
PREMIUM_OVERRIDES: tuple[str, ...] = (
    "+4470",  # UK 070 "personal numbers": PERSONAL_NUMBER there, a classic fraud range
)
#: NANP "976" exchanges (premium in most area codes; FIXED_LINE_OR_MOBILE in phonenumbers).
PREMIUM_PATTERNS: tuple[str, ...] = (r"\+1[2-9]\d{2}976\d{4}",)
_PREMIUM_PATTERN = re.compile("|".join(PREMIUM_PATTERNS))

#: What the "no-premium" template asks of a number.
NumberRate = Literal["premium", "shared-cost", "toll-free", "other", "unknown"]
_RATES: dict[int, NumberRate] = {
    PhoneNumberType.PREMIUM_RATE: "premium",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.UNKNOWN: "unknown",
}


@lru_cache(maxsize=4096)
def number_rate(e164: str) -> NumberRate:
    """How phonenumbers' metadata classifies an E.164 number ("+<digits>").

    phonenumbers loads a region's metadata once, on first use, and keeps it; the bounded cache
    spares parsing again the numbers a site dials over and over.
    """
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return "unknown"
    return _RATES.get(phonenumbers.number_type(parsed), "other")


@lru_cache(maxsize=4096)
def is_premium(e164: str) -> bool:
    """Whether the "no-premium" template refuses ``e164``: premium-rate and shared-cost
    numbers (both revenue-share: the caller pays more and part of it goes to the holder),
    never a toll-free one, with the hand-kept fallbacks above where phonenumbers is blind."""
    rate = number_rate(e164)
    if rate in ("premium", "shared-cost"):
        return True
    if rate == "toll-free":
        return False
    if e164.startswith(PREMIUM_OVERRIDES) or _PREMIUM_PATTERN.fullmatch(e164) is not None:
        return True
    return rate == "unknown" and e164.startswith(PREMIUM_BLOCKS)


#: Satellite and "international networks" codes ("no-satellite" template): expensive, rarely
#: dialled by a business, a favourite of toll fraud.
SATELLITE_PREFIXES: tuple[str, ...] = ("+870", "+881", "+882", "+883")


def compact(dialled: str) -> str:
    """Remove visual separators and surrounding blanks."""
    return _SEPARATORS.sub("", dialled.strip())


def emergency_numbers(
    country_code: str, base: Iterable[str], *, national: bool = True
) -> frozenset[str]:
    """The emergency set for a site: ``base`` plus (when asked) its country's own numbers."""
    numbers = set(base)
    if national:
        numbers.update(NATIONAL_EMERGENCY.get(country_code, ()))
    return frozenset(numbers)


class NumberPlan:
    """Turns what a phone dialled into a :class:`DialledNumber` for one site."""

    def __init__(self, settings: DialPlanSettings, emergency: Iterable[str]) -> None:
        self._s = settings
        self._emergency = frozenset(emergency)
        self._home = "+" + settings.country_code

    @property
    def emergency(self) -> frozenset[str]:
        return self._emergency

    def is_emergency(self, dialled: str) -> bool:
        """Whether a dialled string (Request-URI user) is an emergency number."""
        digits = compact(dialled)
        if digits in self._emergency:
            return True
        prefix = self._s.outside_line_prefix
        return (
            bool(prefix)
            and digits.startswith(prefix)
            and digits[len(prefix) :] in (self._emergency)
        )

    def classify(self, dialled: str) -> DialledNumber:
        """Normalise ``dialled``; never raises, whatever the phone sent."""
        s = self._s
        digits = compact(dialled)
        if self.is_emergency(digits):
            return DialledNumber(dialled, "emergency", digits)
        if s.outside_line_prefix and digits.startswith(s.outside_line_prefix):
            digits = digits[len(s.outside_line_prefix) :]
        e164 = self._to_e164(digits)
        if e164 is not None:
            return DialledNumber(dialled, "e164", e164, self.is_international(e164))
        if digits and len(digits) <= s.short_code_max_length and _SHORT.fullmatch(digits):
            return DialledNumber(dialled, "short", digits)
        name = dialled.strip()
        if _NAME.fullmatch(name):
            # Names cannot reach the PSTN: the provider's PBX routes them (or refuses them).
            return DialledNumber(dialled, "name", name)
        return DialledNumber(dialled, "invalid", digits)

    def format(self, number: DialledNumber, style: NumberFormat) -> str:
        """``number`` as a trunk wants it in a Request-URI, To, From or P-Asserted-Identity.

        Only E.164 numbers change form; short codes, names and emergency numbers go exactly as
        dialled (compacted), whatever the style: an emergency number must reach the provider
        as the digits the caller dialled.
        """
        if number.kind != "e164" or style == "e164":
            return number.number if number.kind != "name" else number.dialled.strip()
        if style == "as-dialled":
            return compact(number.dialled)
        digits = number.number[1:]
        if style == "e164-no-plus":
            return digits
        s = self._s
        if number.number.startswith(self._home) and not self.is_international(number.number):
            national = digits[len(s.country_code) :]
            return national if s.national_prefix_optional else s.national_prefix + national
        return s.international_prefix + digits

    def is_international(self, e164: str) -> bool:
        if not e164.startswith(self._home):
            return True
        # Country codes are prefix-free, so only NANP needs a second look.
        return self._s.country_code == "1" and e164[2:5] in NANP_FOREIGN_AREA_CODES

    def _to_e164(self, digits: str) -> str | None:
        s = self._s
        if digits.startswith("+"):
            return _e164(digits[1:])
        if not digits.isdigit():
            return None
        # International before national: "00" must not be read as national prefix "0".
        if digits.startswith(s.international_prefix):
            return _e164(digits[len(s.international_prefix) :])
        nsn_lengths = range(s.national_min_length, s.national_max_length + 1)
        if s.national_prefix and digits.startswith(s.national_prefix):
            rest = digits[len(s.national_prefix) :]
            if len(rest) in nsn_lengths:
                return _e164(s.country_code + rest)
        if s.national_prefix_optional and len(digits) in nsn_lengths:
            return _e164(s.country_code + digits)
        if s.area_code and len(digits) == s.local_length:
            return _e164(s.country_code + s.area_code + digits)
        return None


def _e164(digits: str) -> str | None:
    # E.164 numbers are at most 15 digits and no country code starts with 0.
    if digits.isdigit() and digits.isascii() and 1 < len(digits) <= 15 and digits[0] != "0":
        return "+" + digits
    return None
