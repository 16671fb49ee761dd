"""[limits]: the configuration table, the core's limits (calls, registrations, header counts
and sizes) and the listeners' connection accounting, without sockets (docs/robustness.md
"Limits")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.admin.limits import HeadWatch, RequestRate
from gateway.config import ConfigError, LimitsSettings, parse_config
from gateway.limits import (
    ALL_LIMITS,
    CONNECTIONS_PER_SOURCE,
    CONNECTIONS_TOTAL,
    ConnectionLimiter,
    LimitCounters,
)
from gateway.policy import PolicyEngine, PolicySettings
from gateway.policy.settings import AllowlistSettings
from gateway.sip.b2bua import B2bua
from gateway.sip.call_events import CallRefused
from gateway.sip.errors import SipFramingError, SipParseError
from gateway.sip.framing import StreamFramer
from gateway.sip.limits import SipLimits
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.peer import Peer, Side
from tests.unit.test_b2bua import (
    PHONE_IP,
    Harness,
    only,
    phone_request,
    phone_sdp,
    settings,
)

# --------------------------------------------------------------------------- configuration


def test_defaults_are_documented_and_safe() -> None:
    limits = parse_config("").limits
    assert limits == LimitsSettings()
    assert (limits.connections_per_source, limits.connections_total) == (16, 1024)
    assert (limits.tls_handshake_timeout, limits.idle_timeout) == (5.0, 30.0)
    assert (limits.max_message_bytes, limits.max_header_bytes, limits.max_headers) == (
        65535,
        16384,
        256,
    )
    assert (limits.max_calls, limits.max_registrations) == (10000, 10000)


def test_bad_limits_name_file_line_field_and_what_was_expected() -> None:
    text = (
        "[limits]\n"
        "connections_per_source = 0\n"
        "connections_total = 8\n"
        "tls_handshake_timeout = -1\n"
        "max_headers = 3\n"
        "max_calls = 0\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    found = {(p.field, p.line): p.message for p in caught.value.problems}
    assert found[("limits.connections_per_source", 2)] == "expected 1..100000, got 0"
    assert found[("limits.tls_handshake_timeout", 4)] == (
        "expected seconds, 0 < seconds <= 3600, got -1.0"
    )
    assert found[("limits.max_headers", 5)] == "expected 16..10000, got 3"
    assert found[("limits.max_calls", 6)] == "expected 1..1000000, got 0"
    assert str(caught.value).startswith("site.toml:2: limits.connections_per_source")
    with pytest.raises(ConfigError) as caught:
        parse_config("[limits]\nconnections_total = 8\n", "site.toml")
    [problem] = caught.value.problems
    assert (problem.field, problem.line) == ("limits.connections_total", 2)
    assert problem.message == "expected at least connections_per_source (16), got 8"


def test_wrong_type_and_unknown_option_are_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[limits]\nmax_calls = "many"\nmax_friends = 3\n', "site.toml")
    fields = {p.field for p in caught.value.problems}
    assert "limits.max_calls" in fields
    assert any(f.startswith("limits.max_friends") for f in fields)


def test_sip_max_message_bytes_still_works_as_a_deprecated_alias() -> None:
    assert parse_config("[sip]\nmax_message_bytes = 4000\n").limits.max_message_bytes == 4000
    config = parse_config("[limits]\nmax_message_bytes = 5000\n")
    assert config.limits.max_message_bytes == 5000
    with pytest.raises(ConfigError) as caught:
        parse_config("[sip]\nmax_message_bytes = 100\n", "old.toml")
    [problem] = caught.value.problems
    assert (problem.field, problem.message) == (
        "sip.max_message_bytes",
        "expected 1024..1048576, got 100",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config("[sip]\nmax_message_bytes = 4000\n[limits]\nmax_message_bytes = 5000\n")
    [problem] = caught.value.problems
    assert problem.field == "sip.max_message_bytes"
    assert "keep only [limits] max_message_bytes" in problem.message


# --------------------------------------------------------------------------- connections


def test_per_source_and_total_connection_limits_count_and_release() -> None:
    counters = LimitCounters()
    limiter = ConnectionLimiter("lan-tcp", "lan", per_source=2, total=3, counters=counters)
    a1 = limiter.admit("192.0.2.1", 0.0)
    a2 = limiter.admit("192.0.2.1", 0.0)
    assert a1 is not None and a2 is not None
    assert limiter.admit("192.0.2.1", 0.0) is None  # its share is taken
    assert counters[CONNECTIONS_PER_SOURCE] == 1
    b1 = limiter.admit("192.0.2.2", 0.0)
    assert b1 is not None and limiter.open_connections == 3
    assert limiter.admit("192.0.2.3", 0.0) is None  # the listener is full
    assert counters[CONNECTIONS_TOTAL] == 1
    a1.release()
    a1.release()  # a lease is given back once, however often it is released
    assert limiter.open_from("192.0.2.1") == 1 and limiter.open_connections == 2
    assert limiter.admit("192.0.2.3", 0.0) is not None


def test_a_per_source_refusal_is_reported_once_a_minute_with_the_repeats_folded() -> None:
    counters = LimitCounters()
    limiter = ConnectionLimiter("wan-tls", "wan", per_source=1, total=10, counters=counters)
    assert limiter.admit("198.51.100.7", 0.0) is not None
    for second in range(30):
        assert limiter.admit("198.51.100.7", float(second)) is None
    [event] = limiter.drain_events()
    assert (event.side, event.source, event.rule, event.action) == (
        "wan",
        "198.51.100.7",
        "limit.connections-per-source",
        "drop",
    )
    assert "wan-tls" in event.detail and event.repeats == 0
    assert counters[CONNECTIONS_PER_SOURCE] == 30
    assert limiter.admit("198.51.100.7", 61.0) is None
    [later] = limiter.drain_events()
    assert later.repeats == 29  # the refusals since the first report, in one line
    assert limiter.drain_events() == []


def test_every_limit_has_one_counter() -> None:
    assert len(set(ALL_LIMITS)) == len(ALL_LIMITS) == 18
    assert all(name.startswith("limit_") for name in ALL_LIMITS)


def test_every_counter_is_in_the_documented_table() -> None:
    table = Path(__file__).parents[2].joinpath("docs", "robustness.md").read_text()
    for name in ALL_LIMITS:
        assert f"| `{name.removeprefix('limit_')}` |" in table, name


# --------------------------------------------------------------------------- admin listener


def test_head_watch_cuts_a_head_that_never_ends_or_grows_too_long() -> None:
    watch = HeadWatch(100.0, max_header_bytes=1024, idle_timeout=30.0)
    assert watch.deadline() == 130.0  # from the connection's opening
    # A head split anywhere, even inside its final empty line, completes it.
    assert watch.received(b"GET /api/health HTTP/1.1\r\nHost: gw\r\n\r")
    assert watch.deadline() == 130.0
    assert watch.received(b"\n")
    assert watch.deadline() is None  # the application has the request
    watch.request_started()
    assert watch.received(b"x" * 5000)  # a body is the application's to bound
    watch.request_done(140.0)
    assert watch.deadline() == 170.0  # the wait for the next head starts at the answer
    # Dripping bytes does not move the deadline: a slow-loris is cut all the same.
    for _ in range(50):
        assert watch.received(b"X")
    assert watch.deadline() == 170.0
    assert not watch.received(b"X" * 1000)  # past 1024 bytes without an end of head
    big = HeadWatch(0.0, max_header_bytes=1024, idle_timeout=30.0)
    assert not big.received(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 1100 + b"\r\n\r\n")


def test_request_rate_per_source_with_bursts_and_one_report_a_minute() -> None:
    rate = RequestRate(2.0)
    assert [rate.allow("192.0.2.1", 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert rate.allow("192.0.2.2", 0.0)  # another source has its own bucket
    assert rate.allow("192.0.2.1", 0.5)  # one token back after half a second at 2/s
    assert not rate.allow("192.0.2.1", 0.5)
    assert rate.should_report("192.0.2.1", 0.5) == 0
    assert rate.should_report("192.0.2.1", 1.0) is None
    assert rate.should_report("192.0.2.1", 2.0) is None
    assert rate.should_report("192.0.2.1", 61.0) == 2  # the two folded since the first
    many = RequestRate(1.0, max_sources=10)
    for n in range(100):
        many.allow(f"198.51.100.{n}", float(n))
    assert len(many._buckets) <= 10


# --------------------------------------------------------------------------- the core


def limited(policy: PolicyEngine | None = None, **limits: int) -> Harness:
    h = Harness(policy=policy)
    core_settings = dataclasses.replace(settings(), limits=SipLimits(**limits))
    h.core = B2bua(core_settings, policy=policy)
    h.core.wan_connection_state(True, "TLSv1.3 verified", h.now, h.wall)
    h.collect()
    return h


def finals(messages: list[SipRequest | SipResponse]) -> list[SipResponse]:
    return [m for m in only(messages, SipResponse) if m.status >= 200]


def test_calls_beyond_max_calls_get_503_with_retry_after_and_are_counted() -> None:
    h = limited(max_calls=1)
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    assert only(h.take_wan(), SipRequest)[0].method == "INVITE"
    h.take_lan()
    h.from_phone(phone_request("INVITE", call_id="call-2", body=phone_sdp(8002)))
    [refused] = finals(h.take_lan())
    assert refused.status == 503
    assert refused.get("Retry-After") == "30"
    assert "too many calls" in (refused.get("Warning") or "")
    assert not h.take_wan()
    assert h.core.counters["limit_max_calls"] == 1
    [event] = [e for e in h.events if isinstance(e, CallRefused)]
    assert (event.status, event.rule) == (503, "limits.max-calls")
    assert len(h.core.active_calls) == 1


def test_an_emergency_call_is_admitted_over_max_calls() -> None:
    policy = PolicyEngine(PolicySettings(allowlist=AllowlistSettings(lan=("127.0.0.0/8",))))
    h = limited(policy, max_calls=1)
    h.from_phone(phone_request("INVITE", body=phone_sdp(), ruri="sip:2125550123@127.0.0.20"))
    assert len(only(h.take_wan(), SipRequest)) == 1
    h.from_phone(
        phone_request("INVITE", call_id="call-911", body=phone_sdp(8002), ruri="sip:911@127.0.0.20")
    )
    [invite] = only(h.take_wan(), SipRequest)
    assert str(invite.uri) == "sip:911@provider.example"
    assert not finals(h.take_lan())
    assert "limit_max_calls" not in h.core.counters
    # Over the limit now, anything but an emergency call is still refused.
    h.from_phone(phone_request("INVITE", call_id="call-3", body=phone_sdp(8004)))
    assert [r.status for r in finals(h.take_lan())] == [503]


def subscribe_from_phone(h: Harness, call_id: str) -> None:
    h.from_phone(
        phone_request(
            "SUBSCRIBE",
            call_id=call_id,
            ruri="sip:1001@127.0.0.20",
            extra="Event: message-summary\r\nExpires: 3600\r\n",
        )
    )


def test_subscriptions_do_not_count_as_calls_and_have_their_own_bound() -> None:
    h = limited(max_calls=1, max_dialogs=1)
    subscribe_from_phone(h, "sub-1")
    assert only(h.take_wan(), SipRequest)[0].method == "SUBSCRIBE"
    # A subscription in progress takes no call's place: the phone can still call.
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    assert only(h.take_wan(), SipRequest)[0].method == "INVITE"
    assert not finals(h.take_lan())
    assert "limit_max_calls" not in h.core.counters
    # A second subscription meets max_dialogs, not max_calls.
    subscribe_from_phone(h, "sub-2")
    [refused] = finals(h.take_lan())
    assert (refused.status, refused.get("Retry-After")) == (503, "30")
    assert "too many subscriptions and transfers" in (refused.get("Warning") or "")
    assert not h.take_wan()
    assert h.core.counters["limit_max_dialogs"] == 1
    assert "limit_max_calls" not in h.core.counters
    # No call record for a refused subscription: it is not a call.
    assert not [e for e in h.events if isinstance(e, CallRefused)]
    # And a second call meets max_calls whatever the subscriptions.
    h.from_phone(phone_request("INVITE", call_id="call-2", body=phone_sdp(8002)))
    assert [r.status for r in finals(h.take_lan())] == [503]
    assert h.core.counters["limit_max_calls"] == 1


def test_max_dialogs_is_configured_checked_and_defaults_to_max_calls_default() -> None:
    assert parse_config("").limits.max_dialogs == 10000
    assert parse_config("[limits]\nmax_dialogs = 50\n").limits.max_dialogs == 50
    with pytest.raises(ConfigError) as caught:
        parse_config("[limits]\nmax_dialogs = 0\n", "site.toml")
    [problem] = caught.value.problems
    assert (problem.field, problem.message) == ("limits.max_dialogs", "expected 1..1000000, got 0")


def register_from(h: Harness, user: str, *, cseq: int = 1, port: int = 5062) -> None:
    h.from_phone(
        "REGISTER sip:127.0.0.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE_IP}:{port};branch=z9hG4bKreg{user}{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@127.0.0.20>;tag=r{user}\r\nTo: <sip:{user}@127.0.0.20>\r\n"
        f"Call-ID: reg-{user}@phone\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{PHONE_IP}:{port}>\r\nExpires: 120\r\n"
        "Content-Length: 0\r\n\r\n",
        Peer(Side.LAN, "udp", (PHONE_IP, port)),
    )


def grant(h: Harness) -> None:
    [upstream] = only(h.take_wan(), SipRequest)
    ok = make_response(upstream, 200, to_tag="x")
    ok.add("Contact", f"{(upstream.get('Contact') or '').split(';expires')[0]};expires=120")
    h.from_provider(ok)
    assert [r.status for r in finals(h.take_lan())] == [200]


def test_new_bindings_beyond_max_registrations_get_503_and_refreshes_pass() -> None:
    h = limited(max_registrations=2)
    register_from(h, "1001", port=5062)
    grant(h)
    register_from(h, "1002", port=5064)
    grant(h)
    register_from(h, "1003", port=5066)
    [refused] = finals(h.take_lan())
    assert refused.status == 503 and refused.get("Retry-After") == "30"
    assert "too many registrations" in (refused.get("Warning") or "")
    assert not h.take_wan()  # nothing went upstream for it
    assert h.core.counters["limit_max_registrations"] == 1
    # At the cap, a phone that holds a binding refreshes it as always.
    register_from(h, "1001", cseq=2, port=5062)
    grant(h)
    assert len(h.core.registrations) == 2
    assert h.core.counters["limit_max_registrations"] == 1


def test_bindings_never_granted_are_forgotten_so_refused_registers_cannot_fill_the_table() -> None:
    h = limited(max_registrations=2)
    h.advance(1.0)
    register_from(h, "1001", port=5062)
    [upstream] = only(h.take_wan(), SipRequest)
    h.from_provider(make_response(upstream, 403, to_tag="x"))
    register_from(h, "1002", port=5064)
    [upstream] = only(h.take_wan(), SipRequest)
    h.from_provider(make_response(upstream, 403, to_tag="x"))
    h.take_lan()
    register_from(h, "1003", port=5066)
    assert [r.status for r in finals(h.take_lan())] == [503]
    h.advance(200.0)
    register_from(h, "1003", cseq=2, port=5066)
    grant(h)
    assert [b.user for b in h.core.registrations.all()] == ["1003"]


# --------------------------------------------------------------------------- message limits


def with_headers(count: int) -> bytes:
    extra = "".join(f"X-Filler-{n}: {n}\r\n" for n in range(count))
    return phone_request("OPTIONS", extra=extra).encode()


def test_too_many_headers_is_513_and_counted() -> None:
    h = limited(max_headers=20)
    h.from_phone(with_headers(10))
    assert not h.core.counters.get("limit_max_headers")
    h.take_lan()
    h.take_wan()
    h.from_phone(with_headers(30))
    [answer] = only(h.take_lan(), SipResponse)
    assert answer.status == 513
    assert "more than 20 header fields" in (answer.get("Warning") or "")
    assert not h.take_wan()
    assert h.core.counters["limit_max_headers"] == 1


def test_a_header_section_over_max_header_bytes_is_513_and_counted() -> None:
    h = limited(max_header_bytes=1024)
    h.from_phone(phone_request("OPTIONS", extra=f"Subject: {'x' * 1200}\r\n"))
    [answer] = only(h.take_lan(), SipResponse)
    assert answer.status == 513
    assert h.core.counters["limit_max_header_bytes"] == 1


def test_the_parser_names_the_limit_a_message_exceeds() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(with_headers(300), max_headers=256)
    assert (caught.value.status_hint, caught.value.limit) == (513, "limit_max_headers")
    with pytest.raises(SipParseError) as caught:
        parse_message(with_headers(0), max_size=100)
    assert caught.value.limit == "limit_max_message_bytes"
    with pytest.raises(SipParseError) as caught:
        parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    assert caught.value.limit == ""  # bad input, not a limit
    assert isinstance(parse_message(with_headers(200), max_headers=256), SipRequest)


def test_the_stream_framer_refuses_too_many_headers_and_goes_on() -> None:
    framer = StreamFramer(max_headers=20)
    [error, ok] = framer.feed(with_headers(30) + with_headers(5))
    assert isinstance(error, SipParseError) and error.limit == "limit_max_headers"
    assert error.status_hint == 513
    assert isinstance(ok, SipRequest)


def test_stream_size_limits_are_named_on_the_framing_error() -> None:
    framer = StreamFramer(max_header_bytes=1024)
    with pytest.raises(SipFramingError) as caught:
        framer.feed(phone_request("OPTIONS", extra=f"Subject: {'x' * 1200}\r\n").encode())
    assert caught.value.limit == "limit_max_header_bytes"
    framer = StreamFramer(max_body_bytes=2000)
    with pytest.raises(SipFramingError) as caught:
        framer.feed(
            phone_request("OPTIONS").replace("Content-Length: 0", "Content-Length: 3000").encode()
        )
    assert caught.value.limit == "limit_max_message_bytes"
