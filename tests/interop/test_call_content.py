"""What a call carries besides a G.711 tone, through the real gateway between real phones:
RFC 4733 telephone-events both ways (plain on the LAN, SRTP on the WAN) and a G.722 call.

As in ``test_media.py``: one network namespace per test (only ``lo``) holding kamailio (TLS
registrar/proxy on 127.0.0.1), the gateway (here LAN 127.0.2.20, WAN 127.0.2.21), a plain
baresip behind the gateway (the legacy phone) and an ``srtp-mand`` baresip at kamailio, with
SIP trace on so the test knows the SDES keys and can decrypt what the capture saw on the WAN.
baresip sends DTMF as RFC 4733 events with ctrl_tcp ``sndcode`` and logs every event it
receives (``received event: 'x' (end=1)``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from gateway.lab.audio import analyse_wav, write_tone
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import Baresip, Kamailio, NetNamespace, Packet
from tests.interop.test_media import (
    LEGACY,
    SECURE,
    Decryptor,
    Need,
    Site,
    flows,
    gateway_events,
    is_rtcp,
    recorded,
    stop_phones,
    trace_keys,
)
from tests.pki import TestPki

pytestmark = pytest.mark.interop

LAN_ADDRESS = "127.0.2.20"
WAN_ADDRESS = "127.0.2.21"
#: RFC 4733 §3.2: event codes of the DTMF digits.
EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
#: How baresip 1.0 logs the end of each RFC 4733 event it receives.
RECEIVED = re.compile(r"received event: '(.)' \(end=1\)")
_TELEPHONE_EVENT = re.compile(r"a=rtpmap:(\d+) telephone-event/8000")


@pytest.fixture
def site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
) -> Site:
    need("kamailio", "baresip", "tshark")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
    layout = GatewayLayout(
        lan_address=LAN_ADDRESS, wan_address=WAN_ADDRESS, provider_port=kam.tls_port
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


def use_codec(phone: Baresip, codec: str, module: str) -> None:
    """Before start: load ``module`` and offer only ``codec`` (the helper writes pcmu)."""
    config = phone.workdir / "config"
    config.write_text(config.read_text() + f"module {module}\n")
    accounts = phone.workdir / "accounts"
    accounts.write_text(accounts.read_text().replace("audio_codecs=pcmu", f"audio_codecs={codec}"))


def events(payloads: Iterable[bytes], pt: int) -> list[int]:
    """RFC 4733 event codes, one per event (its packets and retransmitted end packets folded),
    from RTP packets of payload type ``pt``."""
    seen: list[tuple[int, int]] = []  # (timestamp, event)
    for packet in payloads:
        if len(packet) < 16 or packet[1] & 0x7F != pt:
            continue
        timestamp = int.from_bytes(packet[4:8], "big")
        event = packet[12]
        if (timestamp, event) not in seen:
            seen.append((timestamp, event))
    return [event for _, event in seen]


def telephone_event_pt(sdp_text: str) -> int:
    match = _TELEPHONE_EVENT.search(sdp_text)
    assert match, "no telephone-event in the SDP"
    return int(match[1])


def send_digits(site: Site, phone: Baresip, digits: str, receiver: Baresip) -> None:
    """``sndcode`` one digit at a time, each received before the next is sent."""
    for digit in digits:
        reply = phone.command(site.ns, "sndcode", digit)
        assert reply.get("ok") is True, reply
        receiver.wait_log(rf"received event: '{re.escape(digit)}' \(end=1\)", 5)


def plain_rtp(packets: list[Packet], src: str, dst: str) -> list[bytes]:
    return [p.payload for p in flows(packets, src, dst) if p.is_rtp_like()]


@pytest.mark.matrix(peer="baresip-udp", scenario="DTMF (RFC 4733)")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="DTMF (RFC 4733)")
def test_rfc4733_dtmf_crosses_the_gateway_both_ways(site: Site) -> None:
    """The legacy phone calls the SRTP phone; each sends digits with ``sndcode``. Each phone
    logs the other's digits in order; the capture shows them as plain telephone-events on the
    LAN and, on the WAN, only inside SRTP that decrypts under the gateway's key to the same
    events; the payload type is the one both SDPs named."""
    cap = site.capture("udp")
    secure = site.provider_phone()
    legacy = site.legacy_phone()
    legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    legacy.wait_established(10)
    secure.wait_established(10)
    time.sleep(0.5)
    send_digits(site, legacy, "159*", secure)
    send_digits(site, secure, "#07", legacy)
    time.sleep(0.5)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    stop_phones(legacy, secure)
    cap.stop()

    received_by_secure = re.findall(RECEIVED, secure.output())
    received_by_legacy = re.findall(RECEIVED, legacy.output())
    assert received_by_secure == list("159*"), received_by_secure
    assert received_by_legacy == list("#07"), received_by_legacy
    assert "failed to decrypt" not in secure.output()

    pt = telephone_event_pt(secure.stdout())  # the SDP the gateway sent it (SIP trace)
    packets = cap.packets()
    lan, wan = site.layout.lan_address, site.layout.wan_address
    # LAN: plain telephone-events from the phone, and the SRTP phone's relayed to it.
    assert events(plain_rtp(packets, "127.0.0.1", lan), pt) == [EVENT_CODES[d] for d in "159*"]
    assert events(plain_rtp(packets, lan, "127.0.0.1"), pt) == [EVENT_CODES[d] for d in "#07"]
    # WAN: every packet from the gateway is SRTP under its key; decrypted, the same events.
    keys = trace_keys(secure, wan)
    decryptor = Decryptor(keys.gateway)
    out = [p.payload for p in flows(packets, wan, "127.0.0.1") if not is_rtcp(p.payload)]
    clear = [decryptor.unprotect(payload) for payload in out]
    assert all(plain is not None for plain in clear), "WAN packets not under the gateway's key"
    assert events([c for c in clear if c is not None], pt) == [EVENT_CODES[d] for d in "159*"]


@pytest.mark.matrix(peer="baresip-udp", scenario="G.722")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="G.722")
def test_g722_call_through_the_gateway(site: Site) -> None:
    """Both phones offer only G.722 (payload type 9, clock 8000 in SDP, 16 kHz audio): the
    call is set up with it end to end, the tone gets through both ways, the LAN capture
    shows payload type 9 both ways and the WAN only SRTP that decrypts to payload type 9."""
    cap = site.capture("udp")
    # baresip 1.0's aufile source does not resample: G.722 needs 16 kHz files.
    wav_440 = write_tone(site.tmp / "tone440-16k.wav", 440.0, 10.0, rate=16000)
    wav_1000 = write_tone(site.tmp / "tone1000-16k.wav", 1000.0, 10.0, rate=16000)
    secure = Baresip(
        site.tmp / f"provider-{SECURE}",
        user=SECURE,
        audio_file=wav_1000,
        netns=site.ns.name,
        tls=True,
        srtp="srtp-mand",
        pki=site.pki,
        domain=site.provider_domain,
        regint=60,
    )
    secure.argv.append("-s")
    use_codec(secure, "g722/16000/1", "g722.so")
    site.procs.start(secure)
    secure.wait_registered()
    legacy = Baresip(
        site.tmp / f"legacy-{LEGACY}",
        user=LEGACY,
        audio_file=wav_440,
        netns=site.ns.name,
        domain=site.gateway_lan,
        regint=60,
    )
    use_codec(legacy, "g722/16000/1", "g722.so")
    site.procs.start(legacy)
    legacy.wait_registered()

    legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    legacy.wait_established(10)
    secure.wait_established(10)
    time.sleep(3.0)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    (answered,) = gateway_events(site.gw, "answered")
    assert answered["suite"] == "AES_CM_128_HMAC_SHA1_80", answered
    stop_phones(legacy, secure)
    cap.stop()

    assert "a=rtpmap:9 G722/8000" in secure.stdout()
    assert "failed to decrypt" not in secure.output()
    packets = cap.packets()
    lan = site.layout.lan_address
    from_phone = plain_rtp(packets, "127.0.0.1", lan)
    to_phone = plain_rtp(packets, lan, "127.0.0.1")
    assert len(from_phone) > 50 and len(to_phone) > 50
    assert {p[1] & 0x7F for p in from_phone if not is_rtcp(p)} == {9}
    assert {p[1] & 0x7F for p in to_phone if not is_rtcp(p)} == {9}
    # WAN: SRTP under the gateway's key, G.722 inside.
    wan = site.layout.wan_address
    decryptor = Decryptor(trace_keys(secure, wan).gateway)
    out = [p.payload for p in flows(packets, wan, "127.0.0.1") if not is_rtcp(p.payload)]
    clear = [decryptor.unprotect(payload) for payload in out]
    assert len(out) > 50 and all(plain is not None for plain in clear)
    assert {plain[1] & 0x7F for plain in clear if plain is not None} == {9}
    heard_by_secure = analyse_wav(recorded(secure))
    heard_by_legacy = analyse_wav(recorded(legacy))
    assert heard_by_secure.is_tone(440.0), heard_by_secure
    assert heard_by_legacy.is_tone(1000.0), heard_by_legacy
