"""Ban persistence: the JSON file, atomic saves, restart with another monotonic clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy import bans_store
from gateway.policy.bans import PersistedBan
from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import AllowlistSettings, PolicySettings

#: The site's phones are on a documentation subnet, allowed on the LAN side.
SITE = PolicySettings(allowlist=AllowlistSettings(lan=("192.0.2.0/24",)))


def scanner_ban(engine: PolicyEngine, ip: str, now: float) -> None:
    engine.check_request("lan", ip, "OPTIONS", "sipvicious", None, True, now)


def test_bans_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    first = PolicyEngine(SITE)
    scanner_ban(first, "192.0.2.5", now=100.0)
    version = first.bans_version
    # The glue saves when bans_version moved; Unix time 1e9 corresponds to monotonic 100.
    bans_store.save_bans(path, first.export_bans(now=100.0, wall=1e9))
    assert first.bans_version == version

    # After a reboot the monotonic clock starts again near zero; an hour has passed.
    second = PolicyEngine(SITE)
    assert second.import_bans(bans_store.load_bans(path), now=5.0, wall=1e9 + 3600) == 1
    [ban] = second.bans(5.0)
    assert ban.address == "192.0.2.5" and ban.rule == "scan.user-agent"
    assert ban.until == pytest.approx(5.0 + 86400 - 3600)
    assert not second.check_request("lan", "192.0.2.5", "OPTIONS", None, None, True, 6.0).allowed


def test_expired_bans_are_not_restored(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans_store.save_bans(path, [PersistedBan("192.0.2.5", "flood.invite", 0.0, 100.0, 1)])
    assert PolicyEngine(SITE).import_bans(bans_store.load_bans(path), now=0.0, wall=200.0) == 0
    assert bans_store.list_bans(path, wall=200.0) == []


def test_list_and_lift_in_file(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans_store.save_bans(
        path,
        [
            PersistedBan("192.0.2.5", "flood.invite", 0.0, 1000.0, 1),
            PersistedBan("2001:db8::1", "scan.user-agent", 0.0, 500.0, 2),
        ],
    )
    assert [b.address for b in bans_store.list_bans(path, wall=10.0)] == [
        "2001:db8::1",
        "192.0.2.5",
    ]
    table = bans_store.format_bans(bans_store.list_bans(path, wall=10.0), wall=10.0)
    assert "scan.user-agent" in table and "in 490s" in table
    assert bans_store.lift_ban(path, "2001:DB8:0::1")  # any spelling of the address
    assert not bans_store.lift_ban(path, "2001:db8::1")
    assert [b.address for b in bans_store.load_bans(path)] == ["192.0.2.5"]
    with pytest.raises(bans_store.BanStoreError):
        bans_store.lift_ban(path, "nonsense")


def test_missing_file_is_empty_and_corrupt_file_names_itself(tmp_path: Path) -> None:
    assert bans_store.load_bans(tmp_path / "none.json") == []
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(bans_store.BanStoreError, match=r"bad\.json"):
        bans_store.load_bans(bad)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans_store.save_bans(path, [PersistedBan("192.0.2.5", "x", 0.0, 1.0, 1)])
    bans_store.save_bans(path, [])
    assert [p.name for p in tmp_path.iterdir()] == ["bans.json"]
    assert bans_store.load_bans(path) == []


def test_engine_lift_forgets_offences() -> None:
    engine = PolicyEngine(SITE)
    scanner_ban(engine, "192.0.2.5", 0.0)
    assert engine.lift_ban("::ffff:192.0.2.5", 1.0)
    scanner_ban(engine, "192.0.2.5", 1.0)
    [ban] = engine.bans(1.0)
    assert ban.offences == 1
