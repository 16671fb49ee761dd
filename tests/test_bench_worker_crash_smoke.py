"""Smoke run of bench/worker_crash.py: 5 calls, a worker killed, both packet loops.

Checks that the bench runs, kills and sees the worker restarted, and writes JSON with the gap
figures. Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_worker_crash_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "crash.json"
    argv = [sys.executable, "-m", "bench.worker_crash", "--smoke", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["loops"]) == {"c", "python"}
    for figures in result["loops"].values():
        assert figures["calls_up"] == 5
        assert figures["calls_kept"] == 5
        assert figures["srtp_failures_at_far_end"] == 0
        assert figures["gap_phone_to_provider"]["max_ms"] is not None
