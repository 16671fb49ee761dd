"""``gateway bans list`` with ``[state] redis_url``: the shared bans in force, each with the
site that made it (gateway/state/shared_bans.py, gateway/policy/bans_store.py)."""

from __future__ import annotations

from gateway.policy.bans import SharedBan
from gateway.policy.bans_store import format_shared_bans
from gateway.state.shared_bans import BanShareTracker


def test_the_shared_list_in_force_holds_every_sites_bans_soonest_first() -> None:
    tracker = BanShareTracker("site-a")
    mine = SharedBan("192.0.2.7", "scan.user-agent", 1000.0, 1900.0, 1, "site-a")
    theirs = SharedBan("198.51.100.9", "flood.invite", 1000.0, 1300.0, 2, "site-b")
    exempt = SharedBan("203.0.113.5", "scan.enumeration", 1000.0, 1600.0, 1, "site-c")
    over = SharedBan("203.0.113.6", "scan.enumeration", 900.0, 1100.0, 1, "site-c")
    tracker.committed([mine], [], [mine.address])
    tracker.remote_ban(theirs, applied=True)
    tracker.remote_ban(exempt, applied=False)  # in force on the list, though not here
    tracker.remote_ban(over, applied=True)
    assert tracker.in_force(1200.0) == [theirs, exempt, mine]
    tracker.remote_lift(theirs.address)
    assert tracker.in_force(1200.0) == [exempt, mine]


def test_the_table_names_the_site_of_each_ban() -> None:
    bans = [
        SharedBan("198.51.100.9", "flood.invite", 1000.0, 1300.0, 2, "site-b"),
        SharedBan("192.0.2.7", "scan.user-agent", 1000.0, 1900.0, 1, "site-a"),
    ]
    lines = format_shared_bans(bans, 1200.0, "site-a").splitlines()
    assert lines[0] == "shared bans (Redis; this site: site-a):"
    assert lines[1].split() == ["ADDRESS", "SITE", "RULE", "OFFENCES", "EXPIRES", "(UTC)"]
    assert lines[2].split()[:4] == ["198.51.100.9", "site-b", "flood.invite", "2"]
    assert lines[2].endswith("(in 100s)")
    assert lines[3].split()[:4] == ["192.0.2.7", "site-a", "scan.user-agent", "1"]
    assert format_shared_bans([], 0.0, "site-a") == "shared bans (Redis; this site: site-a): none"
