"""Rules of the media benchmark that decide what its figures mean: the media worker's core
keeper (a SCHED_IDLE thread that only takes time the core would idle) is reported apart from
the worker's own work; a run in which the generator itself slipped is repeated, not counted
against the system under test; CPU of the media path leaves the keeper out."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.bench import sweep as sweep_module
from gateway.bench.loadgen import CORE_KEEPER_LABEL, CORE_KEEPER_THREAD, proc_sample
from gateway.bench.report import Latency, RunRecord
from gateway.bench.sweep import SweepSettings, sweep

PR_SET_NAME = 15  # prctl(2)


def proc_sample_whole(pid: int) -> float:
    """The CPU seconds of every thread of ``pid`` (utime + stime of /proc/PID/stat)."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def test_proc_sample_counts_a_core_keeper_thread_apart() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    burnt = threading.Event()
    release = threading.Event()

    def keeper() -> None:
        libc.prctl(PR_SET_NAME, CORE_KEEPER_THREAD.encode(), 0, 0, 0)
        start = time.thread_time()
        while time.thread_time() - start < 0.3:  # CPU time of this thread, not wall time
            pass
        burnt.set()
        release.wait()  # a thread's /proc entry (and its CPU time) goes when it ends

    before = proc_sample(os.getpid())
    assert before is not None and before.keeper_cpu == 0.0
    thread = threading.Thread(target=keeper)
    thread.start()
    try:
        assert burnt.wait(30)
        after = proc_sample(os.getpid())
    finally:
        release.set()
        thread.join()
    whole = proc_sample_whole(os.getpid())
    assert after is not None
    assert after.keeper_cpu >= 0.25
    # The process's own figure leaves the keeper's time out: the whole process's CPU, read
    # after it (CPU time only grows), is at least that figure plus the keeper's. Compared this
    # way, other threads of the test process (busy or not) cannot change the outcome.
    # (Less two clock ticks: the kernel scales a process's utime/stime apart from its threads'.)
    assert whole - after.cpu >= after.keeper_cpu - 2 / os.sysconf("SC_CLK_TCK"), (whole, after)


def record(mode: str, calls: int, *, generator_ok: bool, p99: float = 50.0) -> RunRecord:
    latency = Latency(p50=20.0, p99=p99, p999=p99 * 2, max=p99 * 3)
    return RunRecord(
        mode=mode,
        calls=calls,
        suite="AES_CM_128_HMAC_SHA1_80",
        pps=calls * 100.0,
        loss_pct=0.0,
        latency_us=latency,
        added_latency_us=latency,
        jitter_us=5.0,
        jitter_max_us=9.0,
        duplicates=0,
        srtp_failures=0,
        cpu_pct={"media worker": 40.0, "media worker" + CORE_KEEPER_LABEL: 55.0, "signalling": 3.0},
        rss_mib={"media worker": 30.0},
        generator_slip_us=Latency(20.0, 30.0 if generator_ok else 5000.0, 40.0, 50.0),
        generator_cpu_pct=50.0,
        generator_ok=generator_ok,
    )


def test_media_cpu_leaves_out_the_keeper_and_signalling() -> None:
    assert record("gateway", 100, generator_ok=True).media_cpu_pct == 40.0


class FakeTarget:
    name = "gateway"
    direct = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def test_a_run_whose_generator_slipped_is_repeated_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {
        100: [record("gateway", 100, generator_ok=True)],
        200: [
            record("gateway", 200, generator_ok=False),
            record("gateway", 200, generator_ok=True),
        ],
        300: [
            record("gateway", 300, generator_ok=False),
            record("gateway", 300, generator_ok=False, p99=4000.0),
        ],
    }
    runs: list[int] = []

    async def fake_run(exe, target, calls, settings, progress):  # type: ignore[no-untyped-def]
        runs.append(calls)
        return answers[calls].pop(0)

    monkeypatch.setattr(sweep_module, "_run", fake_run)
    settings = SweepSettings(levels=[100, 200, 300], suite="AES_CM_128_HMAC_SHA1_80", profile=1)
    records = await sweep(Path("loadgen"), [FakeTarget()], settings)  # type: ignore[list-item]
    assert runs == [100, 200, 200, 300, 300]
    assert [(r.calls, r.repeated, r.generator_ok) for r in records] == [
        (100, 0, True),
        (200, 1, True),
        (300, 1, False),  # slipped twice: the second answer is kept as measured
    ]
    assert not records[-1].passes()
