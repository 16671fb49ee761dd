"""The Redis side of an HA pair (gateway/ha/replica.py) against a real redis-server.

The active's ``CallWriter`` writes changed calls, deletes ended ones, publishes their keys and
refreshes ``smg:<site>:ha:active``; the standby's ``WarmCopy`` follows them by the channel;
a writer that reads a newer active's marker says so (the glue fences itself then); changes made
while Redis is away wait and go once it is back, and the lag counts their age meanwhile.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import StateSettings
from gateway.ha.replica import CallWriter, WarmCopy, active_key, calls_key
from gateway.state.redis_store import RedisLink
from tests.admin_site import wait_for
from tests.integration.test_redis_state import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

SITE = "replica-site"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _link(server: RedisServer, tmp_path: Path) -> RedisLink:
    settings = StateSettings(
        directory=str(tmp_path),
        site=SITE,
        redis_url=f"unix://{server.socket}",
        redis_timeout=1.0,
    )
    return RedisLink(settings)


async def test_the_warm_copy_follows_the_writer_and_a_newer_active_is_noticed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    changes: dict[str, bytes | None] = {}
    newer: list[tuple[str, int]] = []

    def collect() -> dict[str, bytes | None]:
        taken = dict(changes)
        changes.clear()
        return taken

    active_link, standby_link = _link(redis_server, tmp_path), _link(redis_server, tmp_path)
    writer = CallWriter(
        active_link,
        node="gw-a",
        epoch=4,
        since=1000.0,
        interval=0.05,
        collect=collect,
        newer=lambda node, epoch: newer.append((node, epoch)),
    )
    warm = WarmCopy(standby_link)
    client = redis_server.client()
    try:
        await warm.read_all()
        assert warm.calls == {} and warm.marker is None
        warm.start()
        writer.start()
        changes.update({"c1": b"record-1", "c2": b"record-2"})
        assert await wait_for(lambda: warm.calls == {"c1": b"record-1", "c2": b"record-2"}, 10.0)
        assert writer.held == {"c1", "c2"} and writer.lag(0.0) == 0.0
        assert await wait_for(lambda: warm.marker is not None, 10.0)
        assert warm.marker is not None
        assert (warm.marker.node, warm.marker.epoch, warm.marker.since) == ("gw-a", 4, 1000.0)
        assert warm.messages >= 1

        # An ended call leaves the replica (HDEL) and the warm copy.
        changes["c1"] = None
        assert await wait_for(lambda: set(warm.calls) == {"c2"}, 10.0)
        assert await client.hkeys(calls_key(SITE)) == [b"c2"]

        # Another node promoted with a higher epoch: the writer tells the glue.
        await client.hset(
            active_key(SITE),
            mapping={"node": "gw-b", "epoch": "5", "since": "2000.0", "written_at": "2000.0"},
        )
        assert await wait_for(lambda: ("gw-b", 5) in newer, 10.0)
    finally:
        await writer.stop()
        await warm.stop()
        await client.aclose()
        await active_link.close()
        await standby_link.close()


async def test_changes_wait_while_redis_is_away_and_go_when_it_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    changes: dict[str, bytes | None] = {}

    def collect() -> dict[str, bytes | None]:
        taken = dict(changes)
        changes.clear()
        return taken

    link = _link(redis_server, tmp_path)
    writer = CallWriter(
        link, node="gw-a", epoch=1, since=0.0, interval=0.05, collect=collect, newer=print
    )
    try:
        writer.start()
        assert await wait_for(lambda: writer.last_write is not None, 10.0)
        await redis_server.kill()
        changes["c9"] = b"record-9"
        assert await wait_for(lambda: not link.up, 10.0)
        written = writer.last_write
        assert written is not None
        assert await wait_for(lambda: writer.lag(written + 1000.0) > 0.0, 10.0)
        await redis_server.start()
        assert await wait_for(lambda: writer.held == {"c9"}, 30.0)
        assert writer.lag(written + 1000.0) == 0.0
        client = redis_server.client()
        try:
            assert await client.hget(calls_key(SITE), "c9") == b"record-9"
        finally:
            await client.aclose()
    finally:
        await writer.stop()
        await link.close()
