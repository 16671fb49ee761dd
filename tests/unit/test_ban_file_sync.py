"""A running engine's bans and the ban file kept in step (``gateway.ban_file``): restored
at start-up, saved when the list moves, lifted when an operator removes one from the file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.ban_file import BanFileSync
from gateway.policy import bans_store
from gateway.policy.bans import PersistedBan
from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import AllowlistSettings, PolicySettings

SITE = PolicySettings(allowlist=AllowlistSettings(lan=("192.0.2.0/24",)))
WALL = 1_000_000.0


def scanner_ban(engine: PolicyEngine, ip: str, now: float) -> None:
    engine.check_request("lan", ip, "OPTIONS", "sipvicious", None, True, now)


def test_saved_when_the_list_moves_and_restored_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bans.json"
    engine = PolicyEngine(SITE)
    sync = BanFileSync(path)
    assert sync.restore(engine, 0.0, WALL) == 0  # no file yet: nothing, and no error
    assert not sync.save_if_changed(engine, 1.0, WALL + 1)
    scanner_ban(engine, "192.0.2.5", 2.0)
    assert sync.save_if_changed(engine, 2.0, WALL + 2)
    assert not sync.save_if_changed(engine, 3.0, WALL + 3)  # unchanged: not written again
    assert [b.address for b in bans_store.load_bans(path)] == ["192.0.2.5"]
    # Our own save is not an operator's edit.
    assert sync.follow(engine, 4.0) == []
    assert [b.address for b in engine.bans(4.0)] == ["192.0.2.5"]

    restarted = PolicyEngine(SITE)
    again = BanFileSync(path)
    assert again.restore(restarted, 0.5, WALL + 10) == 1
    assert [b.address for b in restarted.bans(0.5)] == ["192.0.2.5"]
    assert not again.save_if_changed(restarted, 1.0, WALL + 11)  # restored, not changed


def test_a_ban_removed_from_the_file_is_lifted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bans.json"
    engine = PolicyEngine(SITE)
    sync = BanFileSync(path)
    scanner_ban(engine, "192.0.2.5", 1.0)
    scanner_ban(engine, "192.0.2.6", 1.0)
    sync.save_if_changed(engine, 1.0, WALL)
    engine.drain_events()
    # `gateway bans lift` rewrites the file; make its time differ from our own save's.
    assert bans_store.lift_ban(path, "192.0.2.5")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with caplog.at_level(logging.WARNING, logger="gateway.bans"):
        assert sync.follow(engine, 2.0) == ["192.0.2.5"]
    assert "ban on 192.0.2.5 lifted by the operator" in caplog.text
    assert [b.address for b in engine.bans(2.0)] == ["192.0.2.6"]
    assert [e.action for e in engine.drain_events()] == ["lift"]
    assert sync.follow(engine, 3.0) == []  # the same file again: nothing more


def test_a_lift_is_not_undone_by_a_save_before_the_file_is_followed(tmp_path: Path) -> None:
    """`gateway bans lift` edits the file; the running gateway bans someone else before its
    next look at the file: its save must not write the lifted ban back."""
    path = tmp_path / "bans.json"
    engine = PolicyEngine(SITE)
    sync = BanFileSync(path)
    scanner_ban(engine, "192.0.2.5", 1.0)
    sync.save_if_changed(engine, 1.0, WALL)
    assert bans_store.lift_ban(path, "192.0.2.5")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    scanner_ban(engine, "192.0.2.6", 1.5)  # the list moves before the file is followed
    assert sync.save_if_changed(engine, 1.5, WALL + 1)
    assert [b.address for b in bans_store.load_bans(path)] == ["192.0.2.6"]
    assert [b.address for b in engine.bans(1.5)] == ["192.0.2.6"]


def test_unreadable_and_unwritable_files_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bans.json"
    path.write_text("{not json")
    engine = PolicyEngine(SITE)
    sync = BanFileSync(path)
    with caplog.at_level(logging.ERROR, logger="gateway.bans"):
        assert sync.restore(engine, 0.0, WALL) == 0
        assert sync.follow(engine, 1.0) == []
    assert caplog.text.count("ignoring unreadable ban file") == 2
    blocked = BanFileSync(tmp_path / "bans.json" / "inside")  # a file as folder
    scanner_ban(engine, "192.0.2.5", 2.0)
    with caplog.at_level(logging.ERROR, logger="gateway.bans"):
        assert not blocked.save_if_changed(engine, 2.0, WALL)
    assert "cannot save bans" in caplog.text
    assert [b.address for b in engine.bans(2.0)] == ["192.0.2.5"]  # still in force


def test_restored_bans_keep_their_unix_expiry(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans_store.save_bans(path, [PersistedBan("192.0.2.9", "flood.invite", WALL - 10, WALL + 90, 1)])
    engine = PolicyEngine(SITE)
    assert BanFileSync(path).restore(engine, 5.0, WALL) == 1
    [ban] = engine.bans(5.0)
    assert ban.until == pytest.approx(95.0)
