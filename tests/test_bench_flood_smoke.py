"""Smoke run of bench/flood.py: 5 calls, a few seconds a window, every scenario.

Checks that the bench starts the real gateway with its WAN TLS listener and /metrics, sets
calls up by SIP, runs every flood beside the generator and the REGISTER probe, and writes JSON
with numbers for each window. Never asserts on timing or on the ratios: CI machines are shared
and noisy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.flood import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]


def test_flood_bench_smoke(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the load generator is compiled at benchmark time")
    if os.geteuid() != 0:
        pytest.skip("the spoofed-source floods need a raw socket (root)")
    out = tmp_path / "flood.json"
    argv = [sys.executable, "-m", "bench.flood", "--smoke", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["scenarios"]) == set(SCENARIOS)
    for name, scenario in result["scenarios"].items():
        windows = scenario["windows"]
        assert [w["window"] for w in windows] == ["baseline", "flood"], name
        for w in windows:
            assert w["calls"] > 0, (name, w)
            assert w["latency_us"]["p50"] > 0 and w["latency_us"]["p99"] > 0, (name, w)
            assert isinstance(w["jitter_us"], float), (name, w)
            assert w["register"]["answered"] > 0, (name, w)
            assert isinstance(w["register"]["rtt_ms_p99"], float), (name, w)
            assert isinstance(w["gateway_counted"], dict), (name, w)
        flood = windows[1]["flood"]
        assert flood["rate"] > 0, (name, flood)
        assert set(scenario["ratio_flood_to_baseline"]) >= {"latency_p99", "jitter"}
    # The scanner is banned, and the gateway says so.
    scan = result["scenarios"]["a"]["windows"][1]
    assert scan["bans"] and scan["bans"][0]["address"].startswith("127.0.22.")
