"""Smoke run of bench/policy_cost.py at a tiny iteration count: the table and the JSON fields.

Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import policy_cost

OPERATIONS = ("parse_message", "check_request", "check_outbound_call", "decision")


def test_policy_cost_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_cost.main(["--number", "50", "--repeat", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "decision / parse" in printed, printed
    files = list(tmp_path.glob("policy-cost-*.json"))
    assert len(files) == 1, files
    record = json.loads(files[0].read_text())
    for op in OPERATIONS:
        assert record[op]["best_us"] > 0 and record[op]["median_us"] >= record[op]["best_us"]
    ratio = record["decision"]["median_us"] / record["parse_message"]["median_us"]
    assert abs(record["decision_per_parse"] - ratio) < 0.01, record
    assert record["number"] == 50 and record["repeat"] == 2
