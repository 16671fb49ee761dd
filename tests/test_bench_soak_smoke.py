"""Smoke run of bench/soak.py: half a minute of churn through the real gateway.

Checks that the soak brings the gateway, the lab provider (TLS + SDES), the phones and the
media pump up, reloads the certificate and has the provider drop its connection once, samples
every series it reports (memory and descriptors of each process, the core's state, media
streams, calls), fits a slope to each, and accounts for every call it placed in the call
records: each exactly once, with an outcome matching what the phone saw. Never asserts on a
duration or a slope: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERIES = {
    "rss_mib.signalling",
    "fds.signalling",
    "rss_mib.worker0",
    "fds.worker0",
    "gateway.calls",
    "gateway.media_streams",
    "gateway.registrations",
    "core.dialog_pairs",
    "core.transactions_lan",
    "core.transactions_wan",
    "core.relays",
    "core.timers",
    "core.timer_heap",
    "core.registrations",
    "core.lan_port_pairs",
    "core.wan_port_pairs",
    "soak.calls_active",
    "soak.media_calls",
}


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench.soak", "--smoke", "--minutes", "0.5", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.exists(), done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["series"].keys() >= SERIES, sorted(result["series"])
    assert result["slopes_per_hour"].keys() == result["series"].keys()
    for name in SERIES:
        assert len(result["series"][name]) >= 3, name
    events = {e["event"]: e for e in result["events"]}
    assert events["certificate reload"]["took"] is True, events
    assert events["provider reconnect"]["back"] is True, events
    cdr = result["cdr"]
    assert cdr["placed"] > 0, cdr
    assert cdr["missing"] == cdr["duplicated"] == cdr["mismatched"] == 0, cdr
    assert cdr["unknown_records"] == 0 and cdr["all_accounted"] is True, cdr
    assert set(cdr["by_kind"]) >= {"answered", "refused", "cancelled", "busy"} or cdr["placed"] < 20
    assert result["media"]["phone_sent"] > 0 and result["media"]["relayed_to_phone"] > 0
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slope/h" in done.stdout
