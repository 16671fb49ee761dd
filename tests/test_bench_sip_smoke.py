"""Smoke run of bench/sip_setup_rate.py: a few calls at a tiny rate through both flows.

Checks that the benchmark brings its peers up (kamailio, stunnel, a sipp UAS, the real
gateway), runs every call through the gateway and through kamailio alone, and writes JSON with
both rates and their ratio. Never asserts on timing: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.interop.peers import require_binaries

ROOT = Path(__file__).resolve().parents[1]
FLOW_FIELDS = {"name", "calls", "successful", "failed", "elapsed_s", "rate_cps"}


def test_sip_setup_rate_smoke(tmp_path: Path) -> None:
    require_binaries("sipp", "kamailio", "stunnel")
    calls = 3
    argv = [
        sys.executable, "-m", "bench.sip_setup_rate",
        "--calls", str(calls), "--rate", "5", "--limit", "2", "--warmup", "1",
        "--out", str(tmp_path / "results"), "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gateway / kamailio alone:" in done.stdout, done.stdout
    files = list((tmp_path / "results").glob("sip-setup-*.json"))
    assert len(files) == 1, files
    record = json.loads(files[0].read_text())
    for flow in ("gateway", "kamailio"):
        result = record[flow]
        assert result.keys() >= FLOW_FIELDS, result
        assert result["calls"] == calls and result["successful"] == calls, result
        assert result["failed"] == 0 and result["rate_cps"] > 0, result
    assert record["gateway_rate_cps"] == record["gateway"]["rate_cps"]
    assert record["kamailio_rate_cps"] == record["kamailio"]["rate_cps"]
    ratio = record["gateway_rate_cps"] / record["kamailio_rate_cps"]
    assert abs(record["ratio"] - ratio) < 0.01, record
