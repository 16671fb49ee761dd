"""Allowlists, rate limits, bans, brute force, scanners and enumeration (fixed clock)."""

from __future__ import annotations

import pytest

from gateway.policy.engine import PolicyEngine, Side, Verdict
from gateway.policy.flood import TokenBucket
from gateway.policy.settings import AllowlistSettings, FloodSettings, PolicySettings, RateLimit

LAN_PHONE = "192.0.2.20"
WAN_PEER = "203.0.113.7"


def make(**flood: object) -> PolicyEngine:
    return PolicyEngine(
        PolicySettings(
            allowlist=AllowlistSettings(
                lan=("192.0.2.0/24", "2001:db8:1::/64"), wan=("203.0.113.0/24",)
            ),
            flood=FloodSettings(**flood),  # type: ignore[arg-type]
        )
    )


def request(
    e: PolicyEngine,
    now: float,
    *,
    side: Side = "wan",
    ip: str = WAN_PEER,
    method: str = "OPTIONS",
    ua: str | None = None,
    to_user: str | None = None,
    known: bool = True,
) -> Verdict:
    return e.check_request(side, ip, method, ua, to_user, known, now)


# --- token bucket


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=2.0, burst=3.0), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert not bucket.take(0.4)  # time going backwards mints nothing


def test_token_bucket_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(RateLimit(rate=0.0, burst=0.0), now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))


# --- allowlists


@pytest.mark.parametrize(
    ("side", "ip", "allowed"),
    [
        ("lan", "192.0.2.20", True),
        ("lan", "198.51.100.20", False),
        ("lan", "::ffff:192.0.2.20", True),  # dual-stack socket
        ("lan", "2001:db8:1::20", True),
        ("lan", "2001:db8:2::20", False),
        ("wan", "203.0.113.7", True),
        ("wan", "198.51.100.1", False),
        ("wan", "not-an-ip", False),
    ],
)
def test_allowlists(side: str, ip: str, allowed: bool) -> None:
    verdict = make().check_source(side, ip, 0.0)  # type: ignore[arg-type]
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.status is None  # dropped silently by default


def test_refused_source_is_counted_and_logged() -> None:
    e = make()
    e.check_source("wan", "198.51.100.1", 0.0)
    assert e.counters() == {"drop.allowlist.wan": 1}
    [event] = e.drain_events()
    assert (event.source, event.rule, event.action) == ("198.51.100.1", "allowlist.wan", "drop")


def test_allowlist_reject_mode_answers_403() -> None:
    e = PolicyEngine(PolicySettings(allowlist=AllowlistSettings(wan=(), on_deny="reject")))
    verdict = e.check_source("wan", "198.51.100.1", 0.0)
    assert (verdict.allowed, verdict.status) == (False, 403)


def test_provider_peers_are_allowed_and_never_banned() -> None:
    e = PolicyEngine(PolicySettings(flood=FloodSettings(invite=RateLimit(rate=1, burst=1))))
    assert not e.check_source("wan", "198.51.100.9", 0.0).allowed
    e.set_provider_peers(["198.51.100.9"])
    assert e.check_source("wan", "198.51.100.9", 0.0).allowed
    request(e, 0.0, ip="198.51.100.9", method="INVITE")
    assert not request(e, 0.0, ip="198.51.100.9", method="INVITE").allowed
    assert e.bans(0.0) == []
    assert request(e, 1.0, ip="198.51.100.9", method="INVITE").allowed


# --- floods and bans


def test_invite_flood_bans_and_ban_grows_with_repeats() -> None:
    e = make(invite=RateLimit(rate=1.0, burst=2.0), ban_seconds=60.0, ban_growth=4.0)
    assert request(e, 0.0, method="INVITE").allowed
    assert request(e, 0.0, method="INVITE").allowed
    verdict = request(e, 0.0, method="INVITE")
    assert (verdict.allowed, verdict.status, verdict.rule) == (False, None, "flood.invite")
    [ban] = e.bans(0.0)
    assert (ban.address, ban.rule, ban.until, ban.offences) == (WAN_PEER, "flood.invite", 60.0, 1)
    # Banned: everything from it is dropped, on the WAN even before parsing.
    assert e.check_source("wan", WAN_PEER, 30.0).rule == "ban.active"
    assert request(e, 30.0).rule == "ban.active"
    # After expiry it is back; a repeat offence bans four times as long.
    e.handle_timer(61.0)
    assert e.bans(61.0) == []
    for _ in range(3):
        verdict = request(e, 61.0, method="INVITE")
    [ban] = e.bans(61.0)
    assert (ban.offences, ban.until - ban.since) == (2, 240.0)
    actions = [(ev.rule, ev.action) for ev in e.drain_events()]
    assert ("flood.invite", "ban") in actions and ("flood.invite", "expire") in actions


def test_ban_length_is_capped() -> None:
    e = make(
        register=RateLimit(rate=1.0, burst=1.0),
        ban_seconds=100.0,
        ban_growth=10.0,
        ban_max_seconds=500.0,
    )
    now = 0.0
    for _ in range(3):
        request(e, now, method="REGISTER")
        request(e, now, method="REGISTER")
        [ban] = e.bans(now)
        now = ban.until + 1
    assert ban.until - ban.since == 500.0


def test_site_limit_drops_without_banning() -> None:
    e = make(site=RateLimit(rate=1.0, burst=2.0))
    assert request(e, 0.0, ip="203.0.113.1").allowed
    assert request(e, 0.0, ip="203.0.113.2").allowed
    assert request(e, 0.0, ip="203.0.113.3").rule == "flood.site"
    assert e.bans(0.0) == []


def test_never_ban_sources_are_limited_not_banned() -> None:
    e = make(invite=RateLimit(rate=1.0, burst=1.0), never_ban=("203.0.113.0/28",))
    request(e, 0.0, method="INVITE")
    assert request(e, 0.0, method="INVITE").rule == "flood.invite"
    assert e.bans(0.0) == []


def test_lift_ban() -> None:
    e = make(scanner_ban_seconds=3600.0)
    request(e, 0.0, ua="friendly-scanner")
    assert e.lift_ban("203.0.113.7", now=1.0)
    assert not e.lift_ban("203.0.113.7", now=1.0)
    assert request(e, 2.0).allowed
    assert e.counters()["lift.ban.lift"] == 1


# --- brute force


def test_auth_failures_ban_and_success_resets() -> None:
    e = make(auth_failures=3, auth_window_seconds=60.0)
    for t in (0.0, 1.0):
        e.auth_result(LAN_PHONE, 401, t)
    e.auth_result(LAN_PHONE, 200, 2.0)  # a success forgives
    for t in (3.0, 4.0):
        e.auth_result(LAN_PHONE, 403, t)
    assert e.bans(4.0) == []
    e.auth_result(LAN_PHONE, 407, 5.0)
    [ban] = e.bans(5.0)
    assert ban.rule == "auth.failures"
    assert request(e, 6.0, side="lan", ip=LAN_PHONE, method="REGISTER").rule == "ban.active"


def test_auth_failures_outside_window_do_not_add_up() -> None:
    e = make(auth_failures=3, auth_window_seconds=60.0)
    for t in (0.0, 50.0, 100.0, 150.0):
        e.auth_result(LAN_PHONE, 401, t)
    assert e.bans(150.0) == []


def test_first_digest_challenge_is_not_a_failure() -> None:
    e = make(auth_failures=2)
    for t in range(10):
        e.auth_result(LAN_PHONE, 401, float(t), had_credentials=False)
    assert e.bans(10.0) == []


# --- scanners and enumeration


@pytest.mark.parametrize(
    "ua", ["friendly-scanner", "sipvicious 0.3", "SIPCLI/v1.8", "VaxSIPUserAgent/3.1", "Sundayddr"]
)
def test_scanner_user_agents_banned_at_once(ua: str) -> None:
    e = make()
    verdict = request(e, 0.0, ua=ua)
    assert (verdict.allowed, verdict.rule) == (False, "scan.user-agent")
    [ban] = e.bans(0.0)
    assert ban.until == 86400.0


def test_scanner_list_is_configurable() -> None:
    e = make(scanner_user_agents=("evilbot",))
    assert request(e, 0.0, ua="friendly-scanner").allowed
    assert request(e, 0.0, ua="EvilBot 1.0").rule == "scan.user-agent"


def test_enumeration_bans() -> None:
    e = make(enumeration_users=5, enumeration_window_seconds=60.0)
    for user in ("100", "101", "102", "103"):
        assert request(e, 0.0, method="REGISTER", to_user=user, known=False).allowed
    # Known users and the same unknown user again do not count.
    assert request(e, 0.0, method="REGISTER", to_user="201", known=True).allowed
    assert request(e, 0.0, method="REGISTER", to_user="100", known=False).allowed
    verdict = request(e, 1.0, method="REGISTER", to_user="104", known=False)
    assert verdict.rule == "scan.enumeration"
    assert e.bans(1.0)[0].rule == "scan.enumeration"


def test_source_table_is_bounded() -> None:
    e = make(max_tracked_sources=100, per_source=RateLimit(rate=1.0, burst=5.0))
    for i in range(1000):
        request(e, 0.0, ip=f"203.0.113.{i % 250}", method="OPTIONS")
    assert len(e._sources) <= 100
