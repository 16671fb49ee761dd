"""RTCP of a DTLS-keyed WAN side without rtcp-mux fails closed (gateway/media/dtls_streams.py,
RFC 5764 §4.1) while the RTCP port's own association has not keyed it (here: none runs, the
RTP port's keys are in force): neither the phone's RTCP nor anything on the WAN RTCP port
crosses; both are counted ``drop_rtcp_unkeyed``. With rtcp-mux (or without DTLS) the relay's
own handlers decide as before. The RTCP association itself: test_dtls_rtcp_association.py."""

from __future__ import annotations

from typing import Any

from msgspec import structs

from gateway.media.control import DtlsKeying, SrtpKeying, StreamSpec
from gateway.media.dtls_streams import DtlsStreams
from gateway.media.relay import LAN_RTCP, LAN_RTP, WAN_RTCP, WAN_RTP, RelayStream

PHONE = ("127.0.67.10", 4000)
PROVIDER = ("127.0.67.30", 40000)
# A receiver report with one report block (RFC 3550 §6.4.2).
RTCP_RR = bytes.fromhex("81c90007") + bytes(4) + bytes(24)
KEYS = SrtpKeying("AES_CM_128_HMAC_SHA1_80", bytes(range(30)))


class FakeSocket:
    def sendto(self, data: bytes, dest: Any) -> int:
        return len(data)


def stream(mux: bool) -> tuple[DtlsStreams, dict[int, Any], RelayStream, list[str]]:
    warnings: list[str] = []
    streams = DtlsStreams(lambda report: None, warnings.append)
    keying = DtlsKeying("server", (("sha-256", "AB:" * 31 + "AB"),), (KEYS.suite,), 0)
    spec = StreamSpec(
        lan_port=10000,
        wan_port=20000,
        phone_addr=PHONE,
        provider_addr=PROVIDER,
        wan_rtcp_mux=mux,
        wan_dtls=keying,
    )
    relay = RelayStream(spec)
    handlers = streams.open("c/0", "c", 0, relay, FakeSocket(), 0.0)  # type: ignore[arg-type]
    # The handshake's keys, as a worker re-opened after a crash gets them (no handshake).
    keyed = structs.replace(spec, wan_tx=KEYS, wan_rx=KEYS)
    relay.update(streams.update("c/0", keyed, 0.0))
    return streams, handlers, relay, warnings


def test_unmuxed_rtcp_is_dropped_both_ways_and_counted() -> None:
    _, handlers, relay, warnings = stream(mux=False)
    assert set(handlers) == {LAN_RTP, WAN_RTP, LAN_RTCP, WAN_RTCP}
    assert handlers[LAN_RTCP](RTCP_RR, PHONE, 1.0) is None
    assert handlers[LAN_RTP](RTCP_RR, PHONE, 1.0) is None  # a phone muxing RTCP anyway
    provider_rtcp = (PROVIDER[0], PROVIDER[1] + 1)
    assert handlers[WAN_RTCP](b"\x16\xfe\xfd" + bytes(20), provider_rtcp, 1.0) is None  # DTLS
    assert handlers[WAN_RTCP](RTCP_RR + bytes(14), provider_rtcp, 1.0) is None
    c = relay.counters
    assert c.drop_rtcp_unkeyed == 4 and c.wan_out_packets == 0 and c.lan_out_packets == 0
    assert (c.lan_in_packets, c.wan_in_packets) == (2, 2)
    # RTP from the phone still goes through the relay: protected with the handshake's keys.
    rtp = bytes.fromhex("80000001000000a0deadbeef") + bytes(160)
    handlers[LAN_RTP](rtp, PHONE, 2.0)  # a new SSRC's first packet is on probation
    forward = handlers[LAN_RTP](rtp[:3] + b"\x02" + rtp[4:], PHONE, 2.1)
    assert forward is not None and forward[1] == PROVIDER and c.drop_rtcp_unkeyed == 4
    assert len(set(warnings)) == 1 and "rtcp-mux" in warnings[0]


def test_muxed_rtcp_goes_through_the_relay_as_srtcp() -> None:
    _, handlers, relay, warnings = stream(mux=True)
    handlers[LAN_RTCP](RTCP_RR, PHONE, 1.0)  # a new SSRC's first packet is on probation
    forward = handlers[LAN_RTCP](RTCP_RR, PHONE, 2.0)
    assert forward is not None
    out, dest, via = forward
    assert dest == PROVIDER and via == WAN_RTP and out != RTCP_RR  # SRTCP, on the RTP port
    assert relay.counters.drop_rtcp_unkeyed == 0 and not warnings
