"""Call detail records (rotation, one record per finished call), reception statistics (RFC 3550
A.3 loss, A.8 jitter, RTCP receiver reports) and the observatory's bounded labels."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gateway.admin.observe import Observatory, end_reason, refusal_reason
from gateway.cdr import CallRecorder, RecordFile, read_records
from gateway.media.control import StreamCounters
from gateway.media.relay import ReceptionStats, read_receiver_report
from gateway.policy.events import SecurityEvent
from gateway.sip.call_events import (
    BadResponse,
    CallAnswered,
    CallCancelled,
    CallEnded,
    CallFailed,
    CallRefused,
    CallStarted,
    PhoneRegistered,
    PlaintextDowngrade,
)


def _rtp(seq: int, ts: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, 1) + bytes(160)


# --------------------------------------------------------------------------- records


def test_record_file_rotates_and_reads_newest_first(tmp_path: Path) -> None:
    f = RecordFile(tmp_path / "cdr" / "calls.jsonl", max_bytes=4096, keep=2)
    for n in range(200):
        f.append({"n": n, "pad": "x" * 100})
    files = f.files()
    assert [p.name for p in files] == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in files)
    newest = read_records(f, limit=5)
    assert [r["n"] for r in newest] == [199, 198, 197, 196, 195]
    # Older records beyond the kept files are gone; everything kept is readable in order.
    everything = read_records(f, limit=10_000)
    ns = [r["n"] for r in everything]
    assert ns == sorted(ns, reverse=True) and ns[0] == 199 and len(ns) < 200
    (tmp_path / "cdr" / "calls.jsonl").open("a").write('{"torn": ')
    assert read_records(f, limit=1)[0]["n"] == 199
    assert read_records(f, limit=3, match=lambda r: r["n"] % 2 == 0)[0]["n"] == 198


def test_one_record_per_finished_call_with_media_counters(tmp_path: Path) -> None:
    f = RecordFile(tmp_path / "calls.jsonl")
    written: list[dict[str, object]] = []
    rec = CallRecorder(f, locate=lambda key: ("192.0.2.5:5060", "198.51.100.1:5061"))
    rec.record_listeners.append(written.append)
    active = {"c1"}
    rec.on_event(CallStarted("abc@phone", "c1", "INVITE", "lan", "201", "0044207", "gw1"), 1000.0)
    rec.on_event(CallAnswered("abc@phone", "c1", "AEAD_AES_128_GCM", False), 1002.0)
    # Events about no call's outcome change nothing.
    rec.on_event(PhoneRegistered("reg1", "201", 3600, "Phone/1.0"), 1002.5)
    rec.settle(lambda: active, 1003.0)
    assert written == []
    info = rec.call_info("c1")
    assert info is not None and info.callee == "0044207" and info.phone == "192.0.2.5:5060"
    assert info.direction == "outbound" and info.started == 1000.0 and info.answered == 1002.0
    rec.on_event(CallEnded("abc@phone", "c1", "BYE from wan", 60.5), 1062.5)
    rec.expect_media("c1")
    active.clear()
    rec.settle(lambda: active, 1062.5)
    assert written == []  # waits for the last counters
    counters = StreamCounters(
        lan_in_packets=3000,
        wan_out_packets=2990,
        wan_in_packets=3001,
        lan_out_packets=3001,
        drop_auth=2,
        drop_no_peer=10,
        lost_lan_in=4,
        jitter_ms_wan_in=1.25,
    )
    rec.media_closed("c1", {"c1/0": counters}, 1062.6)
    assert len(written) == 1
    r = written[0]
    assert r["call_id"] == "abc@phone" and r["caller"] == "201" and r["callee"] == "0044207"
    assert r["direction"] == "outbound" and r["phone"] == "192.0.2.5:5060"
    assert r["provider"] == "198.51.100.1:5061"
    assert r["outcome"] == "completed" and r["end_reason"] == "BYE from wan"
    assert r["duration"] == 60.5 and r["setup_seconds"] == 2.0
    assert r["suite"] == "AEAD_AES_128_GCM"
    assert r["packets"] == {
        "phone_to_provider": {"received": 3000, "sent": 2990, "bytes": 0},
        "provider_to_phone": {"received": 3001, "sent": 3001, "bytes": 0},
    }
    assert r["drops"]["auth"] == 2 and r["drops"]["no_session"] == 10
    assert r["quality"]["lost_phone_to_gateway"] == 4
    assert r["started"] == "1970-01-01T00:16:40.000+00:00"
    line = json.loads((tmp_path / "calls.jsonl").read_text())
    assert line == json.loads(json.dumps(r))
    assert rec.pending == 0


def test_refused_and_failed_calls_get_records_without_media() -> None:
    written: list[dict[str, object]] = []
    rec = CallRecorder(None)
    rec.record_listeners.append(written.append)
    # Refused by policy before the call existed: the record names the number tried.
    rec.on_event(
        CallRefused("x1", "", 403, rule="dialplan.premium", caller="201", callee="0900123"), 5.0
    )
    # Started, then the callee said 486.
    rec.on_event(CallStarted("x2", "c2", "INVITE", "wan", "0044207", "201", "gw2"), 6.0)
    rec.on_event(CallFailed("x2", "c2", 486), 7.0)
    rec.settle(lambda: [], 7.0)
    # A SUBSCRIBE dialog is not a call.
    rec.on_event(CallStarted("x3", "c3", "SUBSCRIBE", "lan", "201", "201", "gw3"), 8.0)
    rec.on_event(CallEnded("x3", "c3", "BYE from lan", 0.0), 9.0)
    rec.settle(lambda: [], 9.0)
    # Cancelled by the caller; a bad response found by Call-ID alone (it has no pair key).
    rec.on_event(CallStarted("x4", "c4", "INVITE", "lan", "201", "202", "gw4"), 10.0)
    rec.on_event(CallCancelled("x4", "c4", "lan"), 11.0)
    rec.on_event(CallStarted("x5", "c5", "INVITE", "lan", "201", "203", "gw5"), 12.0)
    rec.on_event(BadResponse("x5", "unusable SDP"), 13.0)
    rec.settle(lambda: [], 13.0)
    # No acceptable crypto in the answer: refused after the call had started.
    rec.on_event(CallStarted("x6", "c6", "INVITE", "lan", "201", "204", "gw6"), 14.0)
    rec.on_event(CallRefused("x6", "no acceptable crypto", 488, pair="c6"), 15.0)
    rec.settle(lambda: [], 15.0)
    assert [(r["call_id"], r["outcome"], r["status"]) for r in written] == [
        ("x1", "refused", 403),
        ("x2", "failed", 486),
        ("x4", "cancelled", None),
        ("x5", "unanswered", None),
        ("x6", "refused", 488),
    ]
    assert written[0]["end_reason"] == "dialplan.premium"
    assert written[0]["caller"] == "201" and written[0]["callee"] == "0900123"
    assert written[1]["direction"] == "inbound" and written[1]["media_counters"] is False
    assert written[1]["caller"] == "0044207" and written[1]["end_reason"] == "callee answered 486"
    assert written[2]["end_reason"] == "cancelled by lan"
    assert written[3]["end_reason"] == "bad-response"
    assert written[4]["end_reason"] == "no acceptable crypto" and written[4]["callee"] == "204"
    assert rec.pending == 0


# --------------------------------------------------------------------------- reception


def test_loss_from_sequence_numbers_across_wrap_and_restart() -> None:
    r = ReceptionStats()
    seqs = [s & 0xFFFF for s in range(65500, 65600) if s % 10 != 3]  # 10 lost, wraps
    for i, seq in enumerate(seqs):
        r.packet(_rtp(seq, i * 160), 100.0 + i * 0.02)
    assert r.lost == 10
    r.packet(_rtp(seqs[5], 0), 103.0)  # a duplicate counts as received, as in RFC 3550 A.3
    assert r.lost == 9
    # A new sender (SSRC change, far-away sequence): its own count, the old loss kept.
    fresh = [30000 + k for k in range(59) if k not in (10, 20, 30, 40, 41, 42, 43, 44, 45)]
    for i, seq in enumerate(fresh):
        r.packet(_rtp(seq, 9_000_000 + i * 160), 200 + i * 0.02)
    assert r.lost == 9 + 9


def test_jitter_matches_rfc3550_a8() -> None:
    steady = ReceptionStats()
    for i in range(200):
        steady.packet(_rtp(i, i * 160), 10.0 + i * 0.020)
    assert steady.jitter_ms < 0.2
    shaky = ReceptionStats()
    # Every other packet 4 ms late: |D| = 32 timestamp units per packet, J -> 32 (4 ms).
    for i in range(400):
        shaky.packet(_rtp(i, i * 160), 10.0 + i * 0.020 + (0.004 if i % 2 else 0.0))
    assert 3.5 < shaky.jitter_ms < 4.1


def test_receiver_report_blocks() -> None:
    block = (
        struct.pack("!IB", 0x1234, 25) + (5).to_bytes(3, "big") + struct.pack("!IIII", 99, 80, 0, 0)
    )
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0xAA) + block
    assert read_receiver_report(rr) == (5, 80)
    sr = struct.pack("!BBHI", 0x81, 200, 12, 0xAA) + bytes(20) + block
    assert read_receiver_report(sr) == (5, 80)
    negative = (
        struct.pack("!BBHI", 0x81, 201, 7, 0xAA)
        + struct.pack("!IB", 1, 0)
        + b"\xff\xff\xfe"
        + bytes(16)
    )
    assert read_receiver_report(negative) == (-2, 0)
    assert read_receiver_report(struct.pack("!BBHI", 0x80, 201, 1, 0xAA)) is None  # no block
    assert read_receiver_report(b"\x81\xca\x00\x01abcd") is None  # SDES first
    assert read_receiver_report(b"\x81") is None


# --------------------------------------------------------------------------- observatory


def test_observatory_buckets_and_bounded_labels() -> None:
    seen = Observatory()
    seen.security_event(
        SecurityEvent(1.0, "lan", "192.0.2.9", "", "allowlist.lan", "drop", repeats=4), 1000.0
    )
    seen.security_event(
        SecurityEvent(2.0, "lan", "192.0.2.9", "", "scan.user-agent", "ban"), 1000.0
    )
    rows = seen.timeline(1010.0)
    assert len(rows) == 60 and rows[-1]["refusals"] == 5 and rows[-1]["bans"] == 1
    assert [e["action"] for e in seen.recent()] == ["ban", "drop"]
    assert seen.recent(rule="scan")[0]["rule"] == "scan.user-agent"
    assert seen.recent(since=1001.5)[0]["action"] == "ban" and len(seen.recent(since=1001.5)) == 1
    assert (
        refusal_reason(CallRefused("r1", "busy", 486, rule="caps.phone-concurrent"))
        == "caps.phone-concurrent"
    )
    assert (
        refusal_reason(CallRefused("r2", "no acceptable crypto: offered RTP/AVP", 488)) == "media"
    )
    assert refusal_reason(CallRefused("r3", "", 0)) == "other"
    assert end_reason("BYE from lan") == "bye_phone"
    assert end_reason("gateway shutting down") == "shutdown"


def test_observatory_counts_typed_call_events() -> None:
    seen = Observatory()
    seen.call_event(CallStarted("a", "c1", "INVITE", "lan", "201", "0044207", "gw1"), 1000.0)
    seen.call_event(CallStarted("b", "c2", "SUBSCRIBE", "lan", "201", "201", "gw2"), 1000.0)
    seen.call_event(CallAnswered("a", "c1", "AEAD_AES_128_GCM", False), 1001.0)
    seen.call_event(CallAnswered("d", "c4", None, True), 1001.0)
    seen.call_event(CallRefused("e", "", 403, rule="dialplan.premium"), 1002.0)
    seen.call_event(CallFailed("f", "c5", 486), 1003.0)
    seen.call_event(CallEnded("a", "c1", "BYE from lan", 60.0), 1060.0)
    seen.call_event(PlaintextDowngrade("d", "wan.insecure_plaintext_media", "INSECURE"), 1001.0)
    assert seen.call_setups == 1 and seen.calls_answered == 2
    assert seen.suites == {"AEAD_AES_128_GCM": 1, "none": 1}
    assert seen.call_refusals == {"dialplan.premium": 1}
    assert seen.calls_failed == {"4xx": 1} and seen.calls_ended == {"bye_phone": 1}
    assert seen.downgrades == 1
    [bucket] = [b for b in seen.timeline(1010.0) if b["calls"]]
    assert bucket["call_refusals"] == 1
