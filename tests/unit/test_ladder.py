"""The per-call SIP ladder (gateway.ladder): both legs filed under one call by the call events,
the pending buffer, the bounds, and the redaction of every secret before anything is kept.

The call is tests/ladder_call.py's: a phone's call out, challenged by the provider, answered
with SDES keys, hung up by the phone. Times are the cores' clock (100.0 on); the view turns
them into Unix time with the offset it is given.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ladder import CallLadder, ladder_headers, redact
from gateway.sip.call_events import CallEnded, CallRefused, CallStarted
from tests.ladder_call import (
    ANSWER_KEY,
    CNONCE,
    DIGEST_RESPONSE,
    LAN,
    LAN_CALL_ID,
    NONCE,
    OFFER_KEY,
    PAIR,
    SECRETS,
    WAN,
    WAN_CALL_ID,
    call_steps,
    feed_call,
)

OFFSET = 1_000_000.0


def _invite(call_id: str, *extra: str) -> bytes:
    lines = [
        "INVITE sip:200@127.0.1.20 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.1.10:5062;branch=z9hG4bK-1",
        "From: <sip:100@127.0.1.20>;tag=a",
        "To: <sip:200@127.0.1.20>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _call(ladder: CallLadder, n: int, now: float, *, end: bool = True) -> float:
    """A minimal call ``n``: INVITE in on the LAN, INVITE out on the WAN, started, ended."""
    ladder.received(LAN, _invite(f"lan-{n}"), now)
    ladder.sent(WAN, _invite(f"wan-{n}"), now + 0.01)
    ladder.event(CallStarted(f"lan-{n}", f"pair-{n}", "INVITE", "lan", "100", "200", f"wan-{n}"))
    if end:
        ladder.event(CallEnded(f"lan-{n}", f"pair-{n}", "BYE from lan", 1.0), now + 0.02)
    return now + 1.0


# --------------------------------------------------------------------------- both legs


def test_both_legs_of_a_call_land_in_one_ladder_in_time_order() -> None:
    ladder = CallLadder()
    feed_call(ladder)
    view = ladder.view(PAIR, OFFSET)
    assert view is not None
    call = view.call
    assert (call.pair, call.caller_call_id, call.callee_call_id) == (PAIR, LAN_CALL_ID, WAN_CALL_ID)
    assert (call.lan_call_id, call.wan_call_id) == (LAN_CALL_ID, WAN_CALL_ID)
    assert (call.caller, call.callee, call.from_side, call.method) == (
        "100",
        "200",
        "lan",
        "INVITE",
    )
    assert call.outcome == "ended" and call.dropped == 0
    messages = [step for step in call_steps() if isinstance(step, tuple)]
    assert call.messages == len(view.messages) == len(messages) == 19
    # The INVITEs that came before CallStarted (both legs) were held and are first.
    assert [(m.side, m.direction, m.first_line) for m in view.messages[:3]] == [
        ("lan", "in", "INVITE sip:200@127.0.1.20 SIP/2.0"),
        ("lan", "out", "SIP/2.0 100 Trying"),
        ("wan", "out", "INVITE sip:200@provider.lab SIP/2.0"),
    ]
    assert [m.time for m in view.messages] == sorted(m.time for m in view.messages)
    assert view.messages[0].time == 100.0 + OFFSET
    assert call.started == 100.0 + OFFSET
    # Both BYE answers came after CallEnded and are still filed with the call.
    assert [m.first_line for m in view.messages[-2:]] == ["SIP/2.0 200 OK"] * 2
    assert {m.call_id for m in view.messages if m.side == "lan"} == {LAN_CALL_ID}
    assert {m.call_id for m in view.messages if m.side == "wan"} == {WAN_CALL_ID}
    first = view.messages[0]
    assert (first.transport, first.peer) == ("udp", "127.0.1.10:5062")
    assert view.messages[2].peer == "127.0.1.30:5061" and view.messages[2].transport == "tls"
    assert ("Call-ID", LAN_CALL_ID) in first.headers
    assert ("CSeq", "1 INVITE") in first.headers
    assert ("User-Agent", "LegacyPhone/1.0") in first.headers
    assert "Max-Forwards" not in dict(first.headers)
    # The same ladder is found by either Call-ID.
    assert ladder.view(LAN_CALL_ID, 0.0) == ladder.view(WAN_CALL_ID, 0.0) == ladder.view(PAIR, 0.0)
    assert ladder.view("no-such-call", 0.0) is None


def test_an_active_call_is_listed_with_no_end_and_the_answer_known() -> None:
    ladder = CallLadder()
    feed_call(ladder, until=15)  # up to CallAnswered
    (call,) = ladder.calls(OFFSET)
    assert call.ended is None and call.outcome is None and call.pair == PAIR
    # An offer refused inside the answered call does not end it.
    ladder.event(CallRefused(LAN_CALL_ID, "no acceptable crypto", 488, pair=PAIR))
    assert ladder.calls(0.0)[0].ended is None
    ladder.event(CallEnded(LAN_CALL_ID, PAIR, "BYE from wan", 3.0), 200.0)
    assert ladder.calls(0.0)[0].ended == 200.0


def test_an_inbound_call_puts_the_callers_call_id_on_the_wan_side() -> None:
    ladder = CallLadder()
    ladder.received(WAN, _invite("from-provider"), 1.0)
    ladder.sent(LAN, _invite("to-phone"), 1.1)
    ladder.event(CallStarted("from-provider", "p9", "INVITE", "wan", "300", "100", "to-phone"))
    call = ladder.calls(0.0)[0]
    assert (call.lan_call_id, call.wan_call_id) == ("to-phone", "from-provider")


def test_a_call_refused_before_it_started_keeps_its_own_ladder() -> None:
    ladder = CallLadder(keep_refused=2)
    for n in range(3):
        ladder.received(LAN, _invite(f"fraud-{n}"), float(n))
        ladder.sent(
            LAN,
            b"SIP/2.0 403 Forbidden\r\nCall-ID: fraud-%d\r\nCSeq: 1 INVITE\r\n\r\n" % n,
            n + 0.1,
        )
        ladder.event(
            CallRefused(
                f"fraud-{n}",
                "premium rate",
                403,
                rule="dialplan.premium",
                caller="100",
                callee="0900123",
            )
        )
    assert ladder.view("fraud-0", 0.0) is None  # the ring of refused calls holds two
    view = ladder.view("fraud-2", 0.0)
    assert view is not None
    assert view.call.pair is None and view.call.outcome == "refused"
    assert (view.call.caller, view.call.callee, view.call.from_side) == ("100", "0900123", "lan")
    assert [m.first_line for m in view.messages] == [
        "INVITE sip:200@127.0.1.20 SIP/2.0",
        "SIP/2.0 403 Forbidden",
    ]
    # Refused calls never push real calls out of the finished ring.
    _call(ladder, 1, 10.0)
    assert ladder.view("pair-1", 0.0) is not None


def test_registrations_and_options_are_not_kept() -> None:
    ladder = CallLadder()
    register = (
        b"REGISTER sip:127.0.1.20 SIP/2.0\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\n"
        b'Authorization: Digest username="100", response="' + DIGEST_RESPONSE.encode() + b'"\r\n'
        b"\r\n"
    )
    ladder.received(LAN, register, 1.0)
    ladder.received(LAN, b"OPTIONS sip:x SIP/2.0\r\ni: opt-1\r\nCSeq: 7 OPTIONS\r\n\r\n", 1.0)
    ladder.received(LAN, b"garbage without a call id\r\n\r\n", 1.0)
    assert ladder.chars == 0 and ladder.calls(0.0) == []


# --------------------------------------------------------------------------- bounds


def test_the_last_n_finished_calls_are_kept_with_the_active_ones() -> None:
    ladder = CallLadder(keep_calls=2)
    now = 0.0
    for n in range(4):
        now = _call(ladder, n, now)
    now = _call(ladder, 9, now, end=False)
    assert [c.pair for c in ladder.calls(0.0)] == ["pair-9", "pair-3", "pair-2"]
    assert ladder.view("pair-1", 0.0) is None and ladder.view("lan-1", 0.0) is None
    assert ladder.view("wan-0", 0.0) is None
    # What was dropped is no longer counted against the memory bound.
    kept = [len(_invite(f"{leg}-{n}")) for n in (9, 3, 2) for leg in ("lan", "wan")]
    assert ladder.chars == sum(kept)


def test_a_call_keeps_at_most_max_messages_and_counts_the_rest() -> None:
    ladder = CallLadder(max_messages=5)
    feed_call(ladder)
    view = ladder.view(PAIR, 0.0)
    assert view is not None
    assert len(view.messages) == 5 and view.call.messages == 5 and view.call.dropped == 14
    assert ladder.not_kept == 14


def test_memory_bound_drops_old_finished_calls_first_then_counts() -> None:
    one = len(_invite("lan-0")) + len(_invite("wan-0"))
    ladder = CallLadder(max_chars=3 * one)
    now = 0.0
    for n in range(3):
        now = _call(ladder, n, now)
    assert ladder.chars == 3 * one
    now = _call(ladder, 3, now, end=False)  # needs room: the oldest finished call goes
    assert ladder.view("pair-0", 0.0) is None and ladder.view("pair-3", 0.0) is not None
    assert ladder.chars <= 3 * one
    # Only active calls left and no room: further messages are counted, not kept.
    tight = CallLadder(max_chars=one)
    _call(tight, 1, 0.0, end=False)
    tight.received(LAN, _invite("lan-1"), 2.0)
    view = tight.view("pair-1", 0.0)
    assert view is not None and view.call.messages == 2 and view.call.dropped == 1
    assert tight.chars == one


def test_the_pending_buffer_is_bounded() -> None:
    ladder = CallLadder(pending_calls=2, pending_messages=2)
    for n in range(3):
        ladder.received(LAN, _invite(f"lan-{n}"), float(n))
    for _ in range(3):
        ladder.received(LAN, _invite("lan-2"), 5.0)
    # Two Call-IDs (lan-1, lan-2) of at most two messages each wait.
    assert ladder.chars == 3 * len(_invite("lan-0"))
    # lan-0 was pushed out of the pending buffer: its call starts with no held messages.
    ladder.event(CallStarted("lan-0", "p0", "INVITE", "lan", None, None, "wan-0"))
    ladder.event(CallStarted("lan-2", "p2", "INVITE", "lan", None, None, "wan-2"))
    assert {c.pair: c.messages for c in ladder.calls(0.0)} == {"p0": 0, "p2": 2}


def test_long_messages_are_cut_after_redaction() -> None:
    ladder = CallLadder(max_message_chars=120)
    body = "x" * 500
    data = _invite("lan-1", f'Authorization: Digest response="{DIGEST_RESPONSE}"') + body.encode()
    ladder.received(LAN, data, 1.0)
    ladder.event(CallStarted("lan-1", "p1", "INVITE", "lan", None, None, "wan-1"))
    view = ladder.view("p1", 0.0)
    assert view is not None
    (message,) = view.messages
    assert message.truncated and len(message.text) == 120


# --------------------------------------------------------------------------- redaction


def test_digest_credentials_lose_response_and_nonces_but_keep_who_and_where() -> None:
    text = (
        "INVITE sip:200@provider.lab SIP/2.0\r\n"
        "Call-ID: c1\r\n"
        f'Proxy-Authorization: Digest username="100", realm="provider.lab", nonce="{NONCE}",\r\n'
        f'  uri="sip:200@provider.lab", response="{DIGEST_RESPONSE}", qop=auth, nc=00000001,\r\n'
        f'  cnonce="{CNONCE}", opaque="5ccc069c403ebaf9f0171e9517f40e41"\r\n'
        f'authorization: digest username="100",response={DIGEST_RESPONSE},nonce={NONCE}\r\n'
        "\r\n"
    )
    out = redact(text)
    for secret in (NONCE, DIGEST_RESPONSE, CNONCE, "00000001", "5ccc069c403ebaf9f0171e9517f40e41"):
        assert secret not in out
    assert 'username="100"' in out and 'realm="provider.lab"' in out
    assert 'uri="sip:200@provider.lab"' in out and "qop=auth" in out
    assert 'response="[redacted]"' in out and "response=[redacted]" in out
    assert out.count("\r\n") == text.count("\r\n")  # lines stay as they were
    assert redact(out) == out


def test_challenges_and_authentication_info_lose_their_nonces() -> None:
    text = (
        "SIP/2.0 407 Proxy Authentication Required\r\n"
        f'Proxy-Authenticate: Digest realm="provider.lab", nonce="{NONCE}", algorithm=MD5\r\n'
        f'WWW-Authenticate: Digest realm="r", nonce="{NONCE}x", opaque="op"\r\n'
        f'Authentication-Info: nextnonce="{NONCE}y", rspauth="abc123", cnonce="{CNONCE}"\r\n'
        "\r\n"
    )
    out = redact(text)
    assert NONCE not in out and CNONCE not in out and "abc123" not in out and '"op"' not in out
    assert 'realm="provider.lab"' in out and "algorithm=MD5" in out


def test_other_credential_schemes_are_redacted_whole() -> None:
    out = redact(
        "MESSAGE sip:a SIP/2.0\r\nAuthorization: Basic MTAwOnNlY3JldA==\r\n"
        "Proxy-Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig\r\n\r\n"
    )
    assert "MTAwOnNlY3JldA==" not in out and "eyJ" not in out
    assert "Authorization: Basic [redacted]" in out
    assert "Proxy-Authorization: Bearer [redacted]" in out


def test_sdes_keys_go_but_tag_suite_lifetime_mki_and_fingerprints_stay() -> None:
    body = (
        "v=0\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{OFFER_KEY}|2^31|1:4\r\n"
        f"a=crypto:2 AES_256_CM_HMAC_SHA1_32 inline:{ANSWER_KEY};inline:{OFFER_KEY}|2^20"
        " UNENCRYPTED_SRTCP\r\n"
        "a=key-mgmt:mikey AQAFgM0XflABAAAAAAAAAAAAAAsAyO\r\n"
        "k=base64:c2VjcmV0LWtleQ==\r\n"
        "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B\r\n"
    )
    out = redact("INVITE sip:x SIP/2.0\r\nCall-ID: c\r\n\r\n" + body)
    for secret in (OFFER_KEY, ANSWER_KEY, "AQAFgM0XflABAAAAAAAAAAAAAAsAyO", "c2VjcmV0LWtleQ=="):
        assert secret not in out
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:[redacted]|2^31|1:4\r\n" in out
    assert (
        "a=crypto:2 AES_256_CM_HMAC_SHA1_32 inline:[redacted];inline:[redacted]|2^20"
        " UNENCRYPTED_SRTCP\r\n"
    ) in out
    assert "a=key-mgmt:mikey [redacted]\r\n" in out and "k=base64:[redacted]\r\n" in out
    assert "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B" in out


def test_message_bodies_and_uris_stay_but_uri_passwords_go() -> None:
    text = (
        "MESSAGE sip:bob:hunter2@example.com SIP/2.0\r\n"
        "Contact: <sip:100:pa55word@127.0.1.10:5062;transport=udp>\r\n"
        "Route: <sip:127.0.1.30:5061;lr>, <sip:proxy.lab:5061;transport=tls>\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "the door code is 4711; Authorization: none\r\n"
    )
    out = redact(text)
    assert "hunter2" not in out and "pa55word" not in out
    assert "MESSAGE sip:bob:[redacted]@example.com SIP/2.0" in out
    assert "<sip:100:[redacted]@127.0.1.10:5062;transport=udp>" in out
    assert "Route: <sip:127.0.1.30:5061;lr>, <sip:proxy.lab:5061;transport=tls>" in out
    assert out.endswith("\r\n\r\nthe door code is 4711; Authorization: none\r\n")


def test_headers_that_matter_unfolded_and_compact_forms_expanded() -> None:
    text = (
        "INVITE sip:x SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nf: <sip:a@x>;tag=1\r\n"
        "t: <sip:b@x>\r\ni: short-form\r\nCSeq: 1\r\n INVITE\r\nX-Other: y\r\n"
        'Warning: 399 gw "no acceptable crypto"\r\n\r\nbody: not a header\r\n'
    )
    assert ladder_headers(text) == (
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"),
        ("From", "<sip:a@x>;tag=1"),
        ("To", "<sip:b@x>"),
        ("Call-ID", "short-form"),
        ("CSeq", "1 INVITE"),
        ("Warning", '399 gw "no acceptable crypto"'),
    )


def test_no_secret_fed_in_comes_out_of_any_view() -> None:
    ladder = CallLadder()
    feed_call(ladder)
    view = ladder.view(PAIR, OFFSET)
    assert view is not None
    dumped = json.dumps([asdict(view), [asdict(c) for c in ladder.calls(OFFSET)]])
    for secret in SECRETS:
        assert secret not in dumped
    # The redacted places are still there to read.
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:[redacted]|2^31" in dumped
    assert 'response=\\"[redacted]\\"' in dumped


def test_header_case_quoted_parameters_and_non_ascii_text() -> None:
    text = (
        "INVITE sip:x SIP/2.0\r\n"
        "Subject: caf\u00e9 \u0130stanbul\r\n"
        f'PROXY-AUTHORIZATION: DIGEST Username="a", URI="sip:x;nonce=kept", RESPONSE="{DIGEST_RESPONSE}"\r\n'
        "Proxy-Authorization-Extra: response=not-an-auth-header\r\n"
        "\r\n"
    )
    out = redact(text)
    assert DIGEST_RESPONSE not in out and 'RESPONSE="[redacted]"' in out
    assert 'URI="sip:x;nonce=kept"' in out  # a name inside a quoted value is not a parameter
    assert "response=not-an-auth-header" in out
    assert "caf\u00e9 \u0130stanbul" in out


_B64 = st.binary(min_size=30, max_size=46).map(lambda b: base64.b64encode(b).decode())


@settings(max_examples=200, deadline=None)
@given(
    key=_B64,
    response=st.text("0123456789abcdef", min_size=32, max_size=32),
    nonce=st.text("0123456789abcdefABCDEF+/=", min_size=16, max_size=40),
    fold=st.booleans(),
    upper=st.booleans(),
)
def test_no_key_or_digest_survives_redaction(
    key: str, response: str, nonce: str, fold: bool, upper: bool
) -> None:
    gap = ",\r\n " if fold else ", "
    name = "PROXY-AUTHORIZATION" if upper else "Proxy-Authorization"
    text = (
        "INVITE sip:200@provider.lab SIP/2.0\r\nCall-ID: c\r\n"
        f'{name}: Digest username="100"{gap}nonce="{nonce}"{gap}response="{response}"\r\n'
        f"WWW-Authenticate: Digest nonce={nonce}\r\n"
        "Content-Type: application/sdp\r\n\r\n"
        f"v=0\r\na=crypto:7 AES_256_CM_HMAC_SHA1_80 inline:{key}|2^31\r\n"
    )
    out = redact(text)
    assert key not in out and response not in out and nonce not in out
    assert "a=crypto:7 AES_256_CM_HMAC_SHA1_80 inline:[redacted]|2^31" in out
    assert redact(out) == out


def test_keys_in_a_message_without_its_empty_line_and_credentials_in_a_sipfrag() -> None:
    broken = f"INVITE sip:x SIP/2.0\r\nCall-ID: c\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{OFFER_KEY}"
    assert OFFER_KEY not in redact(broken)
    notify = (
        "NOTIFY sip:x SIP/2.0\r\nContent-Type: message/sipfrag\r\n\r\n"
        f'INVITE sip:y SIP/2.0\r\nAuthorization: Digest username="1", response="{DIGEST_RESPONSE}"\r\n'
    )
    assert DIGEST_RESPONSE not in redact(notify)
