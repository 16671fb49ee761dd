"""Smoke run of bench/core_call.py: a few calls through the B2BUA core, each ending cleanly.

Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

from pathlib import Path

from bench import core_call


def test_core_call_benchmark_runs_and_writes_its_result(tmp_path: Path) -> None:
    figures = core_call.measure(calls=20, rounds=2)
    assert figures["best_us"] > 0 and figures["median_us"] >= figures["best_us"]
    assert core_call.main(["--calls", "10", "--rounds", "1", "--out", str(tmp_path)]) == 0
    [result] = tmp_path.glob("core-call-*.json")
    assert '"benchmark": "core-call"' in result.read_text()
