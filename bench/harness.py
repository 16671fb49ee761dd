"""Side-by-side media benchmark: the gateway, rtpengine and the direct path, one generator.

Usage (from the repository root, as root for pinning and priorities)::

    .venv/bin/python -m bench.harness                      # the full sweep, ~10 minutes
    .venv/bin/python -m bench.harness --smoke --out DIR    # a few calls, a few seconds

For each mode and each call count the compiled generator (``gateway/bench/loadgen.c``) sends
G.711-sized RTP at 20 ms both ways for every call, staggered across the interval, and measures
at the receivers; the media path runs on CPU 0, the generator on CPU 1. The gateway is the real
``gateway run`` process, its calls set up by SIP INVITEs from phones over UDP and a provider over
TLS answering with SDES. Writes ``bench/results/<date>.json`` (or ``--out``), a text table,
and SVG plots; prints the capacity of each mode and the gateway/rtpengine ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import msgspec

from gateway.bench.loadgen import MEDIA_PORTS, build_loadgen
from gateway.bench.report import (
    RunRecord,
    capacity,
    generator_ceiling,
    html_page,
    html_table,
    standard_charts,
    table,
)
from gateway.bench.sip import SipGatewayTarget
from gateway.bench.sweep import SweepSettings, sweep
from gateway.bench.targets import DEFAULT_KEEP_CORE_AWAKE, DirectTarget, Target, WorkersTarget
from gateway.media.suites import SrtpSuite

RESULTS = Path(__file__).resolve().parent / "results"
FULL_LEVELS = (100, 200, 300, 400, 500, 600, 700, 800, 1000)
SMOKE_LEVELS = (5,)


def _progress(mode: str, calls: int, record: RunRecord | None) -> None:
    if record is None:
        print(f"  {mode:<10} {calls:>5} calls ...", end="", flush=True)
        return
    print(
        f" loss {record.loss_pct:.3f}%  p50 {record.latency_us.p50:.0f} µs"
        f"  p99 {record.latency_us.p99:.0f} µs  p99.9 {record.latency_us.p999:.0f} µs"
        f"  cpu {record.media_cpu_pct:.0f}%  gen slip p99 {record.generator_slip_us.p99:.0f} µs"
        f"  {'ok' if record.passes() else 'FAIL'}",
        flush=True,
    )


def _targets(
    modes: list[str],
    suite: SrtpSuite,
    sip: bool,
    keep_core_awake: bool = DEFAULT_KEEP_CORE_AWAKE,
    realtime_priority: int = 0,
) -> list[Target]:
    """The systems to sweep. ``realtime_priority`` goes to both relays alike: the gateway's
    ``media.realtime_priority`` (its packet loop) and every rtpengine thread."""
    rt = realtime_priority
    out: list[Target] = []
    for mode in modes:
        if mode == "direct":
            out.append(DirectTarget(suite, *MEDIA_PORTS))
        elif mode == "gateway":
            out.append(
                SipGatewayTarget(
                    suite,
                    *MEDIA_PORTS,
                    keep_core_awake=keep_core_awake,
                    realtime_priority=rt,
                )
                if sip
                else WorkersTarget(
                    suite,
                    *MEDIA_PORTS,
                    keep_core_awake=keep_core_awake,
                    realtime_priority=rt,
                )
            )
        elif mode == "bare":
            from bench.bare import BareRelayTarget

            out.append(BareRelayTarget(suite, realtime_priority=rt))
        elif mode == "rtpengine":
            from bench.rtpengine import RtpengineTarget

            out.append(RtpengineTarget(suite, *MEDIA_PORTS, fifo=rt))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    suite = SrtpSuite(args.suite)
    exe = build_loadgen()
    levels = (
        [int(x) for x in args.levels.split(",")]
        if args.levels
        else (list(SMOKE_LEVELS) if args.smoke else list(FULL_LEVELS))
    )
    settings = SweepSettings(
        levels=levels,
        suite=suite.value,
        profile=suite.libsrtp_profile,
        duration=args.duration or (1.5 if args.smoke else 4.0),
        warmup=0.5 if args.smoke else 1.0,
    )
    modes = args.modes.split(",")
    if "rtpengine" in modes and shutil.which("rtpengine") is None:
        print("rtpengine is not installed: skipping it (apt-get install rtpengine-daemon)")
        modes.remove("rtpengine")
    # Direct first: its latencies are the floor the others' added latency is measured from.
    modes.sort(key=lambda m: m != "direct")
    records = await sweep(
        exe,
        _targets(
            modes,
            suite,
            sip=not args.no_sip,
            keep_core_awake=args.keep_core_awake == "on",
            realtime_priority=args.realtime_priority,
        ),
        settings,
        progress=_progress,
    )
    ceiling = generator_ceiling(records) if "direct" in modes else None
    caps = {m: capacity(records, m, ceiling) for m in modes}
    ratio = (
        caps["gateway"] / caps["rtpengine"] if caps.get("rtpengine") and "gateway" in caps else None
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "method": {
            "media_cpu": 0,
            "load_cpu": settings.load_cpu,
            "ptime_ms": settings.ptime_ms,
            "payload_bytes": 160,
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "gateway_calls_via": "workers" if args.no_sip else "SIP (UDP phones, TLS provider)",
            "media_sched_fifo_priority": args.realtime_priority,
            "gateway_keep_core_awake": args.keep_core_awake == "on",
        },
        "suite": suite.value,
        "runs": [msgspec.to_builtins(r) for r in records],
        "capacity": caps,
        "generator_ceiling_calls": ceiling,
        "capacity_ratio_gateway_to_rtpengine": ratio,
        "_records": records,
    }


def write(result: dict[str, object], out: Path) -> Path:
    """Write JSON, table and plots; returns the JSON path."""
    records: list[RunRecord] = result.pop("_records")  # type: ignore[assignment]
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = out / f"sweep-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    text = table(records)
    (out / f"sweep-{stamp}.txt").write_text(text + "\n")
    charts = "".join(standard_charts(records))
    verdict = f"capacity: {result['capacity']}; gateway/rtpengine = " + (
        f"{result['capacity_ratio_gateway_to_rtpengine']:.2f}"
        if result["capacity_ratio_gateway_to_rtpengine"]
        else "n/a"
    )
    page = html_page(
        "Media relay benchmark: gateway vs rtpengine vs direct",
        f"<p>Suite {result['suite']}, media path on CPU 0, generator on CPU 1.</p>",
        [("Runs", html_table(records)), ("Plots", f'<div class="charts">{charts}</div>')],
        verdict,
    )
    (out / f"sweep-{stamp}.html").write_text(page)
    print(text)
    print(verdict)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    parser.add_argument("--modes", default="direct,gateway,rtpengine")
    parser.add_argument("--levels", help="comma-separated call counts")
    parser.add_argument("--suite", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument("--smoke", action="store_true", help="a few calls, a few seconds")
    parser.add_argument("--no-sip", action="store_true", help="gateway calls via control only")
    parser.add_argument(
        "--keep-core-awake",
        choices=("on", "off"),
        default="on" if DEFAULT_KEEP_CORE_AWAKE else "off",
        help="the gateway's media.keep_core_awake",
    )
    parser.add_argument(
        "--realtime-priority",
        type=int,
        default=1,
        help="SCHED_FIFO priority of both relays' media path (0: normal scheduling)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # The harness itself (and the gateway's signalling it starts) stays off the media core.
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    result = asyncio.run(run(args))
    path = write(result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
