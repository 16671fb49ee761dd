"""Redis state without a Redis: the entries' encoding (credentials sealed), keys per site, the
shared ban list's bookkeeping and the policy engine's remote-ban input."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
import pytest

from gateway.config import StateSettings
from gateway.policy.bans import PersistedBan, SharedBan
from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import AllowlistSettings, FloodSettings, PolicySettings
from gateway.state.local import LocalStateStore
from gateway.state.model import BindingRecord, store_bindings
from gateway.state.redis_state import _safe_url, format_state_status, local_state_status
from gateway.state.redis_store import (
    RedisLink,
    RedisStateStore,
    decode_entry,
    encode_entry,
    state_key,
)
from gateway.state.seal import Sealer
from gateway.state.shared_bans import BanShareTracker

WALL = 1_700_000_000.0
SITE = PolicySettings(
    allowlist=AllowlistSettings(lan=("192.0.2.0/24",)),
    flood=FloodSettings(never_ban=("192.0.2.99/32",)),
)


def _binding() -> BindingRecord:
    return BindingRecord(
        token="t1",
        user="100",
        aor="sip:100@provider.lab",
        phone_contact="sip:100@192.0.2.10:5060",
        transport="udp",
        address=("192.0.2.10", 5060),
        upstream_call_id="c1",
        upstream_from_tag="f1",
        upstream_cseq=2,
        expires_at=WALL + 300,
        last_expires=300,
        authorization=(("Authorization", 'Digest username="100", response="abc123"'),),
    )


def test_keys_are_per_site_and_entries_round_trip() -> None:
    assert state_key("site-a", "registrations") == "smg:site-a:registrations"
    assert state_key("site-b", "registrations") != state_key("site-a", "registrations")
    fields = encode_entry(b'{"version":1}', WALL, "host:1:ab")
    read = {k.encode(): v for k, v in fields.items()} | {b"seq": b"7"}
    entry = decode_entry(read)
    assert entry is not None
    assert (entry.doc, entry.seq, entry.written_at, entry.writer) == (
        b'{"version":1}', 7, WALL, "host:1:ab"
    )
    assert decode_entry({}) is None
    assert decode_entry({b"doc": b"x", b"seq": b"not a number"}) is None


def test_what_reaches_redis_is_the_sealed_document(tmp_path: Path) -> None:
    record = _binding()
    sealer = Sealer(secrets.token_bytes(32), "site-a")
    data = msgspec.json.encode(store_bindings([record], sealer, "site-a"))
    settings = StateSettings(
        directory=str(tmp_path), site="site-a", redis_url=f"unix://{tmp_path}/none.sock"
    )
    store = RedisStateStore(RedisLink(settings, environ={}), LocalStateStore(tmp_path))
    store.save("registrations", data)
    # Kept locally at once, and queued for Redis as the same bytes: nothing in clear.
    assert store.load("registrations") == data
    queued = store._latest["registrations"]
    assert b"Digest" not in queued and b"abc123" not in queued and b"v1:" in queued
    assert "registrations" in store._dirty


def test_a_password_comes_from_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    settings = StateSettings(
        directory=str(tmp_path),
        site="site-a",
        redis_url="redis://127.0.0.1:6379/0",
        redis_password_env="TEST_REDIS_PASSWORD",
    )
    with pytest.raises(ValueError, match="TEST_REDIS_PASSWORD"):
        RedisLink(settings, environ={})
    link = RedisLink(settings, environ={"TEST_REDIS_PASSWORD": "pw"})
    assert link.url == "redis://127.0.0.1:6379/0"
    assert _safe_url("rediss://user:pw@host:6380/0") == "rediss://***@host:6380/0"


def test_redis_settings_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="redis_url"):
        msgspec.convert({"redis_url": "http://x"}, StateSettings)
    with pytest.raises(msgspec.ValidationError, match="site"):
        msgspec.convert({"redis_url": "unix:///r.sock", "site": "shared"}, StateSettings)
    assert msgspec.convert({"site": "shared"}, StateSettings).redis_url is None


def _ban(address: str, expires: float, site: str = "site-a") -> SharedBan:
    return SharedBan(address, "scan.user-agent", WALL, expires, 1, site)


def test_the_tracker_publishes_new_bans_and_lifts_once() -> None:
    tracker = BanShareTracker("site-a")
    local = [PersistedBan("198.51.100.7", "scan.user-agent", WALL, WALL + 600, 1)]
    publish, lifts = tracker.local_changes(local, WALL)
    assert [b.address for b in publish] == ["198.51.100.7"] and publish[0].site == "site-a"
    assert lifts == []
    tracker.committed(publish, lifts, ["198.51.100.7"])
    assert tracker.local_changes(local, WALL + 1) == ([], [])
    # Gone from the engine before its expiry: a lift, published once.
    publish, lifts = tracker.local_changes([], WALL + 2)
    assert (publish, lifts) == ([], ["198.51.100.7"])
    tracker.committed(publish, lifts, [])
    assert tracker.local_changes([], WALL + 3) == ([], [])


def test_an_expiry_is_not_a_lift_nor_is_a_ban_this_site_did_not_apply() -> None:
    tracker = BanShareTracker("site-b")
    tracker.remote_ban(_ban("198.51.100.7", WALL + 10), applied=True)
    tracker.remote_ban(_ban("192.0.2.99", WALL + 600), applied=False)  # exempt here
    # The first ran out, the second was never in force here: neither is lifted.
    assert tracker.local_changes([], WALL + 20) == ([], [])


def test_a_resync_applies_missed_bans_and_lifts_and_removes_expired_ones() -> None:
    tracker = BanShareTracker("site-b")
    tracker.remote_ban(_ban("198.51.100.1", WALL + 600), applied=True)
    shared = {
        "198.51.100.2": _ban("198.51.100.2", WALL + 600),
        "198.51.100.3": _ban("198.51.100.3", WALL - 1),
    }
    apply, lifted, expired = tracker.resync(shared, WALL)
    assert [b.address for b in apply] == ["198.51.100.2"]
    assert lifted == ["198.51.100.1"]
    assert expired == ["198.51.100.3"]
    assert tracker.resync(shared, WALL) == ([], [], ["198.51.100.3"])


def test_the_engine_takes_a_remote_ban_with_its_absolute_expiry_and_names_the_site() -> None:
    engine = PolicyEngine(SITE)
    now = 50.0
    assert engine.remote_ban(_ban("198.51.100.7", WALL + 600), now, WALL)
    assert engine.banned("198.51.100.7", now + 599)
    assert not engine.banned("198.51.100.7", now + 601)
    events = engine.drain_events()
    assert events[-1].action == "ban" and "site site-a" in events[-1].detail
    # The same ban again changes nothing; an expired one is not applied.
    assert not engine.remote_ban(_ban("198.51.100.7", WALL + 600), now, WALL)
    assert not engine.remote_ban(_ban("198.51.100.8", WALL - 1), now, WALL)
    # A lift from another site lifts here, and says which site.
    assert engine.remote_lift("198.51.100.7", "site-a", now + 1)
    assert not engine.banned("198.51.100.7", now + 2)
    lift = engine.drain_events()[-1]
    assert lift.action == "lift" and lift.detail == "site site-a"
    assert not engine.remote_lift("198.51.100.7", "site-a", now + 3)


def test_this_sites_exemptions_win_over_a_remote_ban() -> None:
    engine = PolicyEngine(SITE)
    assert not engine.remote_ban(_ban("192.0.2.99", WALL + 600), 10.0, WALL)
    assert not engine.banned("192.0.2.99", 11.0)
    assert "exempt" in engine.drain_events()[-1].detail


def test_the_status_table() -> None:
    text = format_state_status(
        {
            "backend": "redis",
            "redis": "unix:///run/redis/redis.sock",
            "reachable": False,
            "error": "Connection refused",
            "site": "site-a",
            "last_write": None,
            "last_sync": None,
            "kinds": {"registrations": {"key": "smg:site-a:registrations", "seq": 4}},
            "shared_bans": 2,
        }
    )
    assert "NO (Connection refused)" in text and "seq 4" in text and "shared bans:  2" in text
    local = format_state_status(local_state_status(StateSettings(directory="/var/lib/x")))
    assert "no [state] redis_url" in local
