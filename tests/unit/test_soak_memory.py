"""What the soak's memory hunt (tracemalloc on the running gateway under churn) found held
for longer than needed, each fixed and pinned here: the size of what is kept after many
samples or finished calls goes back to its base instead of growing with them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

from gateway.admin.views import MediaSampler
from gateway.media.control import StreamCounters
from gateway.operations import MediaReading, StatusView
from gateway.policy.caps import FINISHED_SLOT_S, CallCaps
from gateway.policy.settings import CapLimits


class _Media:
    """The part of the status view the media sampler reads: one worker, N live streams."""

    def __init__(self, streams: int) -> None:
        self.streams = {f"c{i}/0": StreamCounters(lan_in_packets=i) for i in range(streams)}

    def media_workers(self) -> list[int | None]:
        return [None]

    async def media_streams(self) -> MediaReading:
        return MediaReading(dict(self.streams))

    def on_media_closed(self, listener: Callable[[str, Mapping[str, Any]], None]) -> None:
        pass


def test_media_sampler_keeps_the_streams_of_its_newest_sample_only() -> None:
    # Found: every /metrics scrape kept a sample with every live stream's counters, 64 deep.
    media = _Media(streams=50)
    sampler = MediaSampler(cast(StatusView, media), max_age=0.0)

    async def scrape(times: int) -> None:
        for _ in range(times):
            await sampler.sample()

    asyncio.run(scrape(70))
    history = list(sampler._history)
    assert len(history) == 64
    assert sum(len(s.streams) for s in history) == 50  # the newest only
    assert len(history[-1].streams) == 50
    assert history[-1].totals["lan_in_packets"] == sum(range(50))
    assert "packets_per_second" in sampler.rates()


def test_a_day_of_finished_calls_is_kept_in_slots_not_one_record_per_call() -> None:
    # Found: the caps kept one record per finished call for 24 hours (and the state keeper
    # saved all of them every time): at the soak's 13 calls a second, megabytes an hour.
    caps = CallCaps(CapLimits(0, 0, 0, 0))
    calls = 0
    now = 1000.0
    for i in range(7200):  # two hours, a call ending every second, every tenth abroad
        key = f"c{i}"
        caps.started(key, "2000", international=i % 10 == 0, emergency=False, now=now - 30.0)
        caps.answered(key, now - 20.0)
        caps.ended(key, now)
        calls += 1
        now += 1.0
    usage, active = caps.export(now, now)
    assert not active
    slots = 2 * 3600 / FINISHED_SLOT_S + 1
    for record in usage:
        # At most one national and one international record per slot, not 7,200.
        assert len(record.finished) <= 2 * slots
        assert sum(seconds for _, seconds, _ in record.finished) == 20.0 * calls
    assert caps.minutes_today("2000", now) == 20.0 * calls / 60.0
    assert caps.minutes_today(None, now, international=True) == 20.0 * 720 / 60.0
    # A day (and a slot) later every record has gone and the sums are back to zero.
    later = now + 86400.0 + FINISHED_SLOT_S
    caps.prune(later)
    assert caps.minutes_today("2000", later) == 0.0
    assert caps.export(later, later) == ([], [])
