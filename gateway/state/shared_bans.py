"""Bans shared by every gateway on one Redis: a scanner banned at one site is banned at all.

The list is the hash ``smg:shared:bans`` (field: the address; value: a ``SharedBan`` as JSON,
expiry in Unix time so every site reads the same end, and the site that made it); changes are
also published on ``smg:shared:bans:events`` so the others apply them at once. Every few
seconds, and after any outage, each gateway reads the whole hash again: a message lost while
it was away is made good then, expired entries are removed, and its own bans made during the
outage are published.

``BanShareTracker`` is the sans-IO half: it knows what this gateway believes the shared list
holds and turns the engine's bans into what to publish and what to lift. ``SharedBans`` is the
glue on the Redis link. The policy engine never talks to Redis: it gets remote bans through
``PolicyEngine.remote_ban`` / ``remote_lift``, and its own bans are read with ``export_bans``.
The local ban file (``gateway.ban_file``) is kept exactly as on a single box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec
from redis.exceptions import RedisError

from gateway.policy.bans import PersistedBan, SharedBan
from gateway.state.redis_store import BANS_CHANNEL, SHARED_BANS, RedisLink
from gateway.state.tasks import stop_tasks

__all__ = ["BanMessage", "BanShareTracker", "SharedBans"]

log = logging.getLogger("gateway.bans")

#: Seconds between full reads of the shared list.
_RESYNC = 5.0
#: Expiry differences below this are the same ban (clock conversions round).
_SAME = 1.0


class BanMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One change on the channel; ``writer`` tells a gateway its own messages."""

    op: Literal["ban", "lift"]
    writer: str
    site: str
    address: str
    ban: SharedBan | None = None


class BanShareTracker:
    """What this gateway believes the shared list holds (sans-IO)."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.known: dict[str, SharedBan] = {}
        #: Addresses the engine here had banned at the last commit: only their absence is a
        #: lift (a shared ban this site is exempt from was never held, and lifts nothing).
        self.held: set[str] = set()

    def local_changes(
        self, bans: Iterable[PersistedBan], wall: float
    ) -> tuple[list[SharedBan], list[str]]:
        """The engine's bans now (Unix times) against the shared list: bans to publish (new or
        longer), and addresses lifted here (gone before their expiry). Nothing is committed:
        call ``committed`` once Redis took them."""
        current = {b.address: b for b in bans if b.expires_at > wall}
        publish = []
        for address, ban in current.items():
            known = self.known.get(address)
            if known is None or ban.expires_at > known.expires_at + _SAME:
                publish.append(
                    SharedBan(
                        address, ban.rule, ban.banned_at, ban.expires_at, ban.offences, self.site
                    )
                )
        lifts = [
            address
            for address, known in self.known.items()
            if address in self.held and address not in current and known.expires_at > wall + _SAME
        ]
        return publish, lifts

    def committed(
        self, published: Iterable[SharedBan], lifted: Iterable[str], held: Iterable[str]
    ) -> None:
        """Redis took ``published`` and ``lifted``; ``held``: the engine's bans then."""
        for ban in published:
            self.known[ban.address] = ban
        for address in lifted:
            self.known.pop(address, None)
        self.held = set(held)

    def remote_ban(self, ban: SharedBan, applied: bool) -> None:
        """A ban from another gateway (in the shared list whether or not it applied here)."""
        known = self.known.get(ban.address)
        if known is None or ban.expires_at > known.expires_at:
            self.known[ban.address] = ban
        if applied:
            self.held.add(ban.address)

    def remote_lift(self, address: str) -> None:
        self.known.pop(address, None)
        self.held.discard(address)

    def in_force(self, wall: float) -> list[SharedBan]:
        """The shared list as this gateway knows it: bans not yet expired at Unix time
        ``wall`` (this site's and the others', each with the site that made it), soonest to
        expire first."""
        return sorted(
            (b for b in self.known.values() if b.expires_at > wall), key=lambda b: b.expires_at
        )

    def resync(
        self, shared: Mapping[str, SharedBan], wall: float
    ) -> tuple[list[SharedBan], list[str], list[str]]:
        """The whole shared list read again: (bans to apply here, addresses lifted elsewhere,
        expired entries to remove from the list)."""
        expired = [a for a, b in shared.items() if b.expires_at <= wall]
        live = {a: b for a, b in shared.items() if b.expires_at > wall}
        apply = []
        for address, ban in live.items():
            known = self.known.get(address)
            if known is None or ban.expires_at > known.expires_at + _SAME:
                apply.append(ban)
        lifted = [
            a for a, known in self.known.items() if a not in live and known.expires_at > wall
        ]
        for ban in apply:
            self.known[ban.address] = ban
        for address in lifted + expired:
            self.known.pop(address, None)
            self.held.discard(address)
        return apply, lifted, expired


class SharedBans:
    """Publishes this gateway's bans and applies the others', on the Redis link.

    ``export`` gives the engine's bans in Unix time; ``apply(ban)`` and ``lift(address, site)``
    hand remote changes to the engine (True when they changed it); ``changed`` lets the glue
    drain the engine's security events; ``wall`` is Unix time.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        export: Callable[[], list[PersistedBan]],
        apply: Callable[[SharedBan], bool],
        lift: Callable[[str, str], bool],
        changed: Callable[[], None],
        wall: Callable[[], float],
    ) -> None:
        self.link = link
        self._stopping = False
        self.tracker = BanShareTracker(link.site)
        self._export = export
        self._apply = apply
        self._lift = lift
        self._changed = changed
        self._wall = wall
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_due = True
        #: Status: bans in the shared list as last read or written, and the last sync time.
        self.last_sync: float | None = None
        self.received = 0
        self.published = 0

    @property
    def count(self) -> int:
        wall = self._wall()
        return sum(1 for b in self.tracker.known.values() if b.expires_at > wall)

    def in_force(self) -> list[SharedBan]:
        """The shared bans in force now (``gateway bans list``)."""
        return self.tracker.in_force(self._wall())

    def start(self) -> None:
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publisher()), loop.create_task(self._subscriber())]

    def poke(self) -> None:
        """The engine's ban list moved: publish soon."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks, "the shared ban list's Redis tasks")

    # ------------------------------------------------------------- publishing

    async def _publisher(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_resync = 0.0
        while not self._stopping:
            try:
                if self._resync_due or loop.time() >= next_resync:
                    await self._resync()
                    self._resync_due = False
                    next_resync = loop.time() + _RESYNC
                await self._publish()
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                self._resync_due = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()

    async def _publish(self) -> None:
        wall = self._wall()
        bans = self._export()
        publish, lifts = self.tracker.local_changes(bans, wall)
        held = [b.address for b in bans if b.expires_at > wall]
        if not publish and not lifts:
            self.tracker.committed((), (), held)
            return
        client = self.link.client
        pipe = client.pipeline(transaction=True)
        for ban in publish:
            pipe.hset(SHARED_BANS, ban.address, msgspec.json.encode(ban))
            message = BanMessage("ban", self.link.writer, self.link.site, ban.address, ban)
            pipe.publish(BANS_CHANNEL, msgspec.json.encode(message))
        for address in lifts:
            pipe.hdel(SHARED_BANS, address)
            message = BanMessage("lift", self.link.writer, self.link.site, address)
            pipe.publish(BANS_CHANNEL, msgspec.json.encode(message))
        await pipe.execute()
        self.link.went_up()
        self.tracker.committed(publish, lifts, held)
        self.published += len(publish) + len(lifts)
        for address in lifts:
            log.info("ban on %s lifted at site %s: lifted on the shared list", address, self.site)

    @property
    def site(self) -> str:
        return self.link.site

    async def _resync(self) -> None:
        raw = await self.link.client.hgetall(SHARED_BANS)
        shared: dict[str, SharedBan] = {}
        for field, value in raw.items():
            try:
                ban = msgspec.json.decode(value, type=SharedBan)
            except msgspec.DecodeError:
                continue
            shared[field.decode() if isinstance(field, bytes) else str(field)] = ban
        apply, lifted, expired = self.tracker.resync(shared, self._wall())
        if expired:
            await self.link.client.hdel(SHARED_BANS, *expired)
        self.link.went_up()
        self.last_sync = self._wall()
        moved = False
        for ban in apply:
            applied = self._apply(ban)
            self.tracker.remote_ban(ban, applied)
            moved = applied or moved
        for address in lifted:
            moved = self._lift(address, "shared list") or moved
        if moved:
            self._changed()

    # ------------------------------------------------------------- receiving

    async def _subscriber(self) -> None:
        pause = 0.5
        while not self._stopping:
            pubsub = self.link.client.pubsub()
            try:
                await pubsub.subscribe(BANS_CHANNEL)
                # Messages missed while unsubscribed: read the whole list again.
                self._resync_due = True
                self.poke()
                pause = 0.5
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._receive(message)
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _receive(self, raw: Mapping[str, Any]) -> None:
        try:
            message = msgspec.json.decode(raw.get("data", b""), type=BanMessage)
        except (msgspec.DecodeError, TypeError):
            return
        if message.writer == self.link.writer:
            return
        self.received += 1
        self.last_sync = self._wall()
        moved = False
        if message.op == "ban" and message.ban is not None:
            moved = self._apply(message.ban)
            self.tracker.remote_ban(message.ban, moved)
        elif message.op == "lift":
            self.tracker.remote_lift(message.address)
            moved = self._lift(message.address, message.site)
        if moved:
            self._changed()
