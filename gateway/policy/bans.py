"""The ban list: sources refused for a while because of what they did.

A ban lasts ``ban_seconds`` the first time and grows by ``ban_growth`` with every repeat offence
remembered within ``offence_memory_seconds``, up to ``ban_max_seconds``; so a scanner that comes
back after its ban is gone for longer each time, while a phone that once misbehaved is soon
forgiven. Bans expire by themselves; an operator lift also forgets the offences.

Times inside the engine are the caller's monotonic ``now``. Persisted records carry Unix times
instead (``expires_at``), since a monotonic clock restarts with the host; the caller passes the
wall time it wants the two related by.
"""

from __future__ import annotations

import msgspec


class BanRecord(msgspec.Struct, frozen=True):
    """An active ban, in the engine's clock."""

    address: str
    #: The reason code that caused it, e.g. "flood.invite" or "scan.user-agent".
    rule: str
    since: float
    until: float
    #: How many offences (including this one) are remembered for this address.
    offences: int


class PersistedBan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ban as saved to disk, in Unix time."""

    address: str
    rule: str
    banned_at: float
    expires_at: float
    offences: int


class SharedBan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ban as gateways on one Redis share it (``gateway.state.shared_bans``): Unix times, so
    every site reads the same expiry, and the site that made it."""

    address: str
    rule: str
    banned_at: float
    expires_at: float
    offences: int
    site: str


class BanList:
    """Bans by normalised address (see ``allowlist.normalise_address``)."""

    def __init__(
        self,
        *,
        growth: float,
        max_seconds: float,
        offence_memory_seconds: float,
    ) -> None:
        self._growth = growth
        self._max = max_seconds
        self._memory = offence_memory_seconds
        self._bans: dict[str, BanRecord] = {}
        # address -> (offences, time of the last one); outlives the ban itself.
        self._offences: dict[str, tuple[int, float]] = {}
        #: Bumped on every change, so the glue knows when to save.
        self.version = 0

    def get(self, address: str, now: float) -> BanRecord | None:
        record = self._bans.get(address)
        if record is not None and record.until > now:
            return record
        return None

    def ban(self, address: str, rule: str, now: float, base_seconds: float) -> BanRecord:
        count, last = self._offences.get(address, (0, now))
        if now - last > self._memory:
            count = 0
        count += 1
        seconds = min(self._max, base_seconds * self._growth ** (count - 1))
        record = BanRecord(address, rule, now, now + seconds, count)
        self._bans[address] = record
        self._offences[address] = (count, now)
        self.version += 1
        return record

    def lift(self, address: str) -> bool:
        self._offences.pop(address, None)
        removed = self._bans.pop(address, None)
        if removed is not None:
            self.version += 1
        return removed is not None

    def apply(self, record: BanRecord) -> bool:
        """Take a ban decided elsewhere as it is (no offence counted here); False when a ban
        lasting as long or longer is already in force."""
        current = self._bans.get(record.address)
        if current is not None and current.until >= record.until:
            return False
        self._bans[record.address] = record
        self.version += 1
        return True

    def active(self, now: float) -> list[BanRecord]:
        return sorted((r for r in self._bans.values() if r.until > now), key=lambda r: r.until)

    def expire(self, now: float) -> list[BanRecord]:
        """Drop bans that have run out (returned), and offences past memory."""
        gone = [r for r in self._bans.values() if r.until <= now]
        for record in gone:
            del self._bans[record.address]
        for address in [a for a, (_, t) in self._offences.items() if now - t > self._memory]:
            del self._offences[address]
        if gone:
            self.version += 1
        return gone

    def next_expiry(self) -> float | None:
        return min((r.until for r in self._bans.values()), default=None)

    def export(self, now: float, wall: float) -> list[PersistedBan]:
        """Active bans in Unix time; ``wall`` is the Unix time that corresponds to ``now``."""
        offset = wall - now
        return [
            PersistedBan(r.address, r.rule, r.since + offset, r.until + offset, r.offences)
            for r in self.active(now)
        ]

    def restore(self, records: list[PersistedBan], now: float, wall: float) -> int:
        """Load saved bans (expired ones are skipped); returns how many were restored."""
        offset = wall - now
        restored = 0
        for p in records:
            until = p.expires_at - offset
            if until <= now:
                continue
            since = min(p.banned_at - offset, now)
            self._bans[p.address] = BanRecord(p.address, p.rule, since, until, p.offences)
            self._offences[p.address] = (p.offences, since)
            restored += 1
        if restored:
            self.version += 1
        return restored
