"""Smoke run of bench/dtls.py: a few DTLS-SRTP handshakes in a worker and both keyings'
per-packet figures, written as JSON.

Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import dtls


def test_dtls_benchmark_runs_and_writes_its_result(tmp_path: Path) -> None:
    assert dtls.main(["--handshakes", "3", "--batches", "2", "--out", str(tmp_path)]) == 0
    [result] = tmp_path.glob("dtls-*.json")
    figures = json.loads(result.read_text())
    assert figures["benchmark"] == "dtls"
    for row in figures["rows"]:
        assert row["handshake_us_server"] > 0 and row["handshake_us_client"] > 0
        assert row["packet_us_sdes"] > 0 and row["packet_us_dtls"] > 0
