"""RelayStream, the sans-IO packet path: a fake phone and a fake provider (pylibsrtp directly)
exchange packets with it and every drop is checked against its counter (docs/design.md
§3.1–3.3, RFC 3711, RFC 5761 §4)."""

from __future__ import annotations

import os
import struct

import msgspec
import pylibsrtp
import pytest

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.relay import (
    LAN_RTCP,
    LAN_RTP,
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
        2,
        2,
        2,
        2,
    )
    assert (c.last_lan_packet, c.last_wan_packet) == (3.0, 4.0)
    assert c.lan_in_bytes == len(packet) + len(rtcp_rr())


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
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_wan_rtp(rtp(1), PROVIDER, 0.0) is None
    assert relay.counters.drop_no_peer == 2


def test_operator_downgrade_passes_plain() -> None:
    relay, _ = make(wan_tx=None, wan_rx=None, wan_plaintext=True)
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) == (rtp(1), PROVIDER, WAN_RTP)
    assert relay.from_wan_rtp(rtp(2), PROVIDER, 0.0) == (rtp(2), PHONE, LAN_RTP)


def test_keys_win_over_downgrade_flag() -> None:
    relay, provider = make(wan_plaintext=True)
    out = relay.from_lan_rtp(rtp(1), PHONE, 0.0)
    assert out is not None and out[0] != rtp(1)
    assert provider.rx.unprotect(out[0]) == rtp(1)


def test_rtcp_mux_demux() -> None:
    relay, provider = make(wan_rtcp_mux=True, provider_rtcp_addr=None)
    # RTCP from the phone goes to the provider's RTP port, from the WAN RTP socket.
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
    out = relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0)
    assert out is not None
    back = relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0)
    assert back is not None and back[1] == PHONE_OTHER_PORT
    # Only the first packet latches.
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
    assert relay.from_lan_rtp(rtp(1, payload=b"\x00" * 1480), PHONE, 0.0) is None
    assert relay.from_wan_rtp(rtp(1, payload=b"\x00" * 1600), PROVIDER, 0.0) is None
    assert relay.counters.drop_malformed == 2


def test_update_keeps_context_and_latch_when_unchanged() -> None:
    relay, provider = make()
    assert relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0) is not None
    relay.update(relay.spec)  # e.g. a re-INVITE for hold with the same a=crypto
    back = relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0)
    assert back is not None and back[1] == PHONE_OTHER_PORT
    out = relay.from_lan_rtp(rtp(2), PHONE_OTHER_PORT, 0.0)
    assert out is not None and provider.rx.unprotect(out[0]) == rtp(2)


def test_update_with_new_phone_address_resets_latch() -> None:
    relay, _ = make(wan_plaintext=True, wan_tx=None, wan_rx=None)
    relay.from_lan_rtp(rtp(1), PHONE_OTHER_PORT, 0.0)
    new_phone = ("127.0.0.11", 4100)
    relay.update(msgspec.structs.replace(relay.spec, phone_addr=new_phone))
    assert relay.from_lan_rtp(rtp(2), PHONE, 0.0) is None
    assert relay.counters.drop_wrong_source == 1
    assert relay.from_wan_rtp(rtp(3), PROVIDER, 0.0) == (rtp(3), new_phone, LAN_RTP)


def test_bad_update_keeps_stream() -> None:
    relay, provider = make()
    bad = SrtpKeying(suite="NULL_HMAC_SHA1_80", master=b"\x00" * 30)
    with pytest.raises(ValueError):
        relay.update(msgspec.structs.replace(relay.spec, wan_tx=bad))
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


# -- SSRCs: a bounded set per direction (RFC 3711 §3.2.3, §9.1) -----------------------------


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
    """20,000 SSRCs from the phone's own address: the call's packets still go through, the
    flood is dropped (one SSRC takes the free second slot) and no libsrtp stream is made for
    it; before, libsrtp grew a stream per SSRC and every packet of the worker got slower."""
    relay, provider = make()
    tick = 2.0**-14  # about 16,000 packets a second, one in 20 the call's (exact in binary)
    for seq in range(1, 20001):
        now = seq * tick
        if seq % 20 == 1:
            out = relay.from_lan_rtp(rtp(seq), PHONE, now)
            assert out is not None and provider.rx.unprotect(out[0]) == rtp(seq)
        else:
            relay.from_lan_rtp(rtp_from(0x10000000 + seq, seq), PHONE, now)
    # Packet 2 took the free slot; once it had been silent for a second (packet 2 + 2**14),
    # the flood's packet then took its place: one more SSRC a second, no more.
    c = relay.counters
    assert c.drop_ssrc == 19000 - 2
    assert c.wan_out_packets == 1000 + 2
    assert relay.lan_ssrcs.ssrcs == [SSRC, 0x10000000 + 16386]
    tx = relay._tx
    assert tx is not None
    assert has_stream(tx._session, 0x10000000 + 16386)
    assert not has_stream(tx._session, 0x10000000 + 2)  # retired: freed
    assert not has_stream(tx._session, 0x10000000 + 3)  # refused: never made


def test_new_ssrc_takes_the_slot_of_one_silent_for_a_second_and_never_comes_back() -> None:
    relay, provider = make()
    a, b, c_, d = 0xA, 0xB, 0xC, 0xD
    assert relay.from_lan_rtp(rtp_from(a, 1), PHONE, 10.0) is not None
    assert relay.from_lan_rtp(rtp_from(b, 1), PHONE, 10.02) is not None  # the free slot
    assert relay.from_lan_rtp(rtp_from(a, 2), PHONE, 10.5) is not None  # both kept
    # Both kept SSRCs were heard less than SSRC_IDLE_S ago: a third one is refused.
    assert relay.from_lan_rtp(rtp_from(c_, 1), PHONE, 11.0) is None
    assert relay.counters.drop_ssrc == 1
    # b has been silent for a second: c takes its slot, b is retired and its stream freed.
    out = relay.from_lan_rtp(rtp_from(c_, 2), PHONE, 11.02)
    assert out is not None and provider.rx.unprotect(out[0]) == rtp_from(c_, 2)
    assert relay.lan_ssrcs.ssrcs == [a, c_]
    tx = relay._tx
    assert tx is not None and not has_stream(tx._session, b)
    # A retired SSRC is never accepted again under these keys (its ROC went with its stream:
    # a new one would reuse indices), however long the others are silent.
    assert relay.from_lan_rtp(rtp_from(b, 2), PHONE, 50.0) is None
    assert relay.counters.drop_ssrc == 2
    assert relay.from_lan_rtp(rtp_from(d, 1), PHONE, 50.0) is not None
    assert relay.lan_ssrcs.ssrcs == [c_, d]
    # New keys (a re-key): a clean slate.
    relay.update(msgspec.structs.replace(relay.spec, wan_tx=keying()))
    assert relay.from_lan_rtp(rtp_from(b, 3), PHONE, 50.1) is not None
    assert relay.lan_ssrcs.ssrcs == [b]


def test_retired_ssrcs_are_bounded_then_slots_stay() -> None:
    relay, _ = make()
    now = 0.0
    for ssrc in range(1, SSRC_RETIRED_MAX + 3):
        now += 2 * SSRC_IDLE_S
        relay.from_lan_rtp(rtp_from(ssrc, 1), PHONE, now)
    gate = relay.lan_ssrcs
    assert not gate.can_retire
    kept = list(gate.ssrcs)
    assert relay.from_lan_rtp(rtp_from(0xFFFF, 1), PHONE, now + 100) is None
    assert gate.ssrcs == kept
    assert relay.from_lan_rtp(rtp_from(kept[0], 2), PHONE, now + 100) is not None


def test_new_provider_ssrc_takes_a_slot_only_once_it_authenticates() -> None:
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


def test_rtcp_muxed_by_the_phone_is_relayed_as_rtcp_not_counted_as_rtp() -> None:
    """RFC 5761 §4: second byte 200-204 on the LAN RTP port is RTCP. It used to go through
    the RTP reception statistics (a sequence restart each time) and into libsrtp as RTP, where
    its bytes 8-11 made a new SSRC (stream) per report."""
    relay, provider = make()
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
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is not None
    for i in range(1000):
        report = struct.pack("!BBHI", 0x80, 201, 1, 0x30000000 + i)
        relay.from_lan_rtcp(report, PHONE_RTCP, 0.001 * i)
    assert relay.counters.drop_ssrc == 999
    assert relay.lan_ssrcs.ssrcs == [SSRC, 0x30000000]
    out = relay.from_lan_rtcp(rtcp_rr(), PHONE_RTCP, 1.0)
    assert out is not None and provider.rx.unprotect_rtcp(out[0]) == rtcp_rr()
    tx = relay._tx
    assert tx is not None and not has_stream(tx._session, 0x30000001)


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
    assert relay.from_lan_rtp(rtp(1), PHONE, 0.0) is None
    assert relay.from_wan_rtp(provider.tx.protect(rtp(1)), PROVIDER, 0.0) is None
    assert relay.counters.drop_malformed == 2
