"""Saved state in Redis as well as the local folder: one Redis, many gateways.

Layout (every key starts with ``smg:``):

- ``smg:<site>:<kind>``: a hash per kind of state (``registrations``, ``caps``): ``doc`` is the
  same JSON document the local store writes (msgspec records whose credentials are sealed by
  ``gateway.state.seal``; nothing in clear ever reaches Redis), ``seq`` a counter bumped with
  every write (HINCRBY in the same MULTI/EXEC), ``written_at`` the writer's Unix time and
  ``writer`` which process wrote it, so a reader (the standby to come) can tell the latest.
- ``smg:shared:bans`` and the channel ``smg:shared:bans:events``: the ban list every site on
  this Redis shares (``gateway.state.shared_bans``).

The keeper's ``save`` stays synchronous and never waits on the network: the document is
written to the local folder as before and handed to a writer task, which sends the latest
document of each kind. A Redis outage never stops the gateway: the state stays in memory and
in the local folder, the outage is logged once, the link is retried with a growing pause
(0.5 s to 10 s), and once it is back every kind is written again (a Redis restarted empty gets
everything). A heartbeat each second notices a Redis that lost our keys while we were idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import StateSettings
from gateway.state.local import LocalStateStore
from gateway.state.tasks import stop_tasks

__all__ = [
    "BANS_CHANNEL",
    "SHARED_BANS",
    "RedisLink",
    "RedisStateStore",
    "StoredDocument",
    "decode_entry",
    "encode_entry",
    "state_key",
]

log = logging.getLogger("gateway.state")

PREFIX = "smg"
#: The ban list shared by every site on one Redis, and its change channel.
SHARED_BANS = f"{PREFIX}:shared:bans"
BANS_CHANNEL = f"{PREFIX}:shared:bans:events"
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
_HEARTBEAT = 1.0


def state_key(site: str, kind: str) -> str:
    """The hash holding ``site``'s document of ``kind``."""
    return f"{PREFIX}:{site}:{kind}"


class StoredDocument(msgspec.Struct, frozen=True):
    """One kind's entry as read back from Redis."""

    doc: bytes
    seq: int
    written_at: float
    writer: str


def encode_entry(data: bytes, wall: float, writer: str) -> dict[Any, Any]:
    """The hash fields of one write (``seq`` is bumped separately, atomically)."""
    return {"doc": data, "written_at": repr(wall).encode(), "writer": writer.encode()}


def decode_entry(fields: Mapping[Any, Any]) -> StoredDocument | None:
    """An entry read with HGETALL; None when absent or not one of ours."""
    doc = fields.get(b"doc")
    if doc is None:
        return None
    try:
        seq = int(fields.get(b"seq", b"0"))
        written_at = float(fields.get(b"written_at", b"0"))
    except ValueError:
        return None
    return StoredDocument(doc, seq, written_at, fields.get(b"writer", b"").decode(errors="replace"))


class RedisLink:
    """The gateway's connection to Redis: the client, and whether it works now."""

    def __init__(self, settings: StateSettings, environ: Mapping[str, str] | None = None) -> None:
        if settings.redis_url is None:
            raise ValueError("[state] redis_url is not set")
        environ = os.environ if environ is None else environ
        password = None
        if settings.redis_password_env is not None:
            password = environ.get(settings.redis_password_env)
            if not password:
                # A missing password is a deployment error: say so rather than fail AUTH later.
                raise ValueError(
                    f"[state] redis_password_env names {settings.redis_password_env}, "
                    "which is not set in the environment"
                )
        self.url = settings.redis_url
        self.site = settings.site
        self.timeout = settings.redis_timeout
        #: Who writes: host, process and link, so a reader can tell two writers of one site apart.
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # No retries inside the client: our own loop retries with a pause, and a command
        # never blocks the caller longer than one timeout.
        self.client: aioredis.Redis = aioredis.from_url(
            self.url,
            password=password,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.up = False
        self.last_error = "not connected yet"
        self._down_logged = False

    def went_up(self) -> None:
        if not self.up:
            log.info("state: Redis %s reachable", self.url)
        self.up = True
        self._down_logged = False
        self.last_error = ""

    def went_down(self, exc: BaseException) -> None:
        self.up = False
        self.last_error = str(exc) or type(exc).__name__
        if not self._down_logged:
            self._down_logged = True
            log.error(
                "state: Redis %s unreachable (%s): working from memory and the local folder, "
                "retrying",
                self.url,
                self.last_error,
            )

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class RedisStateStore:
    """A ``StateStore``: the local folder, with every document also written to Redis."""

    def __init__(self, link: RedisLink, local: LocalStateStore) -> None:
        self.link = link
        self.local = local
        #: The latest document of every kind saved (rewritten whole after an outage).
        self._latest: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        #: Documents read from Redis at start (``fetch``), by kind.
        self._fetched: dict[str, StoredDocument] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Status: Unix time of the last write that reached Redis, and seq per kind stored.
        self.last_write: float | None = None
        self.stored: dict[str, int] = {}
        self.redis_writes = 0

    # ------------------------------------------------------------- StateStore

    def load(self, kind: str) -> bytes | None:
        """The newer of Redis' document (read by ``fetch``) and the local file's."""
        local = self.local.load(kind)
        remote = self._fetched.get(kind)
        if remote is None:
            return local
        if local is None:
            return remote.doc
        try:
            local_time = self.local.path(kind).stat().st_mtime
        except OSError:
            local_time = 0.0
        return remote.doc if remote.written_at > local_time else local

    def save(self, kind: str, data: bytes) -> None:
        self._latest[kind] = data
        self._dirty.add(kind)
        if self._wake is not None:
            self._wake.set()
        self.local.save(kind, data)

    # ------------------------------------------------------------- Redis side

    async def fetch(self, kinds: tuple[str, ...]) -> None:
        """At start: this site's documents in Redis, for ``load`` (an outage reads none)."""
        try:
            for kind in kinds:
                fields = await self.link.client.hgetall(state_key(self.link.site, kind))
                entry = decode_entry(fields)
                if entry is not None:
                    self._fetched[kind] = entry
                    self.stored[kind] = entry.seq
            self.link.went_up()
        except (RedisError, OSError) as exc:
            self.link.went_down(exc)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending once more (bounded by the timeout), then stop."""
        self._stopping = True
        if self._task is not None:
            task, self._task = self._task, None
            await stop_tasks([task], "the state store's Redis writer")
        if self._dirty and self.link.up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._write(set(self._dirty)), self.link.timeout)

    async def _run(self) -> None:
        assert self._wake is not None
        pause = _BACKOFF_FIRST
        while not self._stopping:
            try:
                if not self.link.up:
                    await self.link.client.ping()
                    self.link.went_up()
                    # Whatever happened during the outage (a restarted, empty Redis): all again.
                    self._dirty |= set(self._latest)
                elif not self._dirty:
                    await self._heartbeat()
                if self._dirty:
                    await self._write(set(self._dirty))
                pause = _BACKOFF_FIRST
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _HEARTBEAT)
                self._wake.clear()
            except (RedisError, OSError) as exc:
                self.link.went_down(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _BACKOFF_MAX)

    async def _heartbeat(self) -> None:
        """Our keys still there? (A Redis restarted without persistence has lost them.)"""
        if not self._latest:
            await self.link.client.ping()
            return
        keys = [state_key(self.link.site, kind) for kind in self._latest]
        present = await self.link.client.exists(*keys)
        if present < len(keys):
            log.warning("state: Redis lost this site's state; writing it again")
            self._dirty |= set(self._latest)

    async def _write(self, kinds: set[str]) -> None:
        wall = time.time()
        written = {kind: self._latest[kind] for kind in sorted(kinds)}
        pipe = self.link.client.pipeline(transaction=True)
        for kind, data in written.items():
            key = state_key(self.link.site, kind)
            pipe.hset(key, mapping=encode_entry(data, wall, self.link.writer))
            pipe.hincrby(key, "seq", 1)
        results: list[Any] = await pipe.execute()
        for index, (kind, data) in enumerate(written.items()):
            self.stored[kind] = int(results[2 * index + 1])
            # A save made while the pipeline ran stays dirty: it goes at the next round.
            if self._latest.get(kind) is data:
                self._dirty.discard(kind)
        self.last_write = wall
        self.redis_writes += len(written)
