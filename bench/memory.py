"""Memory per active call: RSS of the gateway's processes with N calls up, less idle RSS.

Usage (from the repository root)::

    .venv/bin/python -m bench.memory                      # SIP-driven, 100,300,600 calls
    .venv/bin/python -m bench.memory --no-sip --levels 200,400

For each level the calls are set up (SIP INVITEs through the real ``gateway run``, or control
messages to the worker with ``--no-sip``), RSS is read with the calls up and idle, then after a
few seconds of media both ways (the generator, as in ``bench.harness``), then after the calls
are closed. Levels run in increasing order in one gateway process, as in the sweep, so the
figures also show whether memory is given back. Prints a table and writes
``bench/results/memory-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from pathlib import Path

from gateway.bench.loadgen import (
    MEDIA_PORTS,
    PHONE_ADDRESS,
    PHONE_MEDIA_PORT,
    PROVIDER_ADDRESS,
    PROVIDER_MEDIA_PORT,
    build_loadgen,
    proc_sample,
    run_load,
)
from gateway.bench.sip import SipGatewayTarget
from gateway.bench.targets import Target, WorkersTarget
from gateway.media.suites import SrtpSuite

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_kib(target: Target) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, pid in target.watched().items():
        sample = proc_sample(pid)
        if sample is not None:
            out[label] = sample.rss / 1024
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    suite = SrtpSuite(args.suite)
    exe = build_loadgen()
    target: Target = (
        WorkersTarget(suite, *MEDIA_PORTS) if args.no_sip else SipGatewayTarget(suite, *MEDIA_PORTS)
    )
    rows: list[dict[str, object]] = []
    await target.start()
    try:
        await asyncio.sleep(0.5)
        idle = _rss_kib(target)
        print(f"idle: {idle}")
        for calls in [int(x) for x in args.levels.split(",")]:
            legs = await target.open_calls(calls)
            await asyncio.sleep(0.3)
            up = _rss_kib(target)
            await asyncio.to_thread(
                run_load,
                exe,
                legs,
                phone=(PHONE_ADDRESS, PHONE_MEDIA_PORT),
                provider=(PROVIDER_ADDRESS, PROVIDER_MEDIA_PORT),
                profile=suite.libsrtp_profile,
                duration=args.duration,
                warmup=0.5,
                load_cpu=1,
                watch=target.watched(),
            )
            media = _rss_kib(target)
            await target.close_calls()
            await asyncio.sleep(0.5)
            closed = _rss_kib(target)
            row: dict[str, object] = {"calls": calls, "set_up": len(legs)}
            for label in idle:
                base = idle[label]
                row[label] = {
                    "idle_kib": round(base),
                    "calls_up_kib": round(up.get(label, 0.0)),
                    "after_media_kib": round(media.get(label, 0.0)),
                    "after_close_kib": round(closed.get(label, 0.0)),
                    "per_call_kib": round((media.get(label, 0.0) - base) / max(1, len(legs)), 1),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        await target.stop()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "via": "workers" if args.no_sip else "SIP",
        "suite": suite.value,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--levels", default="100,300,600")
    parser.add_argument("--suite", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--no-sip", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    result = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = args.out / f"memory-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
