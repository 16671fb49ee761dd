"""Smoke run of the media benchmark harness: a few calls for a few seconds, every mode.

Checks that the harness builds its generator, sets calls up through the real gateway (SIP
over UDP and TLS), rtpengine and the direct path, and writes a JSON report with the fields
operators read. Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_FIELDS = {"mode", "calls", "suite", "pps", "loss_pct", "latency_us", "jitter_us", "cpu_pct"}


def test_harness_smoke(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the load generator is compiled at benchmark time")
    modes = "direct,bare,gateway,rtpengine" if shutil.which("rtpengine") else "direct,bare,gateway"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.harness",
            "--smoke",
            "--duration",
            "1",
            "--modes",
            modes,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a safety net, not a measure: a loaded CI host is slow
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reports = list(tmp_path.glob("sweep-*.json"))
    assert len(reports) == 1, done.stdout
    result = json.loads(reports[0].read_text())
    assert set(result["capacity"]) == set(modes.split(","))
    assert {run["mode"] for run in result["runs"]} == set(modes.split(","))
    for run in result["runs"]:
        assert set(run) >= RUN_FIELDS, sorted(run)
        assert {"p50", "p99", "p999", "max"} <= set(run["latency_us"])
        assert "rss_mib" in run and "generator_slip_us" in run
        # Every packet was accounted for and authenticated: the set-up (keys, ports) is right.
        assert run["srtp_failures"] == 0
        assert all(d["sent"] > 0 for d in run["per_direction"])
    assert list(tmp_path.glob("sweep-*.html"))


def test_gateway_bench_smoke(tmp_path: Path) -> None:
    """The operator's command end to end, at toy size: report files, figures and verdict."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the load generator is compiled at benchmark time")
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "bench",
            "--levels",
            "5,10",
            "--duration",
            "1",
            "--setup-calls",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"].startswith("this host sustains ")
    assert done.stdout.strip().splitlines()[-1] == report["verdict"]
    assert report["setup_failed"] == 0 and report["setup_per_s"] > 0
    assert report["memory_per_call_kib"] is not None
    assert report["signalling_memory_per_call_kib"] is not None
    assert {run["mode"] for run in report["runs"]} == {"direct", "gateway"}
    assert all(run["srtp_failures"] == 0 for run in report["runs"])
    page = (out / "report.html").read_text()
    assert report["verdict"] in page and "<svg" in page
