"""Policy settings: the ``[policy]`` table of the gateway configuration and its sub-tables.

Every Struct is frozen and rejects unknown fields, so a typo in the operator's TOML is an error
naming the field rather than a silently ignored rule. Defaults are chosen to be safe for a small
site that has not tuned anything: private LAN ranges only, no WAN peer beyond the provider's own
addresses, no international or premium-rate dialling, modest call caps, and scanner and
brute-force bans switched on.

Example::

    [policy.allowlist]
    lan = ["192.168.10.0/24"]
    wan = ["203.0.113.0/24"]

    [policy.dialplan]
    country_code = "44"
    national_prefix = "0"
    international_prefix = "00"
    national_min_length = 9
    national_max_length = 10
    national_prefix_optional = false
    templates = ["no-international", "no-premium"]

    [[policy.dialplan.rules]]
    name = "out-of-hours"
    action = "deny"
    pattern = ".*"
    window = { days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "18:00",
               when = "outside" }

    [policy.dialplan.phones."201"]
    templates = ["no-premium"]          # this phone may call abroad

    [policy.caps.phone]
    concurrent = 2
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import msgspec

#: Dial-plan templates the engine knows; see ``numbering.TEMPLATES``.
#: The templates on by default.
TEMPLATE_NAMES = ("no-international", "no-premium", "no-satellite")
#: Every template an operator may name ("no-names": refuse named destinations such as
#: "reception" instead of passing them to the provider's PBX).
KNOWN_TEMPLATES = (*TEMPLATE_NAMES, "no-names")

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


def _check_cidrs(cidrs: tuple[str, ...], field: str) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{field}: {cidr!r} is not an IPv4 or IPv6 address or CIDR") from None


def _check_digits(value: str, field: str, *, allow_empty: bool = True) -> None:
    if (value or not allow_empty) and not value.isdigit():
        raise ValueError(f"{field} must be digits only, got {value!r}")


class AllowlistSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which sources may talk to the gateway, per side (CIDR, IPv4 and IPv6)."""

    #: LAN sources (phones) that may use the gateway. Default: the private ranges, since the LAN
    #: listener binds to the voice VLAN only; narrow it to the phones' subnet.
    lan: tuple[str, ...] = (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
    #: WAN peers allowed besides the provider addresses the glue resolves from the trunk's DNS
    #: name (``PolicyEngine.set_provider_peers``). Empty: only those.
    wan: tuple[str, ...] = ()
    #: "drop" answers nothing (a scanner learns nothing); "reject" answers 403.
    on_deny: Literal["drop", "reject"] = "drop"

    def __post_init__(self) -> None:
        _check_cidrs(self.lan, "lan")
        _check_cidrs(self.wan, "wan")


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A token bucket: ``rate`` requests per second sustained, ``burst`` at once. 0 = off."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 0:
            raise ValueError("rate and burst must be >= 0")
        if self.rate > 0 and self.burst < 1:
            raise ValueError("burst must be >= 1 when rate is set")


#: User-Agent fragments of well-known SIP scanners and attack tools (case-insensitive).
DEFAULT_SCANNER_USER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sundayddr",
    "sip-scan",
    "sipscan",
    "iwar",
    "smap",
    "pplsip",
    "sipptk",
    "voipbuster",
)


class FloodSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Flood, brute-force and scan defence."""

    #: Every request from one source.
    per_source: RateLimit = RateLimit(rate=20.0, burst=60.0)
    #: REGISTERs from one source (a digest registration costs two).
    register: RateLimit = RateLimit(rate=1.0, burst=10.0)
    #: INVITEs from one source.
    invite: RateLimit = RateLimit(rate=2.0, burst=10.0)
    #: All requests from all sources together; over it requests are dropped, nobody is banned.
    site: RateLimit = RateLimit(rate=300.0, burst=600.0)
    #: First ban; each repeat offence multiplies it by ``ban_growth`` up to ``ban_max_seconds``.
    ban_seconds: float = 600.0
    ban_growth: float = 4.0
    ban_max_seconds: float = 7 * 86400.0
    #: How long an offence is remembered when deciding how long the next ban is.
    offence_memory_seconds: float = 30 * 86400.0
    #: Authentication failures (401/407 to a request with credentials, 403) within the window
    #: that ban a source; a success resets the count.
    auth_failures: int = 5
    auth_window_seconds: float = 300.0
    #: Scanner User-Agent fragments; a match bans at once for ``scanner_ban_seconds``.
    scanner_user_agents: tuple[str, ...] = DEFAULT_SCANNER_USER_AGENTS
    scanner_ban_seconds: float = 86400.0
    #: Distinct unknown users addressed by one source within the window that count as
    #: enumeration (banned at once, for ``scanner_ban_seconds``).
    enumeration_users: int = 10
    enumeration_window_seconds: float = 60.0
    #: Sources that are never banned (still rate-limited): monitoring hosts, a second provider.
    never_ban: tuple[str, ...] = ()
    #: Per-source state kept at most; spoofed floods must not grow memory without bound.
    max_tracked_sources: int = 20000

    def __post_init__(self) -> None:
        _check_cidrs(self.never_ban, "never_ban")
        if self.ban_seconds <= 0 or self.ban_max_seconds < self.ban_seconds:
            raise ValueError("need 0 < ban_seconds <= ban_max_seconds")
        if self.ban_growth < 1:
            raise ValueError("ban_growth must be >= 1")
        if self.auth_failures < 1 or self.enumeration_users < 2:
            raise ValueError("auth_failures must be >= 1 and enumeration_users >= 2")
        if self.max_tracked_sources < 100:
            raise ValueError("max_tracked_sources must be >= 100")


class TimeWindowSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When a dial-plan rule applies, in the site's local time.

    ``end`` <= ``start`` wraps past midnight (22:00-06:00); ``days`` are the days the window
    opens on. ``when = "outside"`` makes out-of-hours rules easy: the rule applies whenever the
    wall clock is not inside the window.
    """

    start: str = "00:00"
    end: str = "24:00"
    days: tuple[str, ...] = _WEEKDAYS
    when: Literal["inside", "outside"] = "inside"

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if not _HHMM.match(value):
                raise ValueError(f"time {value!r} must be HH:MM (00:00 to 24:00)")
        for day in self.days:
            if day not in _WEEKDAYS:
                raise ValueError(f"day {day!r} must be one of {', '.join(_WEEKDAYS)}")


class DialRuleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One allow or deny rule. Prefixes starting with "+" match the E.164 number (spaces are
    ignored: "+44 9"); others match a short code as dialled. ``pattern`` is a regular
    expression that must match the whole E.164 number (or short code)."""

    name: str
    action: Literal["allow", "deny"]
    prefixes: tuple[str, ...] = ()
    pattern: str = ""
    window: TimeWindowSettings | None = None
    #: Text for the Warning header when this rule refuses a call.
    message: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"rule name {self.name!r}: use lower-case letters, digits, . _ -")
        if not self.prefixes and not self.pattern:
            raise ValueError(f"rule {self.name!r} needs prefixes or a pattern")
        for prefix in self.prefixes:
            # "+" alone matches every E.164 number: a legitimate "deny everything" rule.
            if not re.fullmatch(r"\+[0-9 ]*|[0-9*#][0-9*# ]*", prefix):
                raise ValueError(f"rule {self.name!r}: bad prefix {prefix!r}")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad pattern: {exc}") from None


def _check_templates(templates: tuple[str, ...] | None) -> None:
    for name in templates or ():
        if name not in KNOWN_TEMPLATES:
            raise ValueError(f"unknown template {name!r}; known: {', '.join(KNOWN_TEMPLATES)}")


class CapLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Call caps for one phone or the whole site; 0 means no limit (``gateway audit`` warns).

    Per-hour and per-day caps are rolling windows (the last 3600 s, the last 24 h), so a
    fraudster cannot double up across midnight.
    """

    concurrent: int
    calls_per_hour: int
    minutes_per_day: float
    international_minutes_per_day: float

    def __post_init__(self) -> None:
        if min(self.concurrent, self.calls_per_hour) < 0:
            raise ValueError("caps must be >= 0")
        if min(self.minutes_per_day, self.international_minutes_per_day) < 0:
            raise ValueError("caps must be >= 0")


class GroupPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Overrides for a group of phones (the first group listing a phone wins)."""

    phones: tuple[str, ...] = ()
    #: Replaces the site's templates for members; None inherits them.
    templates: tuple[str, ...] | None = None
    rules: tuple[DialRuleSettings, ...] = ()
    caps: CapLimits | None = None

    def __post_init__(self) -> None:
        _check_templates(self.templates)


class PhonePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Overrides for one phone (keyed by its SIP user / extension); beats its group."""

    templates: tuple[str, ...] | None = None
    rules: tuple[DialRuleSettings, ...] = ()
    caps: CapLimits | None = None

    def __post_init__(self) -> None:
        _check_templates(self.templates)


class DialPlanSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Number normalisation (to E.164) and the allow/deny rules. Defaults: a NANP site."""

    country_code: str = "1"
    national_prefix: str = "1"
    international_prefix: str = "011"
    #: Lengths of a national significant number (after the national prefix).
    national_min_length: int = 10
    national_max_length: int = 10
    #: Whether a national number may be dialled without the national prefix (NANP: yes).
    national_prefix_optional: bool = True
    #: Local dialling: subscriber numbers of ``local_length`` digits get this area code.
    area_code: str = ""
    local_length: int = 0
    #: Numbers up to this many characters that are not otherwise understood are short codes
    #: (extensions, feature codes like *97) and go to the provider's PBX as dialled.
    short_code_max_length: int = 6
    allow_short_codes: bool = True
    #: Named destinations ("reception", "bob"): the provider's PBX routes them, so they pass
    #: as dialled; the "no-names" template or a rule refuses them.
    allow_names: bool = True
    #: A digit some phones dial to get an outside line ("9"); stripped before anything else.
    outside_line_prefix: str = ""
    templates: tuple[str, ...] = TEMPLATE_NAMES
    rules: tuple[DialRuleSettings, ...] = ()
    groups: dict[str, GroupPolicy] = {}
    phones: dict[str, PhonePolicy] = {}
    #: What happens to a number no rule or template matched.
    default_action: Literal["allow", "deny"] = "allow"
    #: IANA zone for time windows; empty: the wall clock the glue passes is already local.
    timezone: str = ""

    def __post_init__(self) -> None:
        _check_digits(self.country_code, "country_code", allow_empty=False)
        _check_digits(self.national_prefix, "national_prefix")
        _check_digits(self.international_prefix, "international_prefix", allow_empty=False)
        _check_digits(self.area_code, "area_code")
        _check_digits(self.outside_line_prefix, "outside_line_prefix")
        if not 1 <= len(self.country_code) <= 3:
            raise ValueError("country_code must be 1 to 3 digits")
        if not 1 <= self.national_min_length <= self.national_max_length <= 14:
            raise ValueError("need 1 <= national_min_length <= national_max_length <= 14")
        if self.area_code and self.local_length < 1:
            raise ValueError("area_code needs local_length")
        _check_templates(self.templates)
        if self.timezone:
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(self.timezone)
            except (KeyError, ValueError):
                raise ValueError(f"unknown timezone {self.timezone!r}") from None


class SpikeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Outbound call-rate spike lock."""

    enabled: bool = True
    #: The recent window whose call count is compared with the baseline.
    window_seconds: float = 300.0
    #: How far back the baseline (average calls per window) reaches.
    baseline_seconds: float = 86400.0
    #: Lock when the recent count exceeds ``factor`` times the baseline ...
    factor: float = 4.0
    #: ... and is at least this many calls (a quiet site's baseline is near zero).
    min_calls: int = 15
    #: The lock lifts by itself after this long, or earlier by an operator.
    lock_seconds: float = 1800.0

    def __post_init__(self) -> None:
        if self.window_seconds < 60 or self.baseline_seconds < 2 * self.window_seconds:
            raise ValueError("need window_seconds >= 60 and baseline_seconds >= 2 windows")
        if self.factor <= 1 or self.min_calls < 1 or self.lock_seconds <= 0:
            raise ValueError("need factor > 1, min_calls >= 1, lock_seconds > 0")


class CapSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Credit caps: per phone (overridable per group and phone) and for the whole site."""

    phone: CapLimits = CapLimits(
        concurrent=2, calls_per_hour=20, minutes_per_day=240.0, international_minutes_per_day=30.0
    )
    site: CapLimits = CapLimits(
        concurrent=8, calls_per_hour=60, minutes_per_day=1200.0, international_minutes_per_day=60.0
    )
    spike: SpikeSettings = SpikeSettings()


class EmergencySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Emergency numbers: these always go through from an allowed LAN phone."""

    #: Always included, whatever the site's country.
    numbers: tuple[str, ...] = ("911", "112", "999", "000")
    #: Add the national emergency and rescue numbers of the site's country code.
    national: bool = True

    def __post_init__(self) -> None:
        for number in self.numbers:
            _check_digits(number, "emergency number", allow_empty=False)


class EventSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Security events."""

    #: Repeats of the same refusal (source, rule) within this time are counted but folded
    #: into the next event, so an attack cannot flood the log. Bans are never folded.
    coalesce_seconds: float = 60.0
    #: The warn-agent of Warning headers (RFC 3261 §20.43).
    warning_agent: str = "gateway"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9.:_-]+", self.warning_agent):
            raise ValueError("warning_agent must be a host name or token")


class PolicySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[policy]`` table."""

    allowlist: AllowlistSettings = AllowlistSettings()
    flood: FloodSettings = FloodSettings()
    dialplan: DialPlanSettings = DialPlanSettings()
    caps: CapSettings = CapSettings()
    emergency: EmergencySettings = EmergencySettings()
    events: EventSettings = EventSettings()
