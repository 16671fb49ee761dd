"""``gateway bench``: how many concurrent calls this host carries, before rollout.

Runs on the operator's box, on loopback only: no provider and no network are needed. It
sweeps the load over the gateway's own media worker (driven by control messages through the
MediaController, one worker pinned to one core, the generator on another), measures SIP/TLS
call set-ups per second through a real ``gateway run`` process (phones over UDP, a lab provider
over verified TLS answering with SDES), and writes an HTML report with inline SVG plots plus the
same figures as JSON. The last line of the report and of the output is the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import sys
from pathlib import Path

import msgspec

from gateway.bench.loadgen import MEDIA_PORTS, build_loadgen, proc_sample
from gateway.bench.report import (
    MAX_LOSS_PCT,
    MAX_P99_ADDED_US,
    RunRecord,
    capacity,
    generator_ceiling,
    html_page,
    html_table,
    line_chart,
    standard_charts,
)
from gateway.bench.sip import SipGatewayTarget
from gateway.bench.sweep import SweepSettings, sweep
from gateway.bench.targets import DirectTarget, WorkersTarget
from gateway.media.suites import SrtpSuite

__all__ = ["add_bench_arguments", "cmd_bench"]

DEFAULT_LEVELS = "50,100,200,400,600,800,1000,1200,1400"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gateway bench`` options."""
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="call counts to sweep")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--suite", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--setup-calls", type=int, default=200, help="calls for the SIP/TLS rate")
    parser.add_argument("--out", type=Path, default=Path("bench-report"), help="report folder")
    parser.add_argument(
        "--realtime-priority",
        type=int,
        default=0,
        help="media.realtime_priority to measure with (SCHED_FIFO; 0: normal scheduling)",
    )


class _Progress:
    """A one-line progress bar on stderr (plain lines when it is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, mode: str, calls: int, record: RunRecord | None) -> None:
        if record is not None:
            self.done += 1
        width = 30
        filled = min(width, int(width * self.done / max(self.total, 1)))  # retries: > total
        bar = "#" * filled + "-" * (width - filled)
        if record is None:
            text = f"[{bar}] {self.done}/{self.total}  {mode}: {calls} calls ..."
        else:
            text = (
                f"[{bar}] {self.done}/{self.total}  {mode}: {calls} calls"
                f"  loss {record.loss_pct:.3f}%  p99 {record.latency_us.p99:.0f} µs"
                f"  {'ok' if record.passes() else 'over the limit'}"
            )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            if record is not None and self.done >= self.total:
                sys.stderr.write("\n")
        elif record is not None:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _memory_per_call_kib(records: list[RunRecord]) -> float | None:
    """Growth of the media worker's RSS per call between the smallest and largest load."""
    runs = sorted((r for r in records if r.mode == "gateway"), key=lambda r: r.calls)
    if len(runs) < 2:
        return None
    low, high = runs[0], runs[-1]
    grown = high.rss_mib.get("media worker", 0.0) - low.rss_mib.get("media worker", 0.0)
    return max(0.0, grown * 1024 / (high.calls - low.calls))


async def _bench(args: argparse.Namespace) -> dict[str, object]:
    suite = SrtpSuite(args.suite)
    exe = await asyncio.to_thread(build_loadgen)
    levels = [int(x) for x in args.levels.split(",")]
    settings = SweepSettings(
        levels=levels, suite=suite.value, profile=suite.libsrtp_profile, duration=args.duration
    )
    progress = _Progress(2 * len(levels) + 1)
    records = await sweep(
        exe,
        [
            DirectTarget(suite, *MEDIA_PORTS),
            WorkersTarget(suite, *MEDIA_PORTS, realtime_priority=args.realtime_priority),
        ],
        settings,
        progress=progress,
    )
    # SIP/TLS call set-up rate through the whole gateway process.
    progress("SIP/TLS set-up", args.setup_calls, None)
    target = SipGatewayTarget(suite, *MEDIA_PORTS, max_calls=args.setup_calls)
    await target.start()
    signalling_kib: float | None = None
    try:
        idle = proc_sample(target.watched()["signalling"])
        await target.open_calls(args.setup_calls)
        setup = target.last_setup
        # The signalling process's share of an active call: its growth with every call up.
        busy = proc_sample(target.watched()["signalling"])
        if idle is not None and busy is not None and args.setup_calls > 0:
            signalling_kib = max(0.0, (busy.rss - idle.rss) / 1024 / args.setup_calls)
        await target.close_calls()
    finally:
        await target.stop()
    progress.done += 1
    ceiling = generator_ceiling(records)
    calls = capacity(records, "gateway", ceiling)
    passing = [r for r in records if r.mode == "gateway" and r.calls <= calls and r.passes()]
    jitter_ms = max((r.jitter_max_us for r in passing), default=0.0) / 1000
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "suite": suite.value,
        "capacity_calls": calls,
        "generator_ceiling_calls": ceiling,
        "jitter_ms_at_capacity": round(jitter_ms, 3),
        "setup_per_s": round(setup.per_second, 1) if setup else None,
        "setup_failed": setup.failed if setup else None,
        "memory_per_call_kib": _memory_per_call_kib(records),
        "signalling_memory_per_call_kib": signalling_kib,
        "runs": [msgspec.to_builtins(r) for r in records],
        "_records": records,
    }


def _verdict(result: dict[str, object]) -> str:
    # Rounded up to the next 0.1 ms: the verdict must never claim less than was measured.
    jitter = max(math.ceil(float(result["jitter_ms_at_capacity"]) * 10) / 10, 0.1)  # type: ignore[arg-type]
    return (
        f"this host sustains {result['capacity_calls']} concurrent calls with loss below "
        f"{MAX_LOSS_PCT:g}%, p99 added latency below {MAX_P99_ADDED_US / 1000:g} ms and "
        f"jitter below {jitter:.1f} ms"
    )


def write_report(result: dict[str, object], out: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out``; returns both paths."""
    records: list[RunRecord] = result.pop("_records")  # type: ignore[assignment]
    verdict = _verdict(result)
    result["verdict"] = verdict
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    memory = result["memory_per_call_kib"]
    signalling = result["signalling_memory_per_call_kib"]
    rate = result["setup_per_s"]
    summary = (
        "<table>"
        f"<tr><th>concurrent calls (capacity)</th><td>{result['capacity_calls']}</td></tr>"
        f"<tr><th>generator ceiling (direct path)</th><td>{result['generator_ceiling_calls']}"
        "</td></tr>"
        f"<tr><th>SIP/TLS call set-ups per second</th><td>{rate}</td></tr>"
        "<tr><th>memory per call (media worker RSS)</th><td>"
        + (f"{memory:.1f} KiB" if isinstance(memory, float) else "n/a")
        + "</td></tr>"
        "<tr><th>memory per call (signalling process RSS, calls up)</th><td>"
        + (f"{signalling:.1f} KiB" if isinstance(signalling, float) else "n/a")
        + "</td></tr>"
        f"<tr><th>suite</th><td>{result['suite']}</td></tr></table>"
    )
    rss = line_chart(
        "Media worker resident memory",
        {"gateway": [(r.calls, sum(r.rss_mib.values())) for r in records if r.mode == "gateway"]},
        x_label="concurrent calls",
        y_label="MiB",
    )
    gateway_runs = [r for r in records if r.mode == "gateway"]
    distribution = line_chart(
        "Gateway one-way latency distribution per load",
        {
            "p50": [(r.calls, max(r.latency_us.p50, 0.1)) for r in gateway_runs],
            "p99": [(r.calls, max(r.latency_us.p99, 0.1)) for r in gateway_runs],
            "p99.9": [(r.calls, max(r.latency_us.p999, 0.1)) for r in gateway_runs],
            "max": [(r.calls, max(r.latency_us.max, 0.1)) for r in gateway_runs],
        },
        x_label="concurrent calls",
        y_label="µs (log)",
        log_y=True,
    )
    charts = "".join(standard_charts(records)) + distribution + rss
    page = html_page(
        "gateway bench: capacity of this host",
        "<p>The gateway's media worker on CPU 0, the load generator on CPU 1, loopback only. "
        "Each call sends G.711-sized RTP every 20 ms both ways (plain on the LAN side, SRTP on "
        "the WAN side). The direct path (no relay) is the floor that added latency is measured "
        "from, and shows the generator's own ceiling.</p>",
        [
            ("Summary", summary),
            ("Plots", f'<div class="charts">{charts}</div>'),
            ("Runs", html_table(records)),
        ],
        verdict,
    )
    html_path = out / "report.html"
    html_path.write_text(page)
    return html_path, json_path


def cmd_bench(args: argparse.Namespace) -> int:
    """Entry point of ``gateway bench``."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # this process and what it starts stay off the media core
    try:
        result = asyncio.run(_bench(args))
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    html_path, json_path = write_report(result, args.out)
    print(f"report: {html_path} (and {json_path})")
    media, signalling = result["memory_per_call_kib"], result["signalling_memory_per_call_kib"]
    print(f"SIP/TLS call set-ups per second: {result['setup_per_s']}")
    print(
        "memory per active call: media worker "
        + (f"{media:.1f} KiB" if isinstance(media, float) else "n/a")
        + ", signalling "
        + (f"{signalling:.1f} KiB" if isinstance(signalling, float) else "n/a")
    )
    print(_verdict(result))
    return 0
