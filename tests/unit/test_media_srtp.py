"""SRTP contexts: round trips per suite, error mapping, ROC kept across an update (RFC 3711
§3.3.1) and a new context on a new key generation (RFC 4568 §7.1.4)."""

from __future__ import annotations

import os
import struct

import msgspec
import pylibsrtp
import pytest

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.relay import RelayStream
from gateway.media.srtp import (
    SrtpAuthError,
    SrtpBindingError,
    SrtpProtector,
    SrtpReplayError,
    SrtpUnprotector,
    same_keying,
)
from gateway.media.suites import SrtpSuite

PHONE = ("127.0.0.10", 4000)
PROVIDER = ("127.0.0.30", 6000)


def keying(suite: SrtpSuite, generation: int = 0) -> SrtpKeying:
    return SrtpKeying(
        suite=suite.value, master=os.urandom(suite.master_length), generation=generation
    )


def rtp(seq: int, ssrc: int = 0x1234ABCD, payload: bytes = b"\xd5" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + payload


def peer(k: SrtpKeying, inbound: bool) -> pylibsrtp.Session:
    suite = SrtpSuite.from_name(k.suite)
    ssrc_type = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=suite.libsrtp_profile)
    )


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_round_trip_each_suite(suite: SrtpSuite) -> None:
    k = keying(suite)
    tx = SrtpProtector(k)
    rx = SrtpUnprotector(k)
    packet = rtp(1)
    protected = tx.protect(packet)
    assert protected != packet
    assert len(protected) > len(packet)
    assert rx.unprotect(protected) == packet
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234ABCD)
    assert rx.unprotect_rtcp(tx.protect_rtcp(rr)) == rr


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_tampered_packet_is_auth_error(suite: SrtpSuite) -> None:
    k = keying(suite)
    protected = bytearray(SrtpProtector(k).protect(rtp(7)))
    protected[20] ^= 0x01
    with pytest.raises(SrtpAuthError):
        SrtpUnprotector(k).unprotect(bytes(protected))


def test_wrong_key_is_auth_error() -> None:
    protected = SrtpProtector(keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)).protect(rtp(1))
    with pytest.raises(SrtpAuthError):
        SrtpUnprotector(keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)).unprotect(protected)


def test_replayed_packet_is_replay_error() -> None:
    k = keying(SrtpSuite.AEAD_AES_128_GCM)
    tx = SrtpProtector(k)
    rx = SrtpUnprotector(k)
    first = tx.protect(rtp(100))
    rx.unprotect(first)
    with pytest.raises(SrtpReplayError):
        rx.unprotect(first)


def test_repeated_outbound_sequence_is_refused() -> None:
    # Two different payloads under one index would reuse keystream (RFC 3711 §9.1).
    tx = SrtpProtector(keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    tx.protect(rtp(5))
    with pytest.raises(SrtpReplayError):
        tx.protect(rtp(5, payload=b"\x00" * 160))


def test_bad_keys_rejected() -> None:
    with pytest.raises(ValueError, match="30 bytes"):
        SrtpProtector(SrtpKeying(suite="AES_CM_128_HMAC_SHA1_80", master=b"x" * 29))
    with pytest.raises(ValueError, match="unknown SRTP suite"):
        SrtpUnprotector(SrtpKeying(suite="NULL_HMAC_SHA1_80", master=b"x" * 30))


def test_same_keying() -> None:
    k = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_32)
    assert same_keying(k, SrtpKeying(suite=k.suite, master=k.master))
    assert not same_keying(k, SrtpKeying(suite=k.suite, master=k.master, generation=1))
    assert not same_keying(k, None)
    assert same_keying(None, None)


def test_keys_never_in_repr() -> None:
    k = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    assert k.master.hex() not in repr(k)
    assert repr(k.master) not in repr(StreamSpec(lan_port=1, wan_port=2, wan_tx=k))


def test_roc_survives_update_with_same_keying_across_wrap() -> None:
    """70,000 packets each way from seq 60,000 (one wrap), with a same-keying update halfway."""
    tx_key = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    rx_key = keying(SrtpSuite.AEAD_AES_256_GCM)
    spec = StreamSpec(
        lan_port=10000,
        wan_port=20000,
        phone_addr=PHONE,
        provider_addr=PROVIDER,
        wan_tx=tx_key,
        wan_rx=rx_key,
    )
    relay = RelayStream(spec)
    provider_rx = peer(tx_key, inbound=True)
    provider_tx = peer(rx_key, inbound=False)
    start = 60_000
    # The phone's first packet is on probation (RFC 3550 A.1: relay.SsrcGate).
    assert relay.from_lan_rtp(rtp(start - 1), PHONE, -1.0) is None
    for i in range(70_000):
        seq = start + i
        if i == 35_000:  # after the wrap: a re-INVITE repeating the same a=crypto
            relay.update(
                StreamSpec(
                    lan_port=10000,
                    wan_port=20000,
                    phone_addr=PHONE,
                    provider_addr=PROVIDER,
                    wan_tx=SrtpKeying(suite=tx_key.suite, master=tx_key.master),
                    wan_rx=SrtpKeying(suite=rx_key.suite, master=rx_key.master),
                    direction="sendonly",
                )
            )
        packet = rtp(seq)
        out = relay.from_lan_rtp(packet, PHONE, float(i))
        assert out is not None
        assert provider_rx.unprotect(out[0]) == packet
        back = relay.from_wan_rtp(provider_tx.protect(packet), PROVIDER, float(i))
        assert back is not None and back[0] == packet
    c = relay.counters
    assert c.wan_out_packets == c.lan_out_packets == 70_000
    assert c.drop_auth == c.drop_replay == 0


def test_new_generation_builds_new_context() -> None:
    """A new key generation restarts the context: the old receiver (ROC 1) no longer verifies
    what the new context sends, while a receiver built on the new keying does."""
    k = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    base = StreamSpec(lan_port=1, wan_port=3, phone_addr=PHONE, provider_addr=PROVIDER)
    relay = RelayStream(msgspec.structs.replace(base, wan_tx=k))
    old_rx = peer(k, inbound=True)
    assert relay.from_lan_rtp(rtp(65_529), PHONE, 0.0) is None  # on probation (RFC 3550 A.1)
    for seq in range(65_530, 65_546):  # crosses the wrap: ROC becomes 1
        out = relay.from_lan_rtp(rtp(seq), PHONE, 0.0)
        assert out is not None
        old_rx.unprotect(out[0])
    rekeyed = SrtpKeying(suite=k.suite, master=os.urandom(30), generation=1)
    relay.update(msgspec.structs.replace(base, wan_tx=rekeyed))
    assert relay.from_lan_rtp(rtp(9), PHONE, 0.0) is None  # new keys: probation again
    out = relay.from_lan_rtp(rtp(10), PHONE, 0.0)
    assert out is not None
    with pytest.raises(pylibsrtp.Error):
        old_rx.unprotect(out[0])
    assert peer(rekeyed, inbound=True).unprotect(out[0]) == rtp(10)


def test_forget_frees_the_stream_of_one_ssrc() -> None:
    """``forget`` removes libsrtp's stream for an SSRC (RelayStream retires SSRCs with it): a
    later packet of that SSRC starts from a fresh stream, which is why the relay never takes a
    retired SSRC back under the same keys."""
    k = keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    tx = SrtpProtector(k)
    tx.protect(rtp(5, ssrc=1))
    tx.protect(rtp(5, ssrc=2))
    tx.forget(1)
    tx.forget(1)  # nothing left to free: no error
    tx.forget(3)  # never seen
    with pytest.raises(SrtpReplayError):
        tx.protect(rtp(5, ssrc=2))  # kept: its sequence state refuses the repeat
    assert tx.protect(rtp(5, ssrc=1))  # forgotten: a fresh stream takes the index again
    rx = SrtpUnprotector(k)
    first = SrtpProtector(k).protect(rtp(9, ssrc=7))
    rx.unprotect(first)
    rx.forget(7)
    assert rx.unprotect(first) == rtp(9, ssrc=7)  # a fresh replay window


def test_type_error_from_the_binding_is_an_srtp_error() -> None:
    """pylibsrtp's public API raising TypeError (another libsrtp's arguments) is mapped too."""
    tx = SrtpProtector(keying(SrtpSuite.AES_CM_128_HMAC_SHA1_80))

    def refused(packet: bytes) -> bytes:
        raise TypeError("initializer for ctype 'srtp_t' must be a pointer")

    tx._direct = None
    tx._protect = tx._protect_rtcp = refused
    for call in (tx.protect, tx.protect_rtcp):
        with pytest.raises(SrtpBindingError, match="binding refused"):
            call(rtp(1))
