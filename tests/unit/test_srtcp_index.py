"""SRTCP indexes across a restore, without sockets (gateway/media/srtp.py, checkpoint.py;
RFC 3711 §3.4, §9.1): the gateway's own per-SSRC SRTCP counter is checkpointed, a restored
context moves past it plus a margin before its first SRTCP packet, an SSRC the checkpoint does
not name gets no SRTCP, and the provider's independent libsrtp session sees every packet of
both contexts once, under one key, with no index used twice."""

from __future__ import annotations

import os
import struct

import msgspec
import pylibsrtp
import pytest

from gateway.media import checkpoint, srtp
from gateway.media.control import SrtpKeying, StreamCheckpoint, StreamSpec
from gateway.media.relay import RelayStream
from gateway.media.srtp import (
    SRTCP_MARGIN,
    SRTCP_MAX,
    SrtcpIndexError,
    SrtpProtector,
)
from gateway.media.suites import SrtpSuite

SSRC = 0x11223344
OTHER = 0x55667788
PHONE = ("192.0.2.10", 4000)
PROVIDER = ("198.51.100.7", 5000)


def rtp(seq: int, ssrc: int = SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + b"a" * 80


def rtcp(ssrc: int = SSRC, note: int = 0) -> bytes:
    """A receiver report with one report block (RFC 3550 §6.4.2); ``note`` tells them apart."""
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + struct.pack(
        "!IIIIII", OTHER, note, 0, 0, 0, 0
    )


def keying(suite: SrtpSuite) -> SrtpKeying:
    return SrtpKeying(suite=suite.value, master=os.urandom(suite.master_length))


def provider(k: SrtpKeying) -> pylibsrtp.Session:
    profile = SrtpSuite.from_name(k.suite).libsrtp_profile
    policy = pylibsrtp.Policy(
        key=k.master, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
    )
    return pylibsrtp.Session(policy)


def index(packet: bytes, suite: SrtpSuite) -> int:
    """The SRTCP index of a protected packet: the E flag word sits before the 80-bit tag of
    the HMAC-SHA1 suites (RFC 3711 §3.4), at the very end with AES-GCM (RFC 7714 §9)."""
    end = len(packet) if suite.value.startswith("AEAD") else len(packet) - 10
    word = int.from_bytes(packet[end - 4 : end], "big")
    assert word & 0x80000000  # always encrypted
    return word & 0x7FFFFFFF


SUITES = [SrtpSuite.AES_CM_128_HMAC_SHA1_80, SrtpSuite.AEAD_AES_128_GCM]


@pytest.mark.parametrize("suite", SUITES)
def test_a_restored_protector_starts_past_the_checkpoint_and_never_repeats_an_index(
    suite: SrtpSuite,
) -> None:
    k = keying(suite)
    far = provider(k)
    old = SrtpProtector(k)
    seen: list[int] = []
    for n in range(20):
        out = old.protect_rtcp(rtcp(note=n))
        assert far.unprotect_rtcp(out) == rtcp(note=n)
        seen.append(index(out, suite))
        if n == 11:
            saved = old.srtcp_index(SSRC)  # the checkpoint lags: 8 more go out after it
    assert seen == list(range(1, 21)) and saved == 12
    new = SrtpProtector(k)  # the same key, a fresh libsrtp context (a new worker)
    new.restore_srtcp([(SSRC, saved)])
    after: list[int] = []
    for n in range(20, 30):
        out = new.protect_rtcp(rtcp(note=n))
        # The provider's one session takes both contexts' packets: no replay, no two-time pad.
        assert far.unprotect_rtcp(out) == rtcp(note=n)
        after.append(index(out, suite))
    assert after[0] == saved + SRTCP_MARGIN + 1 > max(seen)
    assert after == sorted(set(after)) and not set(after) & set(seen)
    # The successor's own checkpoint names what it used, so a second restart moves on again.
    assert new.srtcp_index(SSRC) == after[-1]


def test_an_ssrc_the_checkpoint_does_not_name_gets_no_srtcp_after_a_restore() -> None:
    k = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    fresh = SrtpProtector(k)
    fresh.protect_rtcp(rtcp(OTHER))  # a context nobody restored: every SSRC starts at 1
    new = SrtpProtector(k)
    new.restore_srtcp([(SSRC, 3)])
    with pytest.raises(SrtcpIndexError):
        new.protect_rtcp(rtcp(OTHER))  # it may have sent SRTCP after the checkpoint
    new.protect_rtcp(rtcp(SSRC))
    nothing = SrtpProtector(k)
    nothing.restore_srtcp([])  # no checkpoint at all: no SRTCP, RTP is not concerned
    with pytest.raises(SrtcpIndexError):
        nothing.protect_rtcp(rtcp(SSRC))
    assert len(nothing.protect(rtp(1))) > len(rtp(1))


def test_rtcp_before_the_first_rtp_of_a_restored_ssrc_keeps_its_index_when_rtp_resumes() -> None:
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    k = keying(suite)
    far = provider(k)
    old = SrtpProtector(k)
    for seq in range(100, 110):
        far.unprotect(old.protect(rtp(seq)))
    for n in range(5):
        far.unprotect_rtcp(old.protect_rtcp(rtcp(note=n)))
    roc = old.roc(SSRC)
    assert roc is not None
    new = SrtpProtector(k)
    new.restore([(SSRC, roc, 109)])
    new.restore_srtcp([(SSRC, old.srtcp_index(SSRC))])
    indexes = []
    for n in range(5, 8):
        out = new.protect_rtcp(rtcp(note=n))
        far.unprotect_rtcp(out)
        indexes.append(index(out, suite))
    # The first RTP packet sets the SSRC's ROC up in a new libsrtp stream (srtp.py _resume),
    # whose SRTCP counter starts at 0 again: the next SRTCP packet must move it past first.
    for seq in range(120, 125):
        assert far.unprotect(new.protect(rtp(seq))) == rtp(seq)
    for n in range(8, 11):
        out = new.protect_rtcp(rtcp(note=n))
        assert far.unprotect_rtcp(out) == rtcp(note=n)
        indexes.append(index(out, suite))
    assert indexes == list(range(5 + SRTCP_MARGIN + 1, 5 + SRTCP_MARGIN + 7))


def test_a_far_checkpoint_is_reached_over_several_packets_each_dropped_until_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(srtp, "SRTCP_STEP", 400)  # one packet's advance at most
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    k = keying(suite)
    far = provider(k)
    new = SrtpProtector(k)
    new.restore_srtcp([(SSRC, 17_280)])  # a 24-hour call at one RTCP packet per 5 s
    target = 17_280 + SRTCP_MARGIN
    refused = 0
    while True:
        try:
            out = new.protect_rtcp(rtcp())
            break
        except SrtcpIndexError:
            refused += 1
    assert refused == target // 400  # each refused packet moved libsrtp's counter 400 on
    assert index(out, suite) == target + 1
    assert far.unprotect_rtcp(out) == rtcp()


def test_the_31_bit_index_is_never_exceeded() -> None:
    new = SrtpProtector(keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    new.restore_srtcp([(SSRC, SRTCP_MAX - 5)])
    with pytest.raises(SrtcpIndexError):
        new.protect_rtcp(rtcp())  # refused at once: no advance toward an index it cannot use
    assert new.srtcp_index(SSRC) == SRTCP_MAX


def relay_pair(mux: bool) -> tuple[StreamSpec, SrtpKeying, SrtpKeying]:
    """A spec keyed as SDES (``mux``: RTCP on the RTP port) or as DTLS without rtcp-mux
    gives it: the RTCP port's own association keys SRTCP (``wan_rtcp_tx``)."""
    rtp_key, rtcp_key = (
        keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80),
        keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80),
    )
    rx = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    extra = {} if mux else {"wan_rtcp_tx": rtcp_key, "wan_rtcp_rx": rx}
    s = StreamSpec(
        lan_port=10000,
        wan_port=20000,
        phone_addr=PHONE,
        provider_addr=PROVIDER,
        wan_rtcp_mux=mux,
        wan_tx=rtp_key,
        wan_rx=rx,
        **extra,  # type: ignore[arg-type]
    )
    return s, rtp_key, rtp_key if mux else rtcp_key


@pytest.mark.parametrize("mux", [True, False], ids=["sdes-mux", "dtls-rtcp-port"])
def test_relay_checkpoint_carries_srtcp_indexes_to_the_restored_relay(mux: bool) -> None:
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    s, _, srtcp_key = relay_pair(mux)
    far = provider(srtcp_key)
    old = RelayStream(s)
    old.from_lan_rtp(rtp(1), PHONE, 1.0)  # probation (RFC 3550 A.1)
    assert old.from_lan_rtp(rtp(2), PHONE, 1.02) is not None
    used: list[int] = []
    for n in range(6):
        sent = old.from_lan_rtcp(rtcp(note=n), (PHONE[0], PHONE[1] + 1), 1.1 + n)
        assert sent is not None
        far.unprotect_rtcp(sent[0])
        used.append(index(sent[0], suite))
    cp = checkpoint.take("call", 0, old, 0)
    assert (cp.srtcp, cp.rtcp_srtcp) == (((SSRC, 6),), ()) if mux else (((SSRC, 0),), ((SSRC, 6),))
    # The checkpoint goes to a new worker (or the standby) as it is: msgpack both ways.
    cp = msgspec.msgpack.decode(msgspec.msgpack.encode(cp), type=StreamCheckpoint)
    new = RelayStream(s)
    checkpoint.restore(new, cp, 10.0)
    sent = new.from_lan_rtcp(rtcp(note=9), (PHONE[0], PHONE[1] + 1), 10.1)
    assert sent is not None and far.unprotect_rtcp(sent[0]) == rtcp(note=9)
    assert index(sent[0], suite) == 6 + SRTCP_MARGIN + 1 > max(used)
    # A phone SSRC the checkpoint did not name: dropped and counted, never protected.
    for seq in (1, 2):
        new.from_lan_rtp(rtp(seq, OTHER), PHONE, 11.0 + seq / 50)
    assert new.from_lan_rtcp(rtcp(OTHER), (PHONE[0], PHONE[1] + 1), 11.1) is None
    assert new.counters.drop_rtcp_unkeyed == 1 and new.counters.drop_malformed == 0


def test_a_checkpoint_without_srtcp_indexes_restores_no_srtcp() -> None:
    """A record from before this rule (no ``srtcp``) decodes with none: fail closed."""
    s, _, _ = relay_pair(True)
    legacy = msgspec.msgpack.encode({"type": "StreamCheckpoint", "call_id": "call", "stream": 0})
    cp = msgspec.msgpack.decode(legacy, type=StreamCheckpoint)
    assert cp.srtcp == cp.rtcp_srtcp == ()
    new = RelayStream(s)
    checkpoint.restore(new, cp, 1.0)
    for seq in (1, 2):
        new.from_lan_rtp(rtp(seq), PHONE, 1.0 + seq / 50)
    assert new.from_lan_rtcp(rtcp(), (PHONE[0], PHONE[1] + 1), 1.1) is None
    assert new.counters.drop_rtcp_unkeyed == 1
