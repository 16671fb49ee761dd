"""The phone inventory: which phones register and call through the gateway, what they are,
and whether their firmware is older than the operator allows ("keep phones updated").

Three pure parts, no clock, no I/O (the glue passes Unix times in):

- :func:`parse_user_agent` reads a phone's ``User-Agent`` (or ``Server``) header (RFC 3261
  §20.41, §20.35: ``product [/ version]`` tokens and comments, written however each vendor
  likes) into vendor, model and firmware, from a table of the phones small sites have. A string
  no row matches is kept whole with vendor ``"unknown"``.
- :func:`firmware_key` / :func:`compare_firmware` order firmware versions as their vendors
  number them: dotted numbers compared as numbers ("66.86.0.15" > "66.86.0.9"), a letter suffix
  after its release ("7.6.2" < "7.6.2c" < "7.6.2e"), "6.1.5(a)" as "6.1.5a".
- :class:`PhoneInventory` keeps one entry per phone (``user@address``) fed from the core's
  events: a registration the provider accepted (``PhoneRegistered``) and a call a phone
  started (``CallStarted`` from the LAN). It is bounded (least recently seen goes first), so a
  stream of made-up identities cannot grow it, and a source the policy engine has banned never
  enters it. :class:`MinimumFirmware` holds ``[inventory] minimum_firmware`` ("vendor model"
  or "vendor" -> the lowest version allowed) and says which phones are below it.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

__all__ = [
    "DEFAULT_CAPACITY",
    "VENDORS",
    "InventorySettings",
    "MinimumFirmware",
    "PhoneEntry",
    "PhoneInventory",
    "PhoneModel",
    "check_inventory",
    "compare_firmware",
    "firmware_key",
    "parse_user_agent",
]

#: Phones kept at most; the least recently seen goes when a new one arrives at the bound.
DEFAULT_CAPACITY = 5000
#: Longest User-Agent kept (a header may be long; the inventory need not be).
MAX_USER_AGENT = 200
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- User-Agent parsing


@dataclass(frozen=True, slots=True)
class PhoneModel:
    """What a User-Agent says a phone is."""

    #: "Yealink", "Polycom", "Cisco" ... or "unknown" when no row of the table matched.
    vendor: str
    #: "T46S", "VVX 410", "SPA504G" ...; None when the string names no model.
    model: str | None
    #: The firmware (or soft phone) version as written; None when the string has none.
    firmware: str | None
    #: The header as received (cut at MAX_USER_AGENT characters).
    user_agent: str


@dataclass(frozen=True, slots=True)
class _Row:
    vendor: str
    pattern: re.Pattern[str]
    #: Turns the matched model into the name the inventory shows (and minimums use).
    model: Callable[[str | None], str | None] = lambda m: m


def _rx(text: str) -> re.Pattern[str]:
    return re.compile(text, re.IGNORECASE)


def _underscores(model: str | None) -> str | None:
    return model.replace("_", " ") if model else model


def _cisco_cp(model: str | None) -> str | None:
    # "CP8845" and "CP-8845" are the same phone; the 3PCC (multiplatform) firmware is not.
    if not model:
        return model
    return re.sub(r"^CP-?(\d)", r"CP-\1", model.upper()).replace("-3PCC", " 3PCC")


def _linphone(model: str | None) -> str | None:
    # "Linphonec/5.1.65" is the command-line client; "LinphoneAndroid/5.0.14" the app.
    if model is None or model == "":
        return None
    return "linphonec" if model.lower() == "c" else model


#: One row per product family, tried in order; ``model`` and ``firmware`` are named groups.
_TABLE: tuple[_Row, ...] = (
    _Row("Yealink", _rx(r"^Yealink\s+(?:SIP[- ])?(?P<model>[\w-]+)\s+(?P<firmware>\d[\w.]*)")),
    _Row(
        "Polycom",
        _rx(r"Poly(?:com)?\w*?-(?P<model>[A-Z]+_\w+)-UA/(?P<firmware>\d[\w.]*)"),
        _underscores,
    ),
    _Row(
        "Cisco",
        _rx(r"^Cisco-(?P<model>CP-?\d{4}\w*(?:-3PCC)?)/(?P<firmware>\d[\w.()-]*)"),
        _cisco_cp,
    ),
    _Row("Cisco", _rx(r"^Cisco/(?P<model>[A-Z]+\d+\w*)-(?P<firmware>\d[\w.()]*)")),
    _Row("Linksys", _rx(r"^Linksys/(?P<model>[A-Z]+\d+\w*)-(?P<firmware>\d[\w.()]*)")),
    _Row("Grandstream", _rx(r"^Grandstream\s+(?P<model>[\w-]+)\s+(?P<firmware>\d[\w.]*)")),
    _Row("Snom", _rx(r"^snom(?P<model>[A-Z]?\d+\w*?)(?:-SIP)?[/ ](?P<firmware>\d[\w.]*)")),
    _Row("Panasonic", _rx(r"^Panasonic[_-](?P<model>KX-\w+)/(?P<firmware>\d[\w.]*)")),
    _Row("Fanvil", _rx(r"^Fanvil\s+(?P<model>\w+)\s+(?P<firmware>\d[\w.]*)")),
    _Row("Gigaset", _rx(r"^Gigaset\s+(?P<model>[^/]+?)/(?P<firmware>\d[\w.]*)")),
    _Row("Aastra", _rx(r"^Aastra\s+(?P<model>\w+)/(?P<firmware>\d[\w.]*)")),
    _Row("Mitel", _rx(r"^Mitel\s+(?P<model>\w+)/(?P<firmware>\d[\w.]*)")),
    _Row(
        "Avaya",
        _rx(
            r"^Avaya\s+(?P<model>[\w-]+(?:\s+[A-Za-z][\w-]*)*?)"
            r"(?:\s+SIP)?[/ ]R?(?P<firmware>\d[\w.]*)"
        ),
    ),
    _Row("Obihai", _rx(r"^OBIHAI/(?P<model>OBi\w+)-(?P<firmware>\d[\w.]*)")),
    _Row("Htek", _rx(r"^Htek\s+(?P<model>\w+)\s+V?(?P<firmware>\d[\w.]*)")),
    _Row("AudioCodes", _rx(r"^AUDC-IPPhone/(?P<firmware>\d[\w.]*)\s+\((?P<model>\w+)")),
    _Row(
        "AudioCodes", _rx(r"^AudioCodes-Sip-Gateway-(?P<model>[^/]+?)/v\.?(?P<firmware>\d[\w.]*)")
    ),
    _Row(
        "Alcatel",
        _rx(r"^(?:Alcatel(?:-Lucent)?|ALE)\s+(?P<model>[\w-]+)[/ ]v?(?P<firmware>\d[\w.]*)"),
    ),
    _Row("baresip", _rx(r"^baresip\s+v?(?P<firmware>\d[\w.]*)(?P<model>)")),
    _Row("Linphone", _rx(r"^Linphone[ -]?(?P<model>[A-Za-z]*)/(?P<firmware>\d[\w.]*)"), _linphone),
    _Row("MicroSIP", _rx(r"^MicroSIP/(?P<firmware>\d[\w.]*)(?P<model>)")),
    _Row("Zoiper", _rx(r"^Z\s+(?P<firmware>\d+\.\d[\w.]*)\s+v\d(?P<model>)")),
    _Row("Zoiper", _rx(r"^Zoiper\s+(?:rv|rev\.?|v)?(?P<firmware>\d[\w.]*)(?P<model>)")),
    _Row("SIPp", _rx(r"^SIPp(?:/v?(?P<firmware>\d[\w.]*))?(?P<model>)")),
)

#: Every vendor the table knows (what a minimum's key must start with).
VENDORS: tuple[str, ...] = tuple(dict.fromkeys(row.vendor for row in _TABLE))


def parse_user_agent(text: str | None) -> PhoneModel:
    """Vendor, model and firmware of a User-Agent or Server header value."""
    agent = " ".join((text or "").split())[:MAX_USER_AGENT]
    for row in _TABLE:
        found = row.pattern.search(agent)
        if found is None:
            continue
        model = row.model(found.group("model") or None)
        return PhoneModel(row.vendor, model.strip() if model else None, found["firmware"], agent)
    return PhoneModel(UNKNOWN, None, None, agent)


# --------------------------------------------------------------------------- firmware versions

_TOKENS = re.compile(r"\d+|[a-z]+")


def firmware_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key: numbers as numbers, letters after the release they suffix.

    Separators ("." "-" "(" ")") only split; trailing zero parts do not count ("1.0" equals
    "1.0.0"). A letter part sorts below a number at the same position, so "7.6.2c" < "7.6.2.1"
    and, as vendors mean it, "7.6.2" < "7.6.2c" < "7.6.2e"."""
    parts: list[tuple[int, int, str]] = []
    for token in _TOKENS.findall(version.lower()):
        parts.append((1, int(token), "") if token.isdigit() else (0, 0, token))
    while parts and parts[-1] == (1, 0, ""):
        parts.pop()
    return tuple(parts)


def compare_firmware(a: str, b: str) -> int:
    """-1, 0 or 1 as firmware ``a`` is older than, the same as, or newer than ``b``."""
    ka, kb = firmware_key(a), firmware_key(b)
    return (ka > kb) - (ka < kb)


# --------------------------------------------------------------------------- minimum versions


class InventorySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[inventory]``: the phones the gateway has seen, and the firmware they must have."""

    #: "vendor model" (as ``gateway phones`` shows them, e.g. "Yealink T46S") or "vendor"
    #: alone -> the lowest firmware allowed; phones below it are flagged by ``gateway audit``
    #: and counted on /metrics (``gateway_phones_outdated``).
    minimum_firmware: dict[str, str] = {}
    #: Phones kept at most (least recently seen goes first).
    max_phones: int = DEFAULT_CAPACITY


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_inventory(settings: InventorySettings) -> list[tuple[str, str]]:
    """(field, message) problems of an ``[inventory]`` table, as config.check reports them."""
    problems: list[tuple[str, str]] = []
    known = {v.casefold(): v for v in VENDORS}
    for key, version in settings.minimum_firmware.items():
        field = f"inventory.minimum_firmware.{key}"
        words = key.split()
        if not words or words[0].casefold() not in known:
            close = difflib.get_close_matches(words[0].casefold() if words else "", known, 1)
            hint = f"did you mean {known[close[0]]!r}? " if close else ""
            choices = ", ".join(VENDORS)
            problems.append(
                (field, f"{hint}expected 'vendor' or 'vendor model' of a known vendor ({choices})")
            )
        elif not any(ch.isdigit() for ch in version):
            problems.append(
                (field, f"expected a firmware version such as 66.86.0.15, got {version!r}")
            )
    if not 1 <= settings.max_phones <= 1_000_000:
        problems.append(("inventory.max_phones", f"expected 1..1000000, got {settings.max_phones}"))
    return problems


class MinimumFirmware:
    """The operator's minimum versions; the most specific key ("vendor model") wins."""

    def __init__(self, minimums: Mapping[str, str] | None = None) -> None:
        self._by_key = {_fold(k): v for k, v in (minimums or {}).items()}

    def __len__(self) -> int:
        return len(self._by_key)

    def minimum_for(self, vendor: str, model: str | None) -> str | None:
        if vendor == UNKNOWN:
            return None
        if model:
            found = self._by_key.get(_fold(f"{vendor} {model}"))
            if found is not None:
                return found
        return self._by_key.get(_fold(vendor))

    def outdated(self, phone: PhoneModel) -> bool:
        """Below the minimum for its model; a phone with a minimum whose firmware cannot be
        read is counted too (nothing shows it is up to date)."""
        minimum = self.minimum_for(phone.vendor, phone.model)
        if minimum is None:
            return False
        return phone.firmware is None or compare_firmware(phone.firmware, minimum) < 0


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class PhoneEntry:
    """One phone as the inventory knows it; times are Unix seconds."""

    #: "user@ip": one entry per extension per host, whatever port it uses now.
    key: str
    user: str
    #: "ip:port" it last signalled from, and the transport ("udp", "tcp").
    address: str
    transport: str
    phone: PhoneModel
    first_seen: float
    last_seen: float
    #: Until when the provider's binding holds (0: never registered; only calls seen).
    registered_until: float
    #: The operator's minimum for this model, and whether the phone is below it.
    minimum: str | None
    outdated: bool

    def registered(self, now: float) -> bool:
        return self.registered_until > now


@dataclass(slots=True)
class _Seen:
    user: str
    address: str
    transport: str
    phone: PhoneModel
    first_seen: float
    last_seen: float
    registered_until: float = 0.0


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address else address
    return host.strip("[]")


class PhoneInventory:
    """Phones seen, least recently seen first, at most ``capacity`` of them.

    ``banned(ip)`` is asked before a phone enters or is refreshed: a banned source is never
    added, and its entries go."""

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        minimums: Mapping[str, str] | None = None,
        banned: Callable[[str], bool] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.minimums = MinimumFirmware(minimums)
        self._banned = banned
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        #: Phones pushed out at the bound (a sign of churn or of a flood of identities).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def set_minimums(self, minimums: Mapping[str, str]) -> None:
        self.minimums = MinimumFirmware(minimums)

    def observe(
        self,
        user: str,
        address: str,
        transport: str,
        user_agent: str | None,
        wall: float,
        *,
        registered_for: int | None = None,
    ) -> bool:
        """A phone registered (``registered_for`` seconds; 0: it unregistered) or called
        (None) from ``address`` ("ip:port"). False when it was not taken (a banned source)."""
        host = _host(address)
        key = f"{user}@{host}"
        if self._banned is not None and self._banned(host):
            self.forget_host(host)
            return False
        entry = self._seen.get(key)
        if entry is None:
            entry = _Seen(user, address, transport, parse_user_agent(user_agent), wall, wall)
            self._seen[key] = entry
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
                self.evicted += 1
        else:
            self._seen.move_to_end(key)
            entry.address, entry.transport, entry.last_seen = address, transport, wall
            if user_agent and user_agent != entry.phone.user_agent:
                entry.phone = parse_user_agent(user_agent)
        if registered_for is not None:
            entry.registered_until = wall + registered_for if registered_for > 0 else 0.0
        return True

    def forget_host(self, host: str) -> int:
        """Drop every entry of one address (banned after it entered); how many went."""
        gone = [k for k, e in self._seen.items() if _host(e.address) == host]
        for key in gone:
            del self._seen[key]
        return len(gone)

    def phones(self) -> list[PhoneEntry]:
        """Every phone, by user then address."""
        rows = []
        for key, e in self._seen.items():
            minimum = self.minimums.minimum_for(e.phone.vendor, e.phone.model)
            rows.append(
                PhoneEntry(
                    key,
                    e.user,
                    e.address,
                    e.transport,
                    e.phone,
                    e.first_seen,
                    e.last_seen,
                    e.registered_until,
                    minimum,
                    self.minimums.outdated(e.phone),
                )
            )
        return sorted(rows, key=lambda r: (r.user, r.address))


def outdated_lines(
    phones: Iterable[tuple[str, str, str | None, str | None]], minimums: MinimumFirmware
) -> tuple[int, list[str]]:
    """For the audit: (phones with a minimum, one line per phone below it) from
    (key, vendor, model, firmware) rows."""
    checked = 0
    below: list[str] = []
    for key, vendor, model, firmware in phones:
        minimum = minimums.minimum_for(vendor, model)
        if minimum is None:
            continue
        checked += 1
        if minimums.outdated(PhoneModel(vendor, model, firmware, "")):
            name = f"{vendor} {model}" if model else vendor
            below.append(f"{key} ({name} {firmware or 'firmware unknown'} < {minimum})")
    return checked, below
