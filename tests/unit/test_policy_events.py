"""Security events: JSON lines, folding of repeats, counters."""

from __future__ import annotations

import msgspec

from gateway.policy.engine import PolicyEngine
from gateway.policy.events import SecurityEvent, encode_line
from gateway.policy.settings import AllowlistSettings, PolicySettings


def test_json_line() -> None:
    event = SecurityEvent(
        10.5, "lan", "192.0.2.20", "201", "dialplan.no-premium", "reject", 403, "+19005550100"
    )
    line = encode_line(event, clock_offset=1_714_557_600.0)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = msgspec.json.decode(line)
    assert record == {
        "time": "2024-05-01T10:00:10.500000Z",
        "side": "lan",
        "source": "192.0.2.20",
        "phone": "201",
        "rule": "dialplan.no-premium",
        "action": "reject",
        "status": 403,
        "detail": "+19005550100",
        "repeats": 0,
    }


def test_repeated_refusals_are_folded_but_counted() -> None:
    e = PolicyEngine(PolicySettings(allowlist=AllowlistSettings(wan=())))
    for i in range(100):
        e.check_source("wan", "198.51.100.1", i * 0.1)
    events = e.drain_events()
    assert len(events) == 1
    assert e.counters()["drop.allowlist.wan"] == 100
    # After the window the folded repeats are reported.
    e.handle_timer(120.0)
    [summary] = e.drain_events()
    assert (summary.rule, summary.repeats) == ("allowlist.wan", 99)


def test_bans_are_never_folded() -> None:
    e = PolicyEngine(PolicySettings(allowlist=AllowlistSettings(lan=("192.0.2.0/24",))))
    for ip in ("192.0.2.5", "192.0.2.6"):
        e.check_request("lan", ip, "OPTIONS", "friendly-scanner", None, True, 0.0)
    bans = [ev for ev in e.drain_events() if ev.action == "ban"]
    assert [b.source for b in bans] == ["192.0.2.5", "192.0.2.6"]
    assert e.counters()["ban.scan.user-agent"] == 2
