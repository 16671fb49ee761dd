"""Site state across a restart: the cores' export/restore, sealing, the local store, the keeper."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import stat
from pathlib import Path

import msgspec
import pytest

from gateway.config import StateSettings
from gateway.policy import PolicyEngine
from gateway.policy.caps import CallCaps
from gateway.policy.settings import CapLimits, PolicySettings
from gateway.sip.peer import Peer, Side
from gateway.sip.registrations import RegistrationTable
from gateway.state.keeper import StateKeeper
from gateway.state.local import LocalStateStore
from gateway.state.model import REGISTRATIONS, load_bindings, store_bindings
from gateway.state.seal import Sealer, StateKeyError, parse_key

AUTH = [("Authorization", 'Digest username="100", realm="lab", response="0123abcd"')]


def _table(now: float) -> RegistrationTable:
    table = RegistrationTable()
    peer = Peer(Side.LAN, "udp", ("127.0.33.10", 5060))
    b = table.binding_for("100", "sip:100@lab", "sip:100@127.0.33.10:5060", peer, now)
    b.upstream_cseq = 7
    b.expires_at = now + 300
    b.last_authorization = list(AUTH)
    b.user_agent = "Phone/1.0"
    lapsed = table.binding_for("101", "sip:101@lab", "sip:101@127.0.33.11", peer, now)
    lapsed.expires_at = now - 1  # not saved: the provider no longer routes to it
    return table


def test_bindings_round_trip_with_their_token_and_upstream_dialog() -> None:
    old = _table(now=100.0)
    records = old.export(now=100.0, wall=1_700_000_000.0)
    assert [r.user for r in records] == ["100"]
    assert records[0].expires_at == 1_700_000_300.0
    # A new process: another core clock, later wall time.
    new = RegistrationTable()
    assert new.restore(records, now=5.0, wall=1_700_000_060.0) == 1
    b = new.find(records[0].token, now=5.0)
    assert b is not None and b.token == old.all()[0].token
    assert b.upstream_cseq == 7 and b.upstream_call_id == old.all()[0].upstream_call_id
    assert b.expires_at == pytest.approx(245.0)
    assert b.last_authorization == AUTH and b.phone_peer.connection is None
    assert new.get("sip:100@lab", "sip:100@127.0.33.10:5060") is b
    # Past its expiry it is not restored.
    assert RegistrationTable().restore(records, now=5.0, wall=1_700_000_400.0) == 0


def test_caps_totals_round_trip_and_running_calls_count_as_ended() -> None:
    caps = CallCaps(CapLimits(0, 0, 0, 0))
    caps.started("a", "100", international=False, emergency=False, now=10.0)
    caps.answered("a", 10.0)
    caps.ended("a", 130.0)  # two minutes
    caps.started("b", "100", international=True, emergency=False, now=200.0)
    caps.answered("b", 200.0)
    caps.started("sos", "100", international=False, emergency=True, now=200.0)
    usage, active = caps.export(now=260.0, wall=1_000_260.0)
    assert [c.key for c in active] == ["b"]  # emergency calls never count
    restored = CallCaps(CapLimits(0, 0, 0, 0))
    # Restart 40 s later: the running call counts as ended at the restart (100 s).
    restored.restore(usage, active, now=1.0, wall=1_000_300.0)
    assert restored.minutes_today("100", 1.0) == pytest.approx((120 + 100) / 60)
    assert restored.minutes_today("100", 1.0, international=True) == pytest.approx(100 / 60)
    assert restored.minutes_today(None, 1.0) == pytest.approx((120 + 100) / 60)
    limits = CapLimits(0, 2, 0, 0)
    refusal = restored.check("100", limits, international=False, now=1.0)
    assert refusal is not None and refusal.rule == "caps.phone-calls-per-hour"
    # A day later the totals have aged out as they would have without the restart.
    assert restored.minutes_today("100", 90_000.0) == 0


def test_parse_key_takes_hex_or_base64_and_refuses_anything_else() -> None:
    key = secrets.token_bytes(32)
    assert parse_key(key.hex(), "K") == key
    assert parse_key(base64.b64encode(key).decode(), "K") == key
    assert parse_key(base64.urlsafe_b64encode(key).decode(), "K") == key
    for bad in ("", "abc", key.hex()[:-2], base64.b64encode(key[:16]).decode()):
        with pytest.raises(StateKeyError, match="K is not a 256-bit key"):
            parse_key(bad, "K")
    with pytest.raises(StateKeyError):
        Sealer.from_environment({"K": "not-a-key"}, "K", "K_OLD", "site")


def test_credentials_are_sealed_bound_to_record_and_site() -> None:
    key = secrets.token_bytes(32)
    sealer = Sealer(key, "site-a")
    records = _table(100.0).export(100.0, 1e9)
    document = store_bindings(records, sealer, "site-a")
    data = msgspec.json.encode(document)
    assert b"0123abcd" not in data and b"Digest" not in data
    assert document.bindings[0].sealed_authorization is not None
    # Same key and site: the headers come back.
    assert load_bindings(document, Sealer(key, "site-a"))[0].authorization == tuple(AUTH)
    # Another site's key context does not open it.
    other_site = Sealer(key, "site-b")
    assert load_bindings(document, other_site)[0].authorization == ()
    assert other_site.failures == 1
    # Moved to another binding: does not open.
    moved = msgspec.structs.replace(document.bindings[0], token="gwfeedfeedfeedfeed")
    swapped = msgspec.structs.replace(document, bindings=[moved])
    opener = Sealer(key, "site-a")
    assert load_bindings(swapped, opener)[0].authorization == () and opener.failures == 1


def test_without_a_key_credentials_are_not_stored_at_all() -> None:
    sealer = Sealer(None, "site")
    assert not sealer.enabled
    document = store_bindings(_table(100.0).export(100.0, 1e9), sealer, "site")
    assert document.bindings[0].sealed_authorization is None
    assert b"Digest" not in msgspec.json.encode(document)
    restored = load_bindings(document, sealer)
    assert restored[0].authorization == () and restored[0].token == document.bindings[0].token


def test_wrong_key_drops_the_field_and_counts_and_old_key_still_reads() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    document = store_bindings(_table(100.0).export(100.0, 1e9), Sealer(old, "s"), "s")
    wrong = Sealer(new, "s")
    assert load_bindings(document, wrong)[0].authorization == ()
    assert wrong.failures == 1
    rotating = Sealer(new, "s", old_key=old)
    assert load_bindings(document, rotating)[0].authorization == tuple(AUTH)
    assert rotating.failures == 0 and rotating.opened_with_old_key == 1
    # What it writes from now on is sealed with the new key only.
    resealed = store_bindings(load_bindings(document, rotating), rotating, "s")
    assert load_bindings(resealed, Sealer(new, "s"))[0].authorization == tuple(AUTH)
    assert load_bindings(resealed, Sealer(old, "s"))[0].authorization == ()


def test_local_store_writes_atomically_private_files(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "state")
    assert store.load("caps") is None
    store.save("caps", b"one")
    store.save("caps", b"two")
    assert store.load("caps") == b"two"
    path = store.path("caps")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["site-caps.json"]  # no leftovers


def _settings(tmp_path: Path) -> StateSettings:
    return StateSettings(directory=str(tmp_path), key_env="T_KEY", old_key_env="T_KEY_OLD")


def test_keeper_writes_only_what_changed_and_restores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = secrets.token_bytes(32)
    keeper = StateKeeper(_settings(tmp_path), sealer=Sealer(key, "default"))
    table = _table(100.0)
    policy = PolicyEngine(PolicySettings())
    policy.call_started("c", "100", "+441234", False, 50.0)
    policy.call_answered("c", 50.0)
    policy.call_ended("c", 110.0)
    keeper.restore(RegistrationTable(), None, now=100.0, wall=1e9)
    keeper.save(table, policy, 100.0)
    assert keeper.saves == 2
    keeper.save(table, policy, 100.5)  # nothing changed: nothing written
    assert keeper.saves == 2
    table.all()[0].upstream_cseq += 1
    keeper.save(table, policy, 101.0)
    assert keeper.saves == 3
    text = (tmp_path / "site-registrations.json").read_bytes()
    assert b"0123abcd" not in text
    # The next process, with the key: bindings with credentials, caps minutes.
    caplog.set_level(logging.INFO, logger="gateway.state")
    after = StateKeeper(_settings(tmp_path), sealer=Sealer(key, "default"))
    table2, policy2 = RegistrationTable(), PolicyEngine(PolicySettings())
    after.restore(table2, policy2, now=3.0, wall=1e9 + 10)
    assert [b.last_authorization for b in table2.all()] == [AUTH]
    assert policy2.minutes_today("100", 3.0) == pytest.approx(1.0)
    assert "1 registration(s) still active" in caplog.text
    # Without the key: restored without credentials, and said so.
    caplog.clear()
    bare = StateKeeper(_settings(tmp_path), sealer=Sealer(None, "default"))
    table3 = RegistrationTable()
    bare.restore(table3, None, now=3.0, wall=1e9 + 10)
    assert [b.last_authorization for b in table3.all()] == [[]]
    assert "T_KEY is not set" in caplog.text and "did not open" in caplog.text


def test_keeper_reads_its_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KEY", os.urandom(32).hex())
    assert StateKeeper(_settings(tmp_path)).sealer.enabled
    monkeypatch.setenv("T_KEY", "short")
    with pytest.raises(StateKeyError):
        StateKeeper(_settings(tmp_path))


def test_a_damaged_document_is_not_restored_and_is_replaced(tmp_path: Path) -> None:
    LocalStateStore(tmp_path).save(REGISTRATIONS, b"{not json")
    keeper = StateKeeper(_settings(tmp_path), sealer=Sealer(None, "default"))
    table = RegistrationTable()
    keeper.restore(table, None, now=0.0, wall=1e9)
    assert len(table) == 0
    keeper.save(_table(0.0), None, 0.0)
    assert b"sip:100@lab" in (tmp_path / "site-registrations.json").read_bytes()
