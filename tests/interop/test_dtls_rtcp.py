"""DTLS-SRTP without RTCP multiplexing, against a real rtpengine (RFC 5764 §4.1, RFC 5761).

rtpengine offers UDP/TLS/RTP/SAVP without a=rtcp-mux (its default unless told ``rtcp-mux:
offer``; answering the gateway's own offer it also declines a=rtcp-mux unless told
``rtcp-mux: accept``), so RTP and RTCP stay on two ports. RFC 5764 §4.1 keys RTCP with a
second DTLS association on the RTCP port, which the gateway runs beside the RTP port's (same
role, same certificate, same fingerprint check): SRTP keeps the RTP port's keys, SRTCP both ways
takes the RTCP port's. Checked with a capture: tones both ways, two DTLS handshakes (one per
port pair), then SRTP on the RTP ports and SRTCP on the RTCP ports both ways, never plain RTCP
on the WAN, and the provider's RTCP reaching the phone as plain RTCP on the LAN.

Layout, in one network namespace: kamailio (TLS, 127.0.0.1), the gateway (LAN 127.0.67.20,
WAN 127.0.67.21), a plain baresip behind it (2001, 440 Hz), rtpengine on 127.0.67.40 in front
of a plain party (1000 Hz).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import analyse_wav, write_tone, write_ulaw_tone
from gateway.media.relay import is_plain_rtcp
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import Kamailio, NetNamespace, Rtpengine, status_code
from tests.interop.test_media import (
    Site,
    gateway_events,
    media_counters,
    pcmu_tone,
    recorded,
    rtp_payload,
)
from tests.interop.test_rtpengine_edge import PlainParty, TlsCaller, _body
from tests.pki import TestPki

Need = Callable[..., dict[str, str]]

LEGACY = "2001"
LAN_ADDRESS = "127.0.67.20"
WAN_ADDRESS = "127.0.67.21"
RTPENGINE = "127.0.67.40"


@pytest.fixture
def site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
) -> Site:
    need("kamailio", "baresip", "rtpengine", "tshark")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
    layout = GatewayLayout(
        provider_port=kam.tls_port,
        lan_address=LAN_ADDRESS,
        wan_address=WAN_ADDRESS,
        config={"wan": {"keying": ["dtls"]}},
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


@pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (DTLS, RTCP not muxed)")
def test_unmuxed_rtcp_on_a_dtls_leg_is_keyed_by_its_own_association(site: Site) -> None:
    rtpe = site.procs.start(
        Rtpengine(
            site.tmp / "rtpengine",
            interface=RTPENGINE,
            port_range=(36800, 36899),
            netns=site.ns.name,
        )
    )
    cap = site.capture("udp")
    # The phone's tone outlasts the call (baresip hangs up when its file ends).
    long_440 = write_tone(site.tmp / "tone440-long.wav", 440.0, 16.0)
    site.tones = dataclasses.replace(site.tones, wav_440=long_440)
    legacy = site.legacy_phone(LEGACY)
    party = PlainParty(site, write_ulaw_tone(site.tmp / "tone1000.ulaw", 1000.0, 14.0))
    caller = TlsCaller(site)
    try:
        offer = rtpe.ng(
            {
                "command": "offer",
                "call-id": caller.call_id,
                "from-tag": caller.from_tag,
                "sdp": party.sdp(),
                "transport-protocol": "UDP/TLS/RTP/SAVP",
                "ICE": "remove",
                "SDES": ["off"],
                "flags": ["generate RTCP"],
            }
        )
        assert offer.get("result") == "ok", offer
        dtls_offer = str(offer["sdp"])
        assert "a=rtcp-mux" not in dtls_offer, dtls_offer
        rtpe_rtp = int(re.findall(r"(?m)^m=audio (\d+) ", dtls_offer)[0])

        final = caller.invite(dtls_offer)
        assert status_code(final) == 200, final
        answer = _body(final)
        assert "a=rtcp-mux" not in answer, answer
        gw_rtp = int(re.findall(r"(?m)^m=audio (\d+) ", answer)[0])
        to_tag = re.search(r";tag=([^;>\s]+)", caller.to)
        assert to_tag, caller.to
        reply = rtpe.ng(
            {
                "command": "answer",
                "call-id": caller.call_id,
                "from-tag": caller.from_tag,
                "to-tag": to_tag.group(1),
                "sdp": answer,
            }
        )
        assert reply.get("result") == "ok", reply
        plain_port = int(re.findall(r"(?m)^m=audio (\d+) RTP/AVP ", str(reply["sdp"]))[0])
        caller.ack_and_route(final)
        legacy.wait_established(10)
        party.start((RTPENGINE, plain_port))
        # Twelve seconds of tone: two of both ends' RTCP intervals (5 s) after the RTCP
        # port's handshake (a duration of audio, not a wait for something to happen).
        time.sleep(12.0)
        assert caller.bye() == 200
        legacy.wait_terminated()
    finally:
        party.stop()
        caller.close()
    rtpe.ng({"command": "delete", "call-id": caller.call_id, "from-tag": caller.from_tag})
    legacy.stop()
    cap.stop()

    heard_by_party = pcmu_tone(rtp_payload(p) for p in party.received)
    assert heard_by_party.is_tone(440.0), heard_by_party
    assert analyse_wav(recorded(legacy)).is_tone(1000.0)

    wan = [p for p in cap.packets() if WAN_ADDRESS in (p.src[0], p.dst[0]) and p.payload]
    media = [p for p in wan if RTPENGINE in (p.src[0], p.dst[0])]
    summary = {
        (
            p.src[1],
            p.dst[1],
            "dtls"
            if 20 <= p.payload[0] <= 63
            else "rtcp"
            if p.is_rtcp_like()
            else "rtp"
            if p.is_rtp_like()
            else "other",
        )
        for p in media
    }
    print("WAN flows (src port, dst port, kind):", sorted(summary))
    ours = [p for p in media if p.src[0] == WAN_ADDRESS]
    theirs = [p for p in media if p.dst[0] == WAN_ADDRESS]
    pairs = ((gw_rtp, rtpe_rtp, "rtp"), (gw_rtp + 1, rtpe_rtp + 1, "rtcp"))
    for gw_port, rtpe_port, kind in pairs:
        pair = [p for p in media if {p.src[1], p.dst[1]} == {gw_port, rtpe_port}]
        sent = [p for p in pair if p in ours]
        received = [p for p in pair if p in theirs]
        # A handshake on this port pair, both ways, before the gateway sends anything else.
        assert sent and 20 <= sent[0].payload[0] <= 63, f"no handshake first on the {kind} ports"
        assert any(20 <= p.payload[0] <= 63 for p in received), kind
        # Then only SRTP (RTP ports) or SRTCP (RTCP ports), both ways; never plain RTCP.
        secured = [p for p in pair if not 20 <= p.payload[0] <= 63]
        assert [p for p in secured if p in ours], f"nothing keyed from the gateway ({kind})"
        assert [p for p in secured if p in theirs], f"nothing keyed from rtpengine ({kind})"
        for p in secured:
            like = p.is_rtcp_like() if kind == "rtcp" else p.is_rtp_like() or p.is_rtcp_like()
            assert like, (kind, p.payload[:4].hex())
            assert not is_plain_rtcp(p.payload), f"plain RTCP on the WAN {kind} ports"
    # Nothing on the WAN outside the two port pairs.
    stray = [p for p in ours if p.src[1] not in (gw_rtp, gw_rtp + 1)]
    assert not stray, stray[:3]
    # The provider's RTCP reached the phone, decrypted, from the gateway's LAN RTCP port.
    lan_rtcp = [
        p
        for p in cap.packets()
        if p.src[0] == LAN_ADDRESS and p.payload and p.is_rtcp_like() and is_plain_rtcp(p.payload)
    ]
    assert lan_rtcp, "no RTCP reached the phone"
    counters = media_counters(site.gw, str(gateway_events(site.gw, "answered")[0]["pair"]))
    assert counters["dtls_handshakes"] == 2, counters
    assert counters["drop_auth"] == 0 and counters["dtls_wrong_source"] == 0, counters
