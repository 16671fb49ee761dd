"""Smoke runs of bench/dtls.py (a few DTLS-SRTP handshakes in an in-process worker and both
keyings' per-packet figures) and bench/dtls_load.py (a worker process: handshakes beside relayed
calls, SDES vs DTLS-keyed calls under the load generator), written as JSON.

Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import dtls

ROOT = Path(__file__).resolve().parents[1]


def test_dtls_benchmark_runs_and_writes_its_result(tmp_path: Path) -> None:
    assert dtls.main(["--handshakes", "3", "--batches", "2", "--out", str(tmp_path)]) == 0
    [result] = tmp_path.glob("dtls-*.json")
    figures = json.loads(result.read_text())
    assert figures["benchmark"] == "dtls"
    for row in figures["rows"]:
        assert row["handshake_us_server"] > 0 and row["handshake_us_client"] > 0
        assert row["packet_us_sdes"] > 0 and row["packet_us_dtls"] > 0


def test_dtls_load_benchmark_runs_against_a_worker_process(tmp_path: Path) -> None:
    """bench/dtls_load.py: a real worker relays SDES calls from the load generator while a
    far-end process handshakes with it; the sweep relays DTLS-keyed calls with the keys their
    handshakes exported."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc: the load generator is compiled at benchmark time")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.dtls_load",
            *("--calls", "4", "--seconds", "1", "--levels", "4", "--parallel", "2"),
            *("--out", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a safety net, not a measure: a loaded CI host is slow
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = tmp_path.glob("dtls-load-*.json")
    figures = json.loads(result.read_text())
    beside = figures["beside_calls"]
    assert beside["handshakes_per_s"] > 0 and beside["handshakes_failed"] == 0
    assert beside["handshakes_alone"]["handshakes_per_s"] > 0
    runs = [beside["quiet"], beside["loaded"]]
    for row in figures["sweep"]:
        runs += [row["sdes"], row["dtls"]]
        assert "us_per_packet_ratio_dtls_sdes" in row  # None when the CPU ticks were too few
    for run in runs:
        # Every packet the generator received authenticated: the DTLS-exported keys are right.
        assert run["srtp_failures"] == 0
        assert all(d["received"] > 0 for d in run["per_direction"])
