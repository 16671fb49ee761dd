"""Smoke run of bench/failover.py: the three drills with 2 calls each, 20 set-ups per gateway.

Checks that the bench builds the HA lab, runs every drill to the end and writes JSON with the
figures it promises (gaps per direction, calls kept, the time to a new call, the WAN bridge's
leak counts, the replication cost); the drills' correctness is asserted by
tests/interop/test_ha_failover.py. Never asserts on timing: CI machines are shared and noisy.
Needs root and the Debian peers (as the interop tests do) and the gateway's HA commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.ha_pair import ha_missing
from tests.interop.peers import in_ci, require_binaries

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.interop


def test_failover_bench_smoke(tmp_path: Path) -> None:
    require_binaries(
        "ip", "keepalived", "redis-server", "kamailio", "baresip", "tshark", "sipp", "stunnel"
    )
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("the failover bench builds network namespaces: CI must run it as root")
        pytest.skip("the failover bench builds network namespaces: needs root")
    missing = ha_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path / "failover.json"
    argv = [sys.executable, "-m", "bench.failover", "--smoke", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert [d["failure"] for d in result["drills"]] == ["kill-gateway", "links-down", "kill-worker"]
    for drill in result["drills"]:
        assert drill["calls_up"] == 2
        assert drill["calls_kept"] == 2, drill
        assert drill["wan_bridge"]["not_srtp"] == 0, drill
        assert drill["wan_bridge"]["plain_sip"] == 0, drill
        assert drill["wan_bridge"]["tcp_not_tls"] == 0, drill
        assert drill["gap_to_phones"]["max_ms"] is not None
        assert drill["gap_to_provider"]["max_ms"] is not None
        assert drill["new_call_after_s"] is not None
    cost = result["replication"]
    assert cost["calls_measured"]["without_redis"] > 0
    assert cost["calls_measured"]["with_redis"] > 0
    assert cost["replication_extra_percent"] is not None
