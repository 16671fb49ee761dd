"""Sweep the load over systems under test with one generator, and keep what was measured.

Shared by ``bench/harness.py`` (gateway vs rtpengine vs direct) and ``gateway bench``. Every
system sees the same generator, the same call counts, the same pinning (media path on
``media_cpu``, the generator on ``load_cpu``) and the same suite; levels above a system's
second consecutive failure are skipped (they would only fail slower).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.bench.loadgen import (
    PHONE_ADDRESS,
    PHONE_MEDIA_PORT,
    PROVIDER_ADDRESS,
    PROVIDER_MEDIA_PORT,
    run_load,
)
from gateway.bench.report import Latency, RunRecord, summarise
from gateway.bench.targets import Target

__all__ = ["SweepSettings", "sweep"]


@dataclass
class SweepSettings:
    """How long and how hard each run is, and where things run."""

    levels: Sequence[int]
    suite: str = "AES_CM_128_HMAC_SHA1_80"
    profile: int = 1
    duration: float = 4.0
    warmup: float = 1.0
    ptime_ms: float = 20.0
    load_cpu: int | None = 1
    phone_port: int = PHONE_MEDIA_PORT
    provider_port: int = PROVIDER_MEDIA_PORT
    #: Consecutive failing levels after which a system is not loaded further.
    stop_after_failures: int = 2
    floors: dict[int, Latency] = field(default_factory=dict)


async def sweep(
    exe: Path,
    targets: Sequence[Target],
    settings: SweepSettings,
    *,
    progress: Callable[[str, int, RunRecord | None], None] | None = None,
) -> list[RunRecord]:
    """Run every target at each level, interleaved; returns one record per run.

    Interleaving (level by level, each system in turn) means slow drifts of a shared host's
    background load hit all systems alike instead of whichever happened to run last. A direct
    target's latencies become ``settings.floors`` (per call count) for the others, so list it
    first.
    """
    records: list[RunRecord] = []
    failures = {t.name: 0 for t in targets}
    started: list[Target] = []
    try:
        for target in targets:
            await target.start()
            started.append(target)
        for calls in settings.levels:
            for target in targets:
                if failures[target.name] >= settings.stop_after_failures:
                    continue
                record = await _run(exe, target, calls, settings, progress)
                if not record.generator_ok:
                    # The generator itself fell behind (something else took its core): the
                    # run says nothing about the system under test. Once more; that answer
                    # stands, and the record says it was a second try.
                    record = await _run(exe, target, calls, settings, progress)
                    record.repeated = 1
                records.append(record)
                failures[target.name] = 0 if record.passes() else failures[target.name] + 1
    finally:
        for target in started:
            await target.stop()
    return records


async def _run(
    exe: Path,
    target: Target,
    calls: int,
    settings: SweepSettings,
    progress: Callable[[str, int, RunRecord | None], None] | None,
) -> RunRecord:
    if progress is not None:
        progress(target.name, calls, None)
    legs = await target.open_calls(calls)
    failed = calls - len(legs)
    setup = getattr(target, "last_setup", None)
    gc.collect()
    try:
        result = await asyncio.to_thread(
            run_load,
            exe,
            legs,
            phone=(PHONE_ADDRESS, settings.phone_port),
            provider=(PROVIDER_ADDRESS, settings.provider_port),
            direct=target.direct,
            # A forwarding-only relay: the generator does its crypto but sends through it.
            via_calls=getattr(target, "forwards", False),
            profile=settings.profile,
            duration=settings.duration,
            warmup=settings.warmup,
            ptime_ms=settings.ptime_ms,
            load_cpu=settings.load_cpu,
            watch=target.watched(),
        )
    finally:
        await target.close_calls()
    floor = settings.floors.get(calls) or _nearest(settings.floors, calls)
    record = summarise(
        target.name,
        settings.suite,
        result.raw,
        cpu_pct=result.cpu_pct,
        rss_mib=result.rss_mib,
        ptime_ms=settings.ptime_ms,
        floor=None if target.name == "direct" else floor,
        setup_per_s=setup.per_second if setup is not None else None,
        calls_failed=failed,
    )
    if target.name == "direct":  # the floor; a relay whose crypto the generator does is not
        settings.floors[calls] = record.latency_us
    if progress is not None:
        progress(target.name, calls, record)
    return record


def _nearest(floors: dict[int, Latency], calls: int) -> Latency | None:
    if not floors:
        return None
    return floors[min(floors, key=lambda n: abs(n - calls))]
