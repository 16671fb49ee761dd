"""RelayStream, the sans-IO packet path: a fake phone and a fake provider (pylibsrtp directly)
exchange packets with it and every drop is checked against its counter (docs/design.md
§3.1–3.3, RFC 3711, RFC 5761 §4)."""

from __future__ import annotations

import os
import random
import struct

import msgspec
import pylibsrtp
import pytest

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.relay import (
    LAN_RTCP,
    LAN_RTP,
    SSRC_CANDIDATES,
    SSRC_IDLE_S,
    SSRC_RETIRED_MAX,
    WAN_RTCP,
    WAN_RTP,
    RelayStream,
    is_plain_rtcp,
)
from gateway.media.suites import SrtpSuite

PHONE = ("127.0.0.10", 4000)
PHONE_RTCP = ("127.0.0.10", 4001)
PHONE_OTHER_PORT = ("127.0.0.10", 4444)
INTRUDER = ("127.0.0.99", 4000)
PROVIDER = ("127.0.0.30", 6000)
PROVIDER_RTCP = ("127.0.0.30", 6001)
SSRC = 0x11223344


def keying(suite: SrtpSuite = SrtpSuite.AES_CM_128_HMAC_SHA1_80) -> SrtpKeying:
    return SrtpKeying(suite=suite.value, master=os.urandom(suite.master_length))


def rtp(seq: int, payload: bytes = b"\xff" * 160, marker: bool = False, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, seq * 160, SSRC) + payload


def on_probation(relay: RelayStream, source: tuple[str, int] = PHONE, now: float = 0.0) -> None:
    """The phone's first packet (``rtp(0)``): a new SSRC is on probation until its second
    packet in sequence (RFC 3550 A.1), so this one is dropped, counted ``drop_ssrc``."""
    before = relay.counters.drop_ssrc
    assert relay.from_lan_rtp(rtp(0), source, now) is None
    assert relay.counters.drop_ssrc == before + 1


def rtcp_rr() -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, SSRC)


def rtcp_compound() -> bytes:
    # RR + SDES with one CNAME item, the shape baresip sends.
    sdes_chunk = struct.pack("!I", SSRC) + b"\x01\x04host" + b"\x00\x00"
    sdes = struct.pack("!BBH", 0x81, 202, len(sdes_chunk) // 4) + sdes_chunk
    return rtcp_rr() + sdes


class FakeProvider:
    """The far end of the WAN leg, keyed the mirror way round."""

    def __init__(self, to_gateway: SrtpKeying, from_gateway: SrtpKeying) -> None:
        self.tx = self._session(to_gateway, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.rx = self._session(from_gateway, pylibsrtp.Policy.SSRC_ANY_INBOUND)

    @staticmethod
    def _session(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
        profile = SrtpSuite.from_name(k.suite).libsrtp_profile
        return pylibsrtp.Session(
            pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=profile)
        )


def make(
    suite: SrtpSuite = SrtpSuite.AES_CM_128_HMAC_SHA1_80, **overrides: object
) -> tuple[RelayStream, FakeProvider]:
    tx, rx = keying(suite), keying(suite)
    fields: dict[str, object] = {
        "lan_port": 10000,
        "wan_port": 20000,
        "phone_addr": PHONE,
        "provider_addr": PROVIDER,
        "provider_rtcp_addr": PROVIDER_RTCP,
        "wan_tx": tx,
        "wan_rx": rx,
    }
    fields.update(overrides)
    spec = StreamSpec(**fields)  # type: ignore[arg-type]
    return RelayStream(spec), FakeProvider(to_gateway=rx, from_gateway=tx)


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_round_trip_both_ways(suite: SrtpSuite) -> None:
    relay, provider = make(suite)
    on_probation(relay, now=0.98)
    packet = rtp(1)
    out = relay.from_lan_rtp(packet, PHONE, 1.0)
    assert out is not None
    data, dest, via = out
    assert (dest, via) == (PROVIDER, WAN_RTP)
    assert data != packet and provider.rx.unprotect(data) == packet

    back = relay.from_wan_rtp(provider.tx.protect(rtp(50)), PROVIDER, 2.0)
    assert back == (rtp(50), PHONE, LAN_RTP)

    out = relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 3.0)
    assert out is not None and out[1:] == (PROVIDER_RTCP, WAN_RTCP)
    assert provider.rx.unprotect_rtcp(out[0]) == rtcp_rr()

    back = relay.from_wan_rtcp(provider.tx.protect_rtcp(rtcp_compound()), PROVIDER_RTCP, 4.0)
    assert back == (rtcp_compound(), PHONE_RTCP, LAN_RTCP)

    c = relay.counters
    assert (c.lan_in_packets, c.wan_out_packets, c.wan_in_packets, c.lan_out_packets) == (
        3,
        2,
        2,
        2,
    )
    assert (c.last_lan_packet, c.last_wan_packet) == (3.0, 4.0)
    assert c.lan_in_bytes == 2 * len(packet) + len(rtcp_rr())


def test_tampered_wan_packet_dropped_as_auth() -> None:
    relay, provider = make()
    data = bytearray(provider.tx.protect(rtp(1)))
    data[-1] ^= 0xFF  # in the auth tag
    assert relay.from_wan_rtp(bytes(data), PROVIDER, 0.0) is None
    assert relay.counters.drop_auth == 1
    assert relay.counters.lan_out_packets == 0


def test_replayed_wan_packet_dropped_as_replay() -> None:
    relay, provider = make(SrtpSuite.AEAD_AES_128_GCM)
    data = provider.tx.protect(rtp(9))
    assert relay.from_wan_rtp(data, PROVIDER, 0.0) is not None
    assert relay.from_wan_rtp(data, PROVIDER, 0.0) is None
    rtcp = provider.tx.protect_rtcp(rtcp_rr())
    assert relay.from_wan_rtcp(rtcp, PROVIDER_RTCP, 0.0) is not None
    assert relay.from_wan_rtcp(rtcp, PROVIDER_RTCP, 0.0) is None
    assert relay.counters.drop_replay == 2
    assert relay.counters.drop_auth == 0
    assert relay.counters.lan_out_packets == 2


def test_plain_rtp_on_wan_dropped_as_auth() -> None:
    relay, _ = make()
    assert relay.from_wan_rtp(rtp(1), PROVIDER, 0.0) is None
    assert relay.counters.drop_auth == 1


@pytest.mark.parametrize("packet", [rtcp_rr(), rtcp_compound()])
def test_plain_rtcp_on_wan_dropped(packet: bytes) -> None:
    relay, _ = make(wan_rtcp_mux=True)
    assert relay.from_wan_rtcp(packet, PROVIDER, 0.0) is None
    assert relay.from_wan_rtp(packet, PROVIDER, 0.0) is None  # muxed on the RTP port
    assert relay.counters.drop_plain_rtcp == 2
    assert relay.counters.drop_auth == 0
    assert relay.counters.lan_out_packets == 0


def test_is_plain_rtcp() -> None:
    assert is_plain_rtcp(rtcp_compound())
    assert not is_plain_rtcp(rtcp_compound()[:-1])
    assert not is_plain_rtcp(rtp(1))
    assert not is_plain_rtcp(b"")


def test_wrong_source_lan_packet_dropped_no_rtp_bleed() -> None:
    relay, _ = make()
    assert relay.from_lan_rtp(rtp(1), INTRUDER, 0.0) is None
    assert relay.from_lan_rtcp(rtcp_rr(), INTRUDER, 0.0) is None
    assert relay.counters.drop_wrong_source == 2
    assert relay.counters.wan_out_packets == 0
    # The intruder did not get latched either: the phone still is.
    on_probation(relay, PHONE_OTHER_PORT)
    out = relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0)
    assert out is not None
    back = relay.from_wan_rtp(make()[1].tx.protect(rtp(1)), PROVIDER, 0.0)
    assert back is None  # different key: auth
    assert relay.counters.last_lan_packet == 0.0


def test_wrong_source_wan_packet_dropped() -> None:
    relay, provider = make()
    assert relay.from_wan_rtp(provider.tx.protect(rtp(1)), ("127.0.0.31", 6000), 0.0) is None
    assert relay.counters.drop_wrong_source == 1
    assert relay.counters.lan_out_packets == 0


def test_no_wan_tx_sends_nothing_to_wan() -> None:
    relay, _ = make(wan_tx=None)
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_lan_rtcp(rtcp_rr(), PHONE, 0.0) is None
    assert relay.counters.wan_out_packets == 0
    assert relay.counters.drop_no_peer == 2


def test_no_wan_rx_relays_nothing_from_wan() -> None:
    relay, _ = make(wan_rx=None)
    assert relay.from_wan_rtp(rtp(1), PROVIDER, 0.0) is None
    assert relay.counters.lan_out_packets == 0


def test_no_provider_address_drop_no_peer() -> None:
    relay, _ = make(provider_addr=None, provider_rtcp_addr=None)
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_wan_rtp(rtp(1), PROVIDER, 0.0) is None
    assert relay.counters.drop_no_peer == 2


def test_operator_downgrade_passes_plain() -> None:
    relay, _ = make(wan_tx=None, wan_rx=None, wan_plaintext=True)
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) == (rtp(1), PROVIDER, WAN_RTP)
    # Nothing authenticates plaintext from the WAN either: its first packet is on probation.
    assert relay.from_wan_rtp(rtp(1), PROVIDER, 0.0) is None
    assert relay.from_wan_rtp(rtp(2), PROVIDER, 0.0) == (rtp(2), PHONE, LAN_RTP)
    assert relay.counters.drop_ssrc == 2


def test_keys_win_over_downgrade_flag() -> None:
    relay, provider = make(wan_plaintext=True)
    on_probation(relay)
    out = relay.from_lan_rtp(rtp(1), PHONE, 0.0)
    assert out is not None and out[0] != rtp(1)
    assert provider.rx.unprotect(out[0]) == rtp(1)


def test_rtcp_mux_demux() -> None:
    relay, provider = make(wan_rtcp_mux=True, provider_rtcp_addr=None)
    # RTCP from the phone goes to the provider's RTP port, from the WAN RTP socket (its first
    # report is on probation: RTCP has no sequence number, the second report validates it).
    assert relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 0.0) is None
    out = relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 0.0)
    assert out is not None and out[1:] == (PROVIDER, WAN_RTP)
    assert provider.rx.unprotect_rtcp(out[0]) == rtcp_rr()
    # SRTCP arriving on the WAN RTP port is demuxed to the phone's RTCP port.
    back = relay.from_wan_rtp(provider.tx.protect_rtcp(rtcp_rr()), PROVIDER, 0.0)
    assert back == (rtcp_rr(), PHONE_RTCP, LAN_RTCP)
    # RTP with payload types either side of the RTCP range, marker bit set, stays RTP.
    for pt in (0, 63, 96, 127):
        data = provider.tx.protect(rtp(10 + pt, marker=True, pt=pt))
        back = relay.from_wan_rtp(data, PROVIDER, 0.0)
        assert back is not None and back[2] == LAN_RTP


def test_latching_phone_port() -> None:
    relay, provider = make()
    # A packet on probation latches nothing: the first packet accepted does.
    on_probation(relay, ("127.0.0.10", 4999))
    out = relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0)
    assert out is not None
    back = relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0)
    assert back is not None and back[1] == PHONE_OTHER_PORT
    # Only the first accepted packet latches.
    assert relay.from_lan_rtp(rtp(2), PHONE, 0.0) is not None
    back = relay.from_wan_rtp(provider.tx.protect(rtp(2)), PROVIDER, 0.0)
    assert back is not None and back[1] == PHONE_OTHER_PORT
    # RTCP latches on its own.
    assert relay.from_lan_rtcp(rtcp_rr(), ("127.0.0.10", 5555), 0.0) is not None
    back = relay.from_wan_rtcp(provider.tx.protect_rtcp(rtcp_rr()), PROVIDER_RTCP, 0.0)
    assert back is not None and back[1] == ("127.0.0.10", 5555)


def test_latching_provider_port_only_after_auth() -> None:
    relay, provider = make()
    moved = ("127.0.0.30", 7000)
    # A forged packet from the provider's IP but another port does not move our SRTP.
    assert relay.from_wan_rtp(rtp(1) + b"\x00" * 10, moved, 0.0) is None
    on_probation(relay)
    out = relay.from_lan_rtp(rtp(1), PHONE, 0.0)
    assert out is not None and out[1] == PROVIDER
    # A genuine one does.
    assert relay.from_wan_rtp(provider.tx.protect(rtp(1)), moved, 0.0) is not None
    out = relay.from_lan_rtp(rtp(2), PHONE, 0.0)
    assert out is not None and out[1] == moved


def test_malformed_dropped() -> None:
    relay, _ = make()
    bad_version = bytes([0x40]) + rtp(1)[1:]
    for data in (b"", b"\x80\x00", rtp(1)[:11], bad_version):
        assert relay.from_lan_rtp(data, PHONE, 0.0) is None
    assert relay.from_lan_rtcp(rtcp_rr()[:7], PHONE, 0.0) is None
    assert relay.from_wan_rtp(b"\x80\x00\x00\x01\x00\x00\x00\x00\x00", PROVIDER, 0.0) is None
    assert relay.from_wan_rtcp(b"\x00" * 20, PROVIDER_RTCP, 0.0) is None
    assert relay.counters.drop_malformed == 7
    assert relay.counters.wan_out_packets == relay.counters.lan_out_packets == 0


def test_oversized_packet_dropped_not_raised() -> None:
    relay, _ = make()
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1, payload=b"\x00" * 1480), PHONE, 0.0) is None
    assert relay.from_wan_rtp(rtp(1, payload=b"\x00" * 1600), PROVIDER, 0.0) is None
    assert relay.counters.drop_malformed == 2


def test_update_keeps_context_and_latch_when_unchanged() -> None:
    relay, provider = make()
    on_probation(relay, PHONE_OTHER_PORT)
    assert relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0) is not None
    relay.update(relay.spec)  # e.g. a re-INVITE for hold with the same a=crypto
    back = relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0)
    assert back is not None and back[1] == PHONE_OTHER_PORT
    out = relay.from_lan_rtp(rtp(2), PHONE_OTHER_PORT, 0.0)
    assert out is not None and provider.rx.unprotect(out[0]) == rtp(2)


def test_update_with_new_phone_address_resets_latch() -> None:
    relay, _ = make(wan_plaintext=True, wan_tx=None, wan_rx=None)
    on_probation(relay, PHONE_OTHER_PORT)
    assert relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0) is not None  # latched
    new_phone = ("127.0.0.11", 4100)
    relay.update(msgspec.structs.replace(relay.spec, phone_addr=new_phone))
    assert relay.from_lan_rtp(rtp(2), PHONE, 0.0) is None
    assert relay.counters.drop_wrong_source == 1
    assert relay.from_wan_rtp(rtp(2), PROVIDER, 0.0) is None  # plaintext: on probation
    assert relay.from_wan_rtp(rtp(3), PROVIDER, 0.0) == (rtp(3), new_phone, LAN_RTP)


def test_bad_update_keeps_stream() -> None:
    relay, provider = make()
    bad = SrtpKeying(suite="NULL_HMAC_SHA1_80", master=b"\x00" * 30)
    with pytest.raises(ValueError):
        relay.update(msgspec.structs.replace(relay.spec, wan_tx=bad))
    on_probation(relay)
    out = relay.from_lan_rtp(rtp(1), PHONE, 0.0)
    assert out is not None and provider.rx.unprotect(out[0]) == rtp(1)


def test_close_forgets_keys() -> None:
    relay, provider = make()
    relay.close()
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0) is None
    assert relay.counters.wan_out_packets == relay.counters.lan_out_packets == 0


def test_rtcp_to_phone_defaults_to_rtp_port_plus_one() -> None:
    relay, provider = make()
    back = relay.from_wan_rtcp(provider.tx.protect_rtcp(rtcp_rr()), PROVIDER_RTCP, 0.0)
    assert back == (rtcp_rr(), (PHONE[0], PHONE[1] + 1), LAN_RTCP)


# -- SSRCs: a bounded set per direction (RFC 3711 §3.2.3, §9.1), new ones on probation
# (RFC 3550 §6.2.1, A.1) -------------------------------------------------------------------


def rtp_from(ssrc: int, seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + b"\xd5" * 160


def has_stream(session: pylibsrtp.Session, ssrc: int) -> bool:
    """Whether libsrtp keeps a stream for ``ssrc`` (removing one is the only way to ask)."""
    try:
        session.remove_stream(ssrc)
    except pylibsrtp.Error:
        return False
    return True


def test_ssrc_flood_from_the_phone_is_dropped_and_counted() -> None:
    """20,000 SSRCs from the phone's own address once the call's media flows: the call's
    packets still go through, the flood is dropped and no libsrtp stream is made for it;
    before the gate, libsrtp grew a stream per SSRC and every packet of the worker got slower.
    No flood SSRC is heard twice, so none leaves probation, not even for the free slot."""
    relay, provider = make()
    tick = 2.0**-14  # about 16,000 packets a second, one in 20 the call's (exact in binary)
    call_seq = 0
    for i in range(1, 20001):
        now = i * tick
        if i % 20 == 1:
            call_seq += 1
            out = relay.from_lan_rtp(rtp(call_seq), PHONE, now)
            if call_seq == 1:
                assert out is None  # on probation
            else:
                assert out is not None and provider.rx.unprotect(out[0]) == rtp(call_seq)
        else:
            relay.from_lan_rtp(rtp_from(0x10000000 + i, i), PHONE, now)
    c = relay.counters
    assert c.drop_ssrc == 19000 + 1
    assert c.wan_out_packets == 1000 - 1
    gate = relay.lan_ssrcs
    assert gate.ssrcs == [SSRC]
    assert gate.candidates <= 2 * SSRC_CANDIDATES  # bounded
    tx = relay._tx
    assert tx is not None
    for flooded in (0x10000000 + 2, 0x10000000 + 16386, 0x10000000 + 20000):
        assert not has_stream(tx._session, flooded)  # refused: never made


def test_ssrc_flood_before_the_first_packet_does_not_take_the_call() -> None:
    """Issue 13 follow-up: random SSRCs from the phone's own address and port, 20,000 a
    second, starting before the call's first packet. They used to take both slots with their
    first two packets, and the call's SSRC was refused for the whole call (a slot frees only
    after a second of silence). Now the call gets through from its second packet; no flood
    SSRC ever does."""
    relay, provider = make()
    rng = random.Random(13)
    tick = 1 / 20000
    now = 0.0

    def flood(packets: int) -> None:
        nonlocal now
        for _ in range(packets):
            now += tick
            ssrc, seq = rng.getrandbits(32), rng.getrandbits(16)
            assert relay.from_lan_rtp(rtp_from(ssrc, seq), PHONE, now) is None

    flood(4000)  # 0.2 s before the call
    for seq in range(100):  # 2 s of the call, a packet every 20 ms with 400 flood packets
        out = relay.from_lan_rtp(rtp(seq), PHONE, now)
        if seq == 0:
            assert out is None  # on probation
        else:
            assert out is not None and provider.rx.unprotect(out[0]) == rtp(seq)
        flood(400)
    c = relay.counters
    assert c.wan_out_packets == 99
    assert c.drop_ssrc == 4000 + 100 * 400 + 1
    assert relay.lan_ssrcs.ssrcs == [SSRC]
    assert relay.lan_reception.lost == 0
    # Its first accepted packet latched the phone's port; nothing of the flood reached libsrtp.
    back = relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, now)
    assert back is not None and back[1] == PHONE


def test_a_candidate_is_remembered_across_the_table_size_of_newer_ones() -> None:
    """The worst case: the call's first packet is the last a generation of candidates holds.
    It is still remembered after SSRC_CANDIDATES newer flood SSRCs, forgotten after one more
    (its next packet then starts probation over, and the one after validates it)."""

    def flood(relay: RelayStream, first: int, count: int) -> None:
        for i in range(first, first + count):
            assert relay.from_lan_rtp(rtp_from(0x40000000 + i, 7), PHONE, 0.0) is None

    for newer, remembered in ((SSRC_CANDIDATES, True), (SSRC_CANDIDATES + 1, False)):
        relay, _ = make()
        flood(relay, 0, SSRC_CANDIDATES - 1)
        on_probation(relay)
        flood(relay, SSRC_CANDIDATES, newer)
        assert relay.lan_ssrcs.candidates <= 2 * SSRC_CANDIDATES
        if remembered:
            assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is not None
        else:
            assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
            assert relay.from_lan_rtp(rtp(2), PHONE, 0.0) is not None


def test_a_candidate_needs_consecutive_sequence_numbers() -> None:
    relay, _ = make()
    on_probation(relay)  # seq 0
    assert relay.from_lan_rtp(rtp(2), PHONE, 0.02) is None  # a gap: probation starts over
    assert relay.from_lan_rtp(rtp(2), PHONE, 0.04) is None  # a repeat is no sequence
    assert relay.from_lan_rtp(rtp(3), PHONE, 0.06) is not None
    assert relay.counters.drop_ssrc == 3
    # Across the 16-bit wrap.
    other = 0x77
    assert relay.from_lan_rtp(rtp_from(other, 0xFFFF), PHONE, 0.08) is None
    assert relay.from_lan_rtp(rtp_from(other, 0x10000), PHONE, 0.1) is not None
    assert relay.lan_ssrcs.ssrcs == [SSRC, other]


def test_phone_changing_ssrc_mid_call_loses_one_packet() -> None:
    """A phone that restarts its RTP (a re-INVITE, a transfer) with a new SSRC and sequence:
    the new SSRC loses its first packet to probation, then takes the free slot; a later change
    takes the slot of the SSRC silent for a second, whose libsrtp stream goes."""
    relay, provider = make()
    now = 0.0
    on_probation(relay)
    for seq in range(1, 50):
        now += 0.02
        assert relay.from_lan_rtp(rtp(seq), PHONE, now) is not None
    second, third = 0x55667788, 0x01020304
    for ssrc, start in ((second, 40000), (third, 65530)):
        now += 0.02
        assert relay.from_lan_rtp(rtp_from(ssrc, start), PHONE, now) is None
        for k in range(1, 60):
            now += 0.02
            out = relay.from_lan_rtp(rtp_from(ssrc, start + k), PHONE, now)
            assert out is not None and provider.rx.unprotect(out[0]) == rtp_from(ssrc, start + k)
    assert relay.counters.drop_ssrc == 3
    assert relay.counters.wan_out_packets == 49 + 2 * 59
    assert relay.lan_ssrcs.ssrcs == [second, third]
    tx = relay._tx
    assert tx is not None and not has_stream(tx._session, SSRC)


def test_new_ssrc_takes_the_slot_of_one_silent_for_a_second_and_never_comes_back() -> None:
    relay, provider = make()
    a, b, c_, d = 0xA, 0xB, 0xC, 0xD
    assert relay.from_lan_rtp(rtp_from(a, 1), PHONE, 9.98) is None  # on probation
    assert relay.from_lan_rtp(rtp_from(a, 2), PHONE, 10.0) is not None
    assert relay.from_lan_rtp(rtp_from(b, 1), PHONE, 10.0) is None
    assert relay.from_lan_rtp(rtp_from(b, 2), PHONE, 10.02) is not None  # the free slot
    assert relay.from_lan_rtp(rtp_from(a, 3), PHONE, 10.5) is not None  # both kept
    # Both kept SSRCs were heard less than SSRC_IDLE_S ago: a third one is refused, and not
    # even remembered as a candidate (the C fast path drops it without asking Python).
    assert relay.from_lan_rtp(rtp_from(c_, 1), PHONE, 11.0) is None
    assert relay.from_lan_rtp(rtp_from(c_, 2), PHONE, 11.01) is None
    assert relay.counters.drop_ssrc == 4
    assert relay.lan_ssrcs.candidates == 0
    # b has been silent for a second: c, after its probation, takes its slot; b is retired
    # and its stream freed.
    assert relay.from_lan_rtp(rtp_from(c_, 3), PHONE, 11.03) is None
    out = relay.from_lan_rtp(rtp_from(c_, 4), PHONE, 11.05)
    assert out is not None and provider.rx.unprotect(out[0]) == rtp_from(c_, 4)
    assert relay.lan_ssrcs.ssrcs == [a, c_]
    tx = relay._tx
    assert tx is not None and not has_stream(tx._session, b)
    # A retired SSRC is never accepted again under these keys (its ROC went with its stream:
    # a new one would reuse indices), however long the others are silent.
    assert relay.from_lan_rtp(rtp_from(b, 3), PHONE, 50.0) is None
    assert relay.from_lan_rtp(rtp_from(b, 4), PHONE, 50.0) is None
    assert relay.counters.drop_ssrc == 7
    assert relay.from_lan_rtp(rtp_from(d, 1), PHONE, 50.0) is None
    assert relay.from_lan_rtp(rtp_from(d, 2), PHONE, 50.0) is not None
    assert relay.lan_ssrcs.ssrcs == [c_, d]
    # New keys (a re-key): a clean slate, probation included.
    relay.update(msgspec.structs.replace(relay.spec, wan_tx=keying()))
    assert relay.from_lan_rtp(rtp_from(b, 5), PHONE, 50.1) is None
    assert relay.from_lan_rtp(rtp_from(b, 6), PHONE, 50.12) is not None
    assert relay.lan_ssrcs.ssrcs == [b]


def test_retired_ssrcs_are_bounded_then_slots_stay() -> None:
    relay, _ = make()
    now = 0.0
    for ssrc in range(1, SSRC_RETIRED_MAX + 3):
        now += 2 * SSRC_IDLE_S
        relay.from_lan_rtp(rtp_from(ssrc, 1), PHONE, now)
        assert relay.from_lan_rtp(rtp_from(ssrc, 2), PHONE, now) is not None
    gate = relay.lan_ssrcs
    assert not gate.can_retire
    kept = list(gate.ssrcs)
    assert relay.from_lan_rtp(rtp_from(0xFFFF, 1), PHONE, now + 100) is None
    assert relay.from_lan_rtp(rtp_from(0xFFFF, 2), PHONE, now + 100) is None
    assert gate.ssrcs == kept
    assert relay.from_lan_rtp(rtp_from(kept[0], 3), PHONE, now + 100) is not None


def test_new_provider_ssrc_takes_a_slot_only_once_it_authenticates() -> None:
    """SRTP from the WAN: the tag is the validation, so a new provider SSRC is kept with its
    first authenticated packet (no probation)."""
    relay, provider = make()
    for ssrc in (0xA, 0xB):
        assert relay.from_wan_rtp(provider.tx.protect(rtp_from(ssrc, 1)), PROVIDER, 1.0)
    assert relay.wan_ssrcs.ssrcs == [0xA, 0xB]
    # Within a second of both: refused before libsrtp, counted apart from auth failures.
    assert relay.from_wan_rtp(provider.tx.protect(rtp_from(0xC, 1)), PROVIDER, 1.5) is None
    assert relay.counters.drop_ssrc == 1
    # Later, a forged packet with a new SSRC fails authentication and takes nothing.
    forged = bytearray(provider.tx.protect(rtp_from(0xD, 1)))
    forged[-1] ^= 1
    assert relay.from_wan_rtp(bytes(forged), PROVIDER, 5.0) is None
    assert relay.counters.drop_auth == 1
    assert relay.wan_ssrcs.ssrcs == [0xA, 0xB]
    # A genuine one does, and the SSRC it replaces is gone from libsrtp.
    assert relay.from_wan_rtp(provider.tx.protect(rtp_from(0xD, 2)), PROVIDER, 5.0)
    assert relay.wan_ssrcs.ssrcs == [0xB, 0xD]
    rx = relay._rx
    assert rx is not None
    assert not has_stream(rx._session, 0xA) and has_stream(rx._session, 0xB)


def test_forged_wan_flood_before_the_providers_first_packet_takes_nothing() -> None:
    """Unauthenticated packets never reach the gate's state: not slots, not candidates, not
    even with the provider's own SSRC and consecutive sequence numbers."""
    relay, provider = make()
    for i in range(3000):
        ssrc = SSRC if i % 2 else 0x60000000 + i
        assert relay.from_wan_rtp(rtp_from(ssrc, i) + b"\x00" * 10, PROVIDER, i * 5e-5) is None
    assert relay.counters.drop_auth == 3000
    assert relay.wan_ssrcs.ssrcs == [] and relay.wan_ssrcs.candidates == 0
    assert relay.from_wan_rtp(provider.tx.protect(rtp(7)), PROVIDER, 0.2) == (
        rtp(7),
        PHONE,
        LAN_RTP,
    )
    assert relay.wan_ssrcs.ssrcs == [SSRC]


def test_rtcp_muxed_by_the_phone_is_relayed_as_rtcp_not_counted_as_rtp() -> None:
    """RFC 5761 §4: second byte 200-204 on the LAN RTP port is RTCP. It used to go through
    the RTP reception statistics (a sequence restart each time) and into libsrtp as RTP, where
    its bytes 8-11 made a new SSRC (stream) per report."""
    relay, provider = make()
    on_probation(relay)
    for seq in (1, 2, 3):
        assert relay.from_lan_rtp(rtp(seq), PHONE, seq * 0.02) is not None
    before = relay.lan_reception.state()
    for packet_type in (200, 201, 202, 203, 204):
        report = struct.pack("!BBHI", 0x80, packet_type, 1, SSRC)
        out = relay.from_lan_rtp(report, PHONE, 0.07)
        assert out is not None and out[1:] == (PROVIDER_RTCP, WAN_RTCP)
        assert provider.rx.unprotect_rtcp(out[0]) == report
    assert relay.lan_reception.state() == before
    assert relay.lan_ssrcs.ssrcs == [SSRC]
    # A receiver report read from it, as on the RTCP port.
    block = struct.pack("!IIIIII", 0x99, 7, 1000, 80, 0, 0)
    out = relay.from_lan_rtp(struct.pack("!BBHI", 0x81, 201, 7, SSRC) + block, PHONE, 0.08)
    assert out is not None and relay.counters.phone_reported_lost == 7
    assert relay.from_lan_rtp(rtp(4), PHONE, 0.08) is not None
    assert relay.lan_reception.lost == 0
    assert relay.counters.wan_out_packets == 4 + 5 + 1
    # RTP with those payload types but no marker bit, and marker-bit RTP, stays RTP.
    assert relay.from_lan_rtp(rtp(5, pt=72), PHONE, 0.1) is not None
    assert relay.from_lan_rtp(rtp(6, pt=8, marker=True), PHONE, 0.12) is not None
    assert relay.lan_reception.state()[3] == 6  # received


def test_rtcp_from_the_phone_goes_through_the_same_ssrc_gate() -> None:
    """SRTCP shares libsrtp's per-SSRC streams: RTCP with a new sender SSRC in every packet on
    the phone's RTCP port is dropped and counted like an RTP flood."""
    relay, provider = make()
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is not None
    for i in range(1000):
        report = struct.pack("!BBHI", 0x80, 201, 1, 0x30000000 + i)
        assert relay.from_lan_rtcp(report, PHONE_RTCP, 0.001 * i) is None
    assert relay.counters.drop_ssrc == 1 + 1000  # each heard once: none leaves probation
    assert relay.lan_ssrcs.ssrcs == [SSRC]
    out = relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 1.0)
    assert out is not None and provider.rx.unprotect_rtcp(out[0]) == rtcp_rr()
    tx = relay._tx
    assert tx is not None and not has_stream(tx._session, 0x30000000)


def test_rtcp_only_phone_is_validated_by_its_second_report() -> None:
    """A phone that sends no RTP (recvonly) still sends receiver reports: RTCP has no
    sequence number, so its second report validates its SSRC."""
    relay, provider = make()
    assert relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 0.0) is None
    out = relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 5.0)
    assert out is not None and provider.rx.unprotect_rtcp(out[0]) == rtcp_rr()
    assert relay.lan_ssrcs.ssrcs == [SSRC]
    assert relay.counters.drop_ssrc == 1


def test_binding_type_error_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pylibsrtp whose libsrtp functions take other arguments raises TypeError from cffi:
    the packet is dropped and counted, the worker's loop goes on."""
    from gateway.media import srtp as srtp_module

    relay, provider = make()

    def wrong_signature(*args: object) -> int:
        raise TypeError(f"expected 5 arguments, got {len(args)}")

    class Binding:
        srtp_protect = srtp_unprotect = staticmethod(wrong_signature)

    monkeypatch.setattr(srtp_module, "_lib", Binding)
    on_probation(relay)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0) is None
    assert relay.counters.drop_malformed == 2


def test_lan_rtp_refused_decides_only_what_from_lan_rtp_would_drop_for_its_ssrc() -> None:
    """The worker's shortcut for a flood on the C fast path: it drops (and counts) a packet
    only where from_lan_rtp would drop it for its SSRC with a slot free, and otherwise changes
    nothing, so from_lan_rtp then decides as if it had not been asked."""
    relay, _ = make()
    counters = msgspec.structs.replace(relay.counters)
    for packet, source in (
        (rtp(0), INTRUDER),  # wrong source: from_lan_rtp counts it
        (rtp(0)[:11], PHONE),  # malformed
        (rtcp_rr(), PHONE),  # RTCP muxed by the phone
    ):
        assert not relay.lan_rtp_refused(packet, source, 0.0)
    assert relay.counters == counters and relay.lan_ssrcs.candidates == 0
    assert relay.lan_rtp_refused(rtp(0), PHONE, 0.0)  # on probation
    assert relay.counters.drop_ssrc == 1 and relay.counters.lan_in_packets == 1
    assert not relay.lan_rtp_refused(rtp(1), PHONE, 0.02)  # validates: from_lan_rtp admits
    assert relay.counters.drop_ssrc == 1 and relay.lan_ssrcs.ssrcs == []
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.02) is not None
    assert not relay.lan_rtp_refused(rtp(2), PHONE, 0.04)  # kept
    assert relay.from_lan_rtp(rtp_from(0xB, 1), PHONE, 0.05) is None
    assert relay.from_lan_rtp(rtp_from(0xB, 2), PHONE, 0.06) is not None
    # Both slots kept: whether a new SSRC may take one depends on last-heard times the C
    # lane holds, so from_lan_rtp decides (after the worker took them back).
    assert not relay.lan_rtp_refused(rtp_from(0xC, 1), PHONE, 5.0)
    assert relay.counters.drop_ssrc == 2
