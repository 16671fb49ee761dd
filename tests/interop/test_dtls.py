"""DTLS-SRTP toward a real provider media edge: rtpengine offering UDP/TLS/RTP/SAVP (RFC 5763,
RFC 5764) to a trunk keyed ``keying = ["dtls"]``.

Layout, in one network namespace: kamailio (TLS, 127.0.0.1), the gateway (LAN 127.0.66.20,
WAN 127.0.66.21), a plain baresip behind it (2001, 440 Hz) and rtpengine on 127.0.66.40 in
front of a plain party (test_rtpengine_edge's, 1000 Hz). The test is the provider's caller (as in
test_rtpengine_edge.py): rtpengine's DTLS offer goes in an INVITE over TLS through kamailio to
the phone; the gateway answers with its own fingerprint and the role the offer leaves it;
rtpengine and the gateway's media worker handshake on the media ports. Checked: tones both
ways, and on the WAN leg DTLS first and then only SRTP (never a plain RTP payload).
Both roles: rtpengine's own actpass offer (the gateway takes the client role) and the same
offer with a=setup:active (rtpengine is the client).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.lab.audio import analyse_wav, write_ulaw_tone
from gateway.media.dtls import DTLS_PROFILES
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Baresip,
    Kamailio,
    NetNamespace,
    Rtpengine,
    byte_entropy,
    read_sip_message,
    status_code,
)
from tests.interop.test_media import (
    Site,
    gateway_events,
    pcmu_tone,
    recorded,
    rtp_payload,
    stop_phones,
)
from tests.interop.test_rtpengine_edge import PlainParty, TlsCaller, _body
from tests.pki import TestPki

Need = Callable[..., dict[str, str]]

LEGACY = "2001"
LAN_ADDRESS = "127.0.66.20"
WAN_ADDRESS = "127.0.66.21"
RTPENGINE = "127.0.66.40"


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


def _setup(sdp: str) -> str:
    found = re.findall(r"(?m)^a=setup:(\S+)", sdp)
    assert len(found) == 1, sdp
    return found[0]


@pytest.mark.parametrize(
    ("offered_setup", "gateway_setup"),
    [
        pytest.param(
            "actpass",
            "active",
            marks=pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (DTLS, gw client)"),
        ),
        pytest.param(
            "active",
            "passive",
            marks=pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (DTLS, gw server)"),
        ),
    ],
)
def test_rtpengine_dtls_offer_keys_the_call(
    site: Site, offered_setup: str, gateway_setup: str
) -> None:
    """rtpengine offers actpass (its default); the gateway answers active and sends the
    ClientHello. With the offer's role set to active (what a provider whose edge insists on
    the client role sends), the gateway answers passive and rtpengine sends the ClientHello."""
    rtpe = site.procs.start(
        Rtpengine(
            site.tmp / "rtpengine",
            interface=RTPENGINE,
            port_range=(36100, 36199),
            netns=site.ns.name,
        )
    )
    cap = site.capture("udp")
    legacy = site.legacy_phone(LEGACY)
    party = PlainParty(site, write_ulaw_tone(site.tmp / "tone1000.ulaw", 1000.0, 6.0))
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
                "rtcp-mux": ["offer"],
            }
        )
        assert offer.get("result") == "ok", offer
        dtls_offer = str(offer["sdp"])
        assert "a=fingerprint:" in dtls_offer and "a=crypto" not in dtls_offer, dtls_offer
        assert _setup(dtls_offer) == "actpass", dtls_offer
        dtls_offer = dtls_offer.replace("a=setup:actpass", f"a=setup:{offered_setup}")

        final = caller.invite(dtls_offer)
        assert status_code(final) == 200, final
        answer = _body(final)
        assert re.findall(r"(?m)^m=audio \d+ (\S+) ", answer) == ["UDP/TLS/RTP/SAVP"], answer
        assert "a=crypto" not in answer and "a=fingerprint:sha-256 " in answer, answer
        assert _setup(answer) == gateway_setup, answer

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
        time.sleep(3.0)  # three seconds of tone to analyse (a duration of audio, not a wait)
        assert caller.bye() == 200
        legacy.wait_terminated()
    finally:
        party.stop()
        caller.close()
    rtpe.ng({"command": "delete", "call-id": caller.call_id, "from-tag": caller.from_tag})
    legacy.stop()
    cap.stop()

    assert len(party.received) > 50, f"{len(party.received)} packets back from rtpengine"
    heard_by_party = pcmu_tone(rtp_payload(p) for p in party.received)
    assert heard_by_party.is_tone(440.0), heard_by_party
    heard_by_phone = analyse_wav(recorded(legacy))
    assert heard_by_phone.is_tone(1000.0), heard_by_phone

    # The WAN leg: DTLS records first (the handshake), then only SRTP; nothing else.
    packets = cap.packets()
    wan = [p for p in packets if WAN_ADDRESS in (p.src[0], p.dst[0]) and p.payload]
    media = [p for p in wan if RTPENGINE in (p.src[0], p.dst[0])]
    dtls = [i for i, p in enumerate(media) if 20 <= p.payload[0] <= 63]
    rtp = [i for i, p in enumerate(media) if p.is_rtp_like()]
    assert dtls and rtp, f"{len(dtls)} DTLS and {len(rtp)} RTP-like packets on the WAN leg"
    first_to_rtpengine = min(i for i in rtp if media[i].dst[0] == RTPENGINE)
    assert min(dtls) < first_to_rtpengine
    for src, dst in ((WAN_ADDRESS, RTPENGINE), (RTPENGINE, WAN_ADDRESS)):
        leg = [p for p in media if p.is_rtp_like() and (p.src[0], p.dst[0]) == (src, dst)]
        assert len(leg) > 50, f"{len(leg)} RTP-like packets {src} -> {dst}"
        assert byte_entropy(b"".join(p.payload[12:] for p in leg)) > 7.5
        as_pcmu = pcmu_tone(p.payload[12:-10] for p in leg)
        assert not as_pcmu.is_tone(440.0) and not as_pcmu.is_tone(1000.0), as_pcmu
    assert not any(p.is_plain_sip() for p in wan)


@pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (DTLS, wrong fingerprint)")
def test_a_wrong_fingerprint_in_the_offer_ends_the_call(site: Site) -> None:
    """The offer names a certificate rtpengine does not hold (a tampered a=fingerprint): the
    gateway's handshake fails, the call is ended with the reason, and no media goes out."""
    rtpe = site.procs.start(
        Rtpengine(
            site.tmp / "rtpengine",
            interface=RTPENGINE,
            port_range=(36200, 36299),
            netns=site.ns.name,
        )
    )
    cap = site.capture("udp")
    legacy = site.legacy_phone(LEGACY)
    party = PlainParty(site, write_ulaw_tone(site.tmp / "tone1000.ulaw", 1000.0, 6.0))
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
                "rtcp-mux": ["offer"],
            }
        )
        assert offer.get("result") == "ok", offer
        real = re.search(r"(?m)^a=fingerprint:sha-256 (\S+)", str(offer["sdp"]))
        assert real, offer
        forged = ":".join(["5A"] * 32)
        final = caller.invite(str(offer["sdp"]).replace(real.group(1), forged))
        assert status_code(final) == 200, final
        answer = _body(final)
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
        party.start((RTPENGINE, plain_port))
        # The gateway hung up on the phone (baresip logs a BYE it receives this way).
        legacy.wait_log(r"session closed", 15)
        bye = read_sip_message(caller.tls, 15)
        assert bye.startswith("BYE "), bye  # and on the provider
    finally:
        party.stop()
        caller.close()
    rtpe.ng({"command": "delete", "call-id": caller.call_id, "from-tag": caller.from_tag})
    legacy.stop()
    cap.stop()

    (ended,) = gateway_events(site.gw, "media-ended")
    assert "DTLS-SRTP" in ended["reason"] and "fingerprint" in ended["reason"], ended
    packets = cap.packets()
    out = [p for p in packets if (p.src[0], p.dst[0]) == (WAN_ADDRESS, RTPENGINE) and p.payload]
    assert out, "the gateway never tried the handshake"
    assert all(20 <= p.payload[0] <= 63 for p in out), "only DTLS left toward rtpengine"


SECURE = "3001"


def dtls_phone(site: Site) -> Baresip:
    """A TLS baresip at kamailio, 1000 Hz, keying its media with DTLS-SRTP only."""
    phone = Baresip(
        site.tmp / f"provider-{SECURE}",
        user=SECURE,
        audio_file=site.tones.wav_1000,
        netns=site.ns.name,
        tls=True,
        srtp="dtls_srtp",
        pki=site.pki,
        domain=site.provider_domain,
        regint=60,
        extra_config=["module dtls_srtp.so"],
    )
    site.procs.start(phone)
    phone.wait_registered()
    return phone


@pytest.mark.parametrize(
    "direction",
    [
        pytest.param("out", marks=pytest.mark.matrix(peer="baresip", scenario="call out (DTLS)")),
        # baresip 1.0's dtls_srtp offers UDP/TLS/RTP/SAVPF: the legacy phone is offered
        # RTP/AVP, baresip gets its own profile back.
        pytest.param("in", marks=pytest.mark.matrix(peer="baresip", scenario="call in (DTLS)")),
    ],
)
def test_baresip_dtls_srtp_through_kamailio(site: Site, direction: str) -> None:
    """baresip with mediaenc=dtls_srtp at the provider: tones both ways through the gateway,
    DTLS and then only SRTP on the WAN leg."""
    cap = site.capture("udp")
    secure = dtls_phone(site)
    legacy = site.legacy_phone(LEGACY)
    if direction == "out":
        legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    else:
        secure.dial(site.ns, f"sip:{LEGACY}@{site.provider_domain}")
    legacy.wait_established(10)
    secure.wait_established(10)
    time.sleep(3.0)  # three seconds of tone to analyse (a duration of audio, not a wait)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    stop_phones(legacy, secure)
    cap.stop()

    assert analyse_wav(recorded(secure)).is_tone(440.0)
    assert analyse_wav(recorded(legacy)).is_tone(1000.0)
    packets = cap.packets()
    wan = [p for p in packets if WAN_ADDRESS in (p.src[0], p.dst[0]) and p.payload]
    dtls = [p for p in wan if 20 <= p.payload[0] <= 63]
    leg = [p for p in wan if p.is_rtp_like() and p.src[0] == WAN_ADDRESS]
    assert dtls and len(leg) > 50, f"{len(dtls)} DTLS, {len(leg)} RTP-like from the gateway"
    assert wan.index(dtls[0]) < wan.index(leg[0])
    assert byte_entropy(b"".join(p.payload[12:] for p in leg)) > 7.5
    assert not pcmu_tone(p.payload[12:-10] for p in leg).is_tone(440.0)
    assert not any(p.is_plain_sip() for p in wan)
    # The call's record names the suite the handshake agreed, keyed "dtls".
    (answered,) = gateway_events(site.gw, "answered")
    assert answered["keying"] == "dtls", answered
    keyed = gateway_events(site.gw, "keyed")
    assert keyed and keyed[-1]["suite"] in DTLS_PROFILES, keyed
    record = call_record(site.gw, str(answered["pair"]))
    assert (record["suite"], record["keying"]) == (keyed[-1]["suite"], "dtls"), record


def call_record(gw: GatewayProcess, pair: str, timeout: float = 10.0) -> dict[str, Any]:
    """The call detail record of ``pair`` (written once the worker's last counters came)."""
    path = gw.config_path.parent / "state" / "cdr" / "calls.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("pair") == pair:
                    return dict(record)
        if time.monotonic() > deadline:
            raise gw.fail(f"no call record for {pair} in {path}")
        time.sleep(0.1)
