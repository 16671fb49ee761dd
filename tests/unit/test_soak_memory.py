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
