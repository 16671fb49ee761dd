"""DTLS-SRTP without RTCP multiplexing, against a real rtpengine (RFC 5764 §4.1, RFC 5761).

rtpengine offers UDP/TLS/RTP/SAVP without a=rtcp-mux (its default unless told ``rtcp-mux:
offer``; answering the gateway's own offer it also declines a=rtcp-mux unless told
``rtcp-mux: accept``), so RTP and RTCP stay on two ports. RFC 5764 §4.1 would key RTCP with a
second DTLS association on the RTCP port; the gateway does not run one, and fails closed for
RTCP: none crosses the WAN leg either way (the phone's RTCP and anything on the gateway's WAN
RTCP port are dropped and counted ``drop_rtcp_unkeyed``), while RTP is keyed and relayed as
usual. Checked with a capture: tones both ways, DTLS then SRTP on the RTP ports, nothing from
the gateway to rtpengine's RTCP port, no plain RTCP anywhere on the WAN.

Layout, in one network namespace: kamailio (TLS, 127.0.0.1), the gateway (LAN 127.0.67.20,
WAN 127.0.67.21), a plain baresip behind it (2001, 440 Hz), rtpengine on 127.0.67.40 in front
of a plain party (1000 Hz).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import analyse_wav, write_ulaw_tone
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
def test_unmuxed_rtcp_on_a_dtls_leg_never_crosses_the_wan(site: Site) -> None:
    rtpe = site.procs.start(
        Rtpengine(
            site.tmp / "rtpengine",
            interface=RTPENGINE,
            port_range=(36800, 36899),
            netns=site.ns.name,
        )
    )
    cap = site.capture("udp")
    legacy = site.legacy_phone(LEGACY)
    party = PlainParty(site, write_ulaw_tone(site.tmp / "tone1000.ulaw", 1000.0, 8.0))
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
        # Six seconds of tone: long enough for both ends' RTCP intervals (a duration of
        # audio, not a wait for something to happen).
        time.sleep(6.0)
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
    assert any(20 <= p.payload[0] <= 63 for p in ours), "no handshake from the gateway"
    to_rtcp_port = [p for p in ours if p.dst[1] == rtpe_rtp + 1 or p.src[1] == gw_rtp + 1]
    assert not to_rtcp_port, f"{len(to_rtcp_port)} datagrams on the RTCP ports from the gateway"
    assert not [p for p in ours if p.is_rtcp_like() and p.payload[1] in (200, 201)]
    counters = media_counters(site.gw, str(gateway_events(site.gw, "answered")[0]["pair"]))
    assert counters["drop_rtcp_unkeyed"] > 0, counters
    assert counters["dtls_handshakes"] == 1, counters
