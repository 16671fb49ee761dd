"""The calls of an active/standby pair in Redis: the active's writer, the standby's warm copy.

Layout (beside the keeper's ``smg:<site>:registrations`` and ``:caps``):

- ``smg:<site>:calls``: a hash, call key -> ``gateway.state.calls.encode_call`` bytes (SRTP
  keys sealed with AES-256-GCM, bound to the call and the site); a call that ended is HDEL'd.
- ``smg:<site>:calls:events``: a channel; each write publishes the keys it changed, so the
  standby reads just those (a JSON ``CallsChanged``).
- ``smg:<site>:ha:active``: a hash naming the active: ``node``, ``epoch`` (one more at each
  promotion), ``since`` and ``written_at`` (Unix times; ``written_at`` is refreshed each
  second, so a standby knows how fresh its copy is even when no call changes).

The active's writes run in a task of their own, every ``[ha] replicate_interval``: SIP never
waits on Redis. While Redis is away the changes wait in memory (the latest bytes per key) and
go once it answers; the age of the oldest waiting change is the replication lag the active
reports. The standby reads the whole hash at start, then the changed keys as they are
published, and the whole hash again every few seconds to make good a missed message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from redis.exceptions import RedisError

from gateway.state.redis_store import PREFIX, RedisLink
from gateway.state.tasks import stop_tasks

__all__ = [
    "ActiveMarker",
    "CallWriter",
    "CallsChanged",
    "WarmCopy",
    "active_key",
    "calls_channel",
    "calls_key",
    "decode_marker",
]

log = logging.getLogger("gateway.ha")

#: Seconds between the active's marker refreshes, and the standby's full re-reads.
HEARTBEAT = 1.0
RESYNC = 5.0


def calls_key(site: str) -> str:
    return f"{PREFIX}:{site}:calls"


def calls_channel(site: str) -> str:
    return f"{PREFIX}:{site}:calls:events"


def active_key(site: str) -> str:
    return f"{PREFIX}:{site}:ha:active"


class ActiveMarker(msgspec.Struct, frozen=True):
    """Who is active at a site, as written in ``smg:<site>:ha:active``."""

    node: str
    epoch: int
    since: float
    written_at: float


class CallsChanged(msgspec.Struct, frozen=True):
    """One write's message on the channel."""

    node: str
    epoch: int
    written_at: float
    keys: list[str]


def decode_marker(fields: Mapping[Any, Any]) -> ActiveMarker | None:
    try:
        return ActiveMarker(
            fields[b"node"].decode(),
            int(fields[b"epoch"]),
            float(fields[b"since"]),
            float(fields[b"written_at"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _marker_fields(marker: ActiveMarker) -> dict[str, str]:
    return {
        "node": marker.node,
        "epoch": str(marker.epoch),
        "since": repr(marker.since),
        "written_at": repr(marker.written_at),
    }


class CallWriter:
    """The active's side: changed calls to ``smg:<site>:calls``, the marker each second.

    ``collect()`` returns the changes since the last call (key -> bytes, or None for a call
    that ended); ``newer(node, epoch)`` is told of a marker written by another, newer active.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        node: str,
        epoch: int,
        since: float,
        interval: float,
        collect: Callable[[], dict[str, bytes | None]],
        newer: Callable[[str, int], None],
    ) -> None:
        self.link = link
        self.node = node
        self.epoch = epoch
        self.since = since
        self.interval = interval
        self._collect = collect
        self._newer = newer
        #: Changes not yet in Redis: the latest bytes per key, and since when each waits.
        self._pending: dict[str, bytes | None] = {}
        self._waiting_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        #: Status: Unix time of the last write that reached Redis; calls and writes so far.
        self.last_write: float | None = None
        self.writes = 0
        self.held: set[str] = set()

    def lag(self, wall: float) -> float:
        """Age of the oldest change not yet in Redis (0 when all are written)."""
        if not self._waiting_since:
            return 0.0
        return max(0.0, wall - min(self._waiting_since.values()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await stop_tasks([task], "HA: the replica writer")

    def note_gone(self, key: str) -> None:
        """``key`` leaves the replica at the next write (a call not taken over)."""
        self._pending[key] = None
        self._waiting_since.setdefault(key, time.time())

    def take(self) -> None:
        """Move what the cores changed into the pending set (called from the loop)."""
        wall = time.time()
        for key, data in self._collect().items():
            if data is None and key not in self.held and key not in self._pending:
                # Never written (still ringing, or set up and ended within one round):
                # nothing to delete, and no round trip nor message for the standby.
                continue
            self._pending[key] = data
            self._waiting_since.setdefault(key, wall)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        pause = 0.5
        while True:
            try:
                self.take()
                beat = loop.time() >= next_beat
                if beat:
                    await self._check_marker()
                    next_beat = loop.time() + HEARTBEAT
                if self._pending or beat:
                    await self.flush()
                pause = 0.5
                await asyncio.sleep(self.interval)
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _check_marker(self) -> None:
        fields = await self.link.client.hgetall(active_key(self.link.site))
        marker = decode_marker(fields)
        if marker is not None and marker.node != self.node and marker.epoch > self.epoch:
            self._newer(marker.node, marker.epoch)

    async def flush(self) -> None:
        """Write the pending changes and the marker in one transaction, then publish."""
        site = self.link.site
        wall = time.time()
        batch = dict(self._pending)
        present = {k: v for k, v in batch.items() if v is not None}
        gone = [k for k, v in batch.items() if v is None]
        pipe = self.link.client.pipeline(transaction=True)
        if present:
            pipe.hset(calls_key(site), mapping=present)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(calls_key(site), *gone)
        marker = ActiveMarker(self.node, self.epoch, self.since, wall)
        pipe.hset(active_key(site), mapping=_marker_fields(marker))  # type: ignore[arg-type]
        if batch:
            message = CallsChanged(self.node, self.epoch, wall, sorted(batch))
            pipe.publish(calls_channel(site), msgspec.json.encode(message))
        await pipe.execute()
        self.link.went_up()
        for key, data in batch.items():
            # A change made while the pipeline ran stays pending for the next round.
            if self._pending.get(key, b"") is data:
                del self._pending[key]
                self._waiting_since.pop(key, None)
            if data is None:
                self.held.discard(key)
            else:
                self.held.add(key)
        self.last_write = wall
        self.writes += 1 if batch else 0


class WarmCopy:
    """The standby's side: the active's calls as stored bytes, kept fresh from Redis."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        #: Call key -> the stored bytes (decoded only at a takeover: they are sealed).
        self.calls: dict[str, bytes] = {}
        self.marker: ActiveMarker | None = None
        #: Unix time of the last full read or message that reached us.
        self.last_sync: float | None = None
        #: Newest ``written_at`` seen (marker or message): how fresh the copy is.
        self.newest_written: float | None = None
        self.messages = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def lag(self, wall: float) -> float | None:
        if self.newest_written is None:
            return None
        return max(0.0, wall - self.newest_written)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._resync_loop()), loop.create_task(self._listen())]

    async def stop(self) -> None:
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        # redis-py's pub/sub read can swallow a cancellation that lands inside its own
        # timeout; the loops also check ``_stopping``, and the cancel is repeated.
        for _ in range(5):
            pending = [task for task in tasks if not task.done()]
            if not pending:
                return
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        log.error("HA: the replica reader did not stop; going on without it")

    async def read_all(self) -> None:
        """The whole hash and the marker (raises on a Redis error)."""
        site = self.link.site
        raw = await self.link.client.hgetall(calls_key(site))
        marker = decode_marker(await self.link.client.hgetall(active_key(site)))
        self.link.went_up()
        self.calls = {_text(k): _bytes(v) for k, v in raw.items()}
        self.marker = marker
        self.last_sync = time.time()
        if marker is not None:
            self._seen(marker.written_at)

    async def _resync_loop(self) -> None:
        while not self._stopping:
            try:
                await self.read_all()
                await asyncio.sleep(RESYNC if self.marker is None else HEARTBEAT)
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        pause = 0.5
        while not self._stopping:
            pubsub = self.link.client.pubsub()
            try:
                await pubsub.subscribe(calls_channel(self.link.site))
                pause = 0.5
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self._receive(message)
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _receive(self, raw: Mapping[str, Any]) -> None:
        try:
            message = msgspec.json.decode(raw.get("data", b""), type=CallsChanged)
        except (msgspec.DecodeError, TypeError):
            return
        if not message.keys:
            return
        values = await self.link.client.hmget(calls_key(self.link.site), message.keys)
        for key, value in zip(message.keys, values, strict=True):
            if value is None:
                self.calls.pop(key, None)
            else:
                self.calls[key] = _bytes(value)
        self.messages += 1
        self.last_sync = time.time()
        self._seen(message.written_at)

    def _seen(self, written_at: float) -> None:
        if self.newest_written is None or written_at > self.newest_written:
            self.newest_written = written_at


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
