"""The dial plan: allow and deny rules by prefix and pattern, templates, per-phone and per-group
overrides, and time windows.

Theory of operation: a call is checked against an ordered list of rules and the first rule that
matches decides. The list for a phone is, most specific first::

    the phone's own rules -> its group's rules -> the site's rules
    -> the templates in force (the phone's if set, else its group's, else the site's)
    -> the default action

so a phone-level ``allow +44`` rule lets one phone call the UK while the site keeps
"no-international", and an out-of-hours ``deny .*`` rule at site level still stops it at night
unless the phone has its own allow. Emergency numbers never reach this module: the engine lets
them through before asking (invariant 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

from gateway.policy.numbering import SATELLITE_PREFIXES, DialledNumber, is_premium
from gateway.policy.settings import (
    DialPlanSettings,
    DialRuleSettings,
    TimeWindowSettings,
)

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _parse_hhmm(value: str) -> time | None:
    """HH:MM as a time; "24:00" is None, meaning end of day."""
    if value == "24:00":
        return None
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A weekly window in local time; see ``TimeWindowSettings``."""

    start: time
    end: time | None  # None: until midnight
    days: frozenset[int]  # datetime.weekday() values the window opens on
    outside: bool

    @classmethod
    def from_settings(cls, s: TimeWindowSettings) -> TimeWindow:
        start = _parse_hhmm(s.start) or time(0, 0)
        return cls(
            start=start,
            end=_parse_hhmm(s.end),
            days=frozenset(_WEEKDAYS.index(d) for d in s.days),
            outside=s.when == "outside",
        )

    def contains(self, wall: datetime) -> bool:
        """Whether the rule applies at local time ``wall``."""
        return self._inside(wall) != self.outside

    def _inside(self, wall: datetime) -> bool:
        now = wall.time().replace(tzinfo=None)
        day = wall.weekday()
        if self.end is None or self.end > self.start:
            return day in self.days and self.start <= now and (self.end is None or now < self.end)
        # Wraps past midnight: the evening part belongs to today, the morning part to the day
        # the window opened on, yesterday.
        if now >= self.start:
            return day in self.days
        return now < self.end and (day - 1) % 7 in self.days


@dataclass(frozen=True, slots=True)
class DialPlanRule:
    """One compiled rule. ``rule`` is the reason code reported when it refuses a call."""

    rule: str
    allow: bool
    e164_prefixes: tuple[str, ...]
    short_prefixes: tuple[str, ...]
    pattern: re.Pattern[str] | None
    window: TimeWindow | None
    message: str

    @classmethod
    def from_settings(cls, s: DialRuleSettings) -> DialPlanRule:
        prefixes = [p.replace(" ", "") for p in s.prefixes]
        return cls(
            rule=f"dialplan.{s.name}",
            allow=s.action == "allow",
            e164_prefixes=tuple(p for p in prefixes if p.startswith("+")),
            short_prefixes=tuple(p for p in prefixes if not p.startswith("+")),
            pattern=re.compile(s.pattern) if s.pattern else None,
            window=TimeWindow.from_settings(s.window) if s.window else None,
            message=s.message or f"calls to this number are not allowed ({s.name})",
        )

    def matches(self, number: DialledNumber, wall: datetime) -> bool:
        if self.window is not None and not self.window.contains(wall):
            return False
        value = number.number
        prefixes = self.e164_prefixes if number.kind == "e164" else self.short_prefixes
        if any(value.startswith(p) for p in prefixes):
            return True
        return self.pattern is not None and self.pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class _International:
    """The "no-international" template; needs the classification, not a prefix."""

    rule: str = "dialplan.no-international"
    allow: bool = False
    message: str = "international calls are not allowed from this phone"

    def matches(self, number: DialledNumber, wall: datetime) -> bool:
        return number.kind == "e164" and number.international


@dataclass(frozen=True, slots=True)
class _Premium:
    """The "no-premium" template: premium-rate and shared-cost numbers as phonenumbers
    classifies them per region, never toll-free ones (``numbering.is_premium``)."""

    rule: str = "dialplan.no-premium"
    allow: bool = False
    message: str = "premium-rate and shared-cost numbers are not allowed"

    def matches(self, number: DialledNumber, wall: datetime) -> bool:
        return number.kind == "e164" and is_premium(number.number)


def _template(name: str) -> DialPlanRule | _International | _Premium:
    if name == "no-international":
        return _International()
    if name == "no-premium":
        return _Premium()
    if name == "no-satellite":
        return DialPlanRule(
            rule="dialplan.no-satellite",
            allow=False,
            e164_prefixes=SATELLITE_PREFIXES,
            short_prefixes=(),
            pattern=None,
            window=None,
            message="satellite and international-network numbers are not allowed",
        )
    if name == "no-names":
        return DialPlanRule(
            rule="dialplan.no-names",
            allow=False,
            e164_prefixes=(),
            short_prefixes=(),
            pattern=re.compile(r"[A-Za-z].*"),
            window=None,
            message="named destinations are not allowed",
        )
    raise ValueError(f"unknown dial-plan template {name!r}")


_AnyRule = DialPlanRule | _International | _Premium


@dataclass(frozen=True, slots=True)
class DialDecision:
    """The dial plan's answer for one call."""

    allowed: bool
    rule: str
    message: str


class DialPlan:
    """Compiled dial plan for a site; ``decide`` is pure."""

    def __init__(self, settings: DialPlanSettings) -> None:
        self._s = settings
        self._zone = ZoneInfo(settings.timezone) if settings.timezone else None
        site_rules = [DialPlanRule.from_settings(r) for r in settings.rules]
        self._site_chain: tuple[_AnyRule, ...] = (
            *site_rules,
            *(_template(t) for t in settings.templates),
        )
        self._group_of: dict[str, str] = {}
        for group_name, group in settings.groups.items():
            for phone in group.phones:
                self._group_of.setdefault(phone, group_name)
        self._site_rules = tuple(site_rules)
        self._chains: dict[str, tuple[_AnyRule, ...]] = {}

    def group_of(self, phone: str) -> str | None:
        return self._group_of.get(phone)

    def chain_for(self, phone: str) -> tuple[_AnyRule, ...]:
        """The ordered rules for ``phone`` (compiled once per phone that has overrides)."""
        group_name = self._group_of.get(phone)
        phone_policy = self._s.phones.get(phone)
        if group_name is None and phone_policy is None:
            return self._site_chain
        cached = self._chains.get(phone)
        if cached is not None:
            return cached
        group = self._s.groups[group_name] if group_name else None
        templates = self._s.templates
        if group is not None and group.templates is not None:
            templates = group.templates
        if phone_policy is not None and phone_policy.templates is not None:
            templates = phone_policy.templates
        chain: list[_AnyRule] = []
        if phone_policy is not None:
            chain.extend(DialPlanRule.from_settings(r) for r in phone_policy.rules)
        if group is not None:
            chain.extend(DialPlanRule.from_settings(r) for r in group.rules)
        chain.extend(self._site_rules)
        chain.extend(_template(t) for t in templates)
        result = tuple(chain)
        self._chains[phone] = result
        return result

    def local_time(self, wall: datetime) -> datetime:
        """``wall`` in the site's zone (an aware ``wall`` is converted; a naive one is taken
        as already local)."""
        if self._zone is not None and wall.tzinfo is not None:
            return wall.astimezone(self._zone)
        return wall

    def decide(self, phone: str, number: DialledNumber, wall: datetime) -> DialDecision:
        if number.kind == "invalid":
            return DialDecision(False, "dialplan.invalid-number", "the dialled number is invalid")
        local = self.local_time(wall)
        for rule in self.chain_for(phone):
            if rule.matches(number, local):
                return DialDecision(rule.allow, rule.rule, "" if rule.allow else rule.message)
        if number.kind == "short" and not self._s.allow_short_codes:
            return DialDecision(False, "dialplan.short-code", "short codes are not allowed")
        if number.kind == "name" and not self._s.allow_names:
            return DialDecision(False, "dialplan.name", "named destinations are not allowed")
        if self._s.default_action == "deny":
            return DialDecision(False, "dialplan.default-deny", "this number is not allowed")
        return DialDecision(True, "dialplan.default-allow", "")
