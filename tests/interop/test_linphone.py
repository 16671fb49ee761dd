"""Linphone (linphone-cli 5.1, ``linphonec``) through the real gateway: a second, independent
SIP and media stack (belle-sip, mediastreamer2, oRTP, libsrtp via bzrtp's build) next to
baresip.

Each test runs in its own network namespace (only ``lo``): kamailio (TLS registrar/proxy on
127.0.0.1), the gateway (LAN 127.0.3.20, WAN 127.0.3.21), the phones and tshark.

- As the legacy phone: linphonec registers over plain UDP through the gateway's LAN side and
  calls (and is called by) a ``mediaenc=srtp-mand`` baresip registered at kamailio over TLS.
- As the far phone: linphonec registers at kamailio over TLS (verifying the test CA) with
  ``media_encryption=srtp`` mandatory, and a plain baresip behind the gateway calls it (and is
  called by it).

linphonec plays a WAV instead of a microphone and records what it hears (``soundcard use
files``), so every call checks tones both ways: 440 Hz from the legacy phone, 1000 Hz from the
far phone. The capture proves that only SRTP and TLS leave the gateway's WAN address: packets
are decrypted with the SDES keys the gateway handed out (read from the far phone's SIP trace or
liblinphone's debug log), and read as PCMU they carry no tone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import ToneAnalysis, analyse_wav
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import Kamailio, Linphone, NetNamespace, Packet
from tests.interop.test_media import (
    CM80,
    Site,
    TraceKeys,
    assert_wan_side_is_srtp_and_tls,
    gateway_events,
    lan_rtp,
    media_counters,
    pcmu_tone,
    recorded,
    rtp_payload,
    trace_keys,
)
from tests.pki import TestPki

Need = Callable[..., dict[str, str]]

LEGACY = "2001"  # the phone behind the gateway (LAN)
FAR = "3001"  # the SRTP phone at the provider (WAN)
LAN_ADDRESS = "127.0.3.20"
WAN_ADDRESS = "127.0.3.21"

#: SDES inline keys in liblinphone's debug log (it logs every SIP message it sends and gets).
_CRYPTO = re.compile(r"a=crypto:\d+ (\S+) inline:([A-Za-z0-9+/]+={0,2})")


@pytest.fixture
def site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
) -> Site:
    """kamailio and the gateway (127.0.3.20/.21) in one namespace, as tests/interop/
    test_media.py lays them out."""
    need("kamailio", "baresip", "linphonec", "tshark")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
    layout = GatewayLayout(
        provider_port=kam.tls_port, lan_address=LAN_ADDRESS, wan_address=WAN_ADDRESS
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


def legacy_linphone(site: Site) -> Linphone:
    """linphonec as the plain phone: UDP to the gateway's LAN side, RTP/AVP, 440 Hz."""
    phone = site.procs.start(
        Linphone(
            site.tmp / "linphone-legacy",
            user=LEGACY,
            audio_file=site.tones.wav_440,
            proxy=(site.layout.lan_address, site.layout.lan_port),
            netns=site.ns.name,
        )
    )
    phone.wait_registered()
    return phone


def far_linphone(site: Site) -> Linphone:
    """linphonec as the provider-side phone: TLS to kamailio, mandatory SRTP, 1000 Hz."""
    phone = site.procs.start(
        Linphone(
            site.tmp / "linphone-far",
            user=FAR,
            audio_file=site.tones.wav_1000,
            # belle-sip (mbedTLS) matches only DNS names, never an IP-address SAN: by
            # address the test certificate fails with "CN-mismatch"; by name it verifies.
            proxy=("localhost", site.kam.tls_port),
            domain=site.provider_domain,
            netns=site.ns.name,
            tls=True,
            srtp=True,
            pki=site.pki,
        )
    )
    phone.wait_registered()
    return phone


def linphone_keys(phone: Linphone, wan_address: str) -> TraceKeys:
    """SDES keys in the SDPs liblinphone logged: the gateway's (``c=IN IP4`` its WAN address)
    and the phone's own."""
    gateway: list[str] = []
    peer: list[str] = []
    for section in re.split(r"\n(?=v=0\r?$)", phone.debug_log(), flags=re.M):
        keys = [k for suite, k in _CRYPTO.findall(section) if suite == CM80]
        if not keys:
            continue
        target = gateway if f"c=IN IP4 {wan_address}" in section.split("\nm=", 1)[0] else peer
        target.extend(k for k in keys if k not in target)
    return TraceKeys(tuple(gateway), tuple(peer))


def tone_gaps(phone: Linphone, hz: float) -> list[ToneAnalysis]:
    """Half-second windows of linphonec's recording without the ``hz`` tone, if too many.

    linphonec's adaptive jitter buffer stretches or conceals now and then on a loaded machine
    (a phase jump of a few ms); one such jump spoils a one-second window, so the recording is
    judged in half seconds: at least two thirds must be the tone, and there must be two
    seconds of it.
    """
    windows = []
    start = 0.5
    while True:
        window = analyse_wav(phone.record_path, skip_seconds=start, window_seconds=0.5)
        if start + 0.5 > window.seconds:
            break
        windows.append(window)
        start += 0.5
    bad = [w for w in windows if not w.is_tone(hz)]
    assert len(windows) >= 4, f"{phone.name}: only {windows[0].seconds if windows else 0} s"
    return bad if 3 * len(bad) > len(windows) else []


def answered(site: Site) -> dict[str, object]:
    """The gateway's one ``answered`` event: an SDES suite, never NULL, no downgrade."""
    (event,) = gateway_events(site.gw, "answered")
    assert event["plaintext_downgrade"] is False, event
    assert "NULL" not in str(event["suite"]), event
    return event


def assert_lan_tones(
    site: Site, packets: list[Packet], from_phone_hz: float, to_phone_hz: float
) -> None:
    """The LAN leg is plain PCMU: the legacy phone's tone in, the far phone's tone out."""
    lan = site.layout.lan_address
    from_phone = lan_rtp(site, packets, "127.0.0.1", lan)
    to_phone = lan_rtp(site, packets, lan, "127.0.0.1")
    assert pcmu_tone(rtp_payload(p.payload) for p in from_phone).is_tone(from_phone_hz)
    assert pcmu_tone(rtp_payload(p.payload) for p in to_phone).is_tone(to_phone_hz)


# ---------------------------------------------------------------------------------------------
# linphone as the legacy phone


@pytest.mark.matrix(peer="linphone-udp", scenario="register")
@pytest.mark.matrix(peer="linphone-udp", scenario="call out")
def test_linphone_legacy_calls_srtp_phone_tones_both_ways(site: Site) -> None:
    """linphonec (plain, 440 Hz) registers through the gateway and calls the srtp-mand baresip
    (1000 Hz) at kamailio: each hears the other; the WAN side carries only SRTP under the
    gateway's key and TLS; the LAN leg is plain PCMU."""
    cap = site.capture()
    far = site.provider_phone(FAR)
    phone = legacy_linphone(site)
    phone.call(f"sip:{FAR}@{site.gateway_lan}")
    phone.wait_established()
    far.wait_established()
    time.sleep(3.0)
    phone.hangup()
    phone.wait_terminated()
    far.wait_terminated()
    event = answered(site)
    counters = media_counters(site.gw, str(event["pair"]))
    phone.stop()
    far.stop()
    cap.stop()

    heard_by_far = analyse_wav(recorded(far))
    assert heard_by_far.is_tone(440.0), heard_by_far
    assert not tone_gaps(phone, 1000.0)
    packets = cap.packets()
    clear = assert_wan_side_is_srtp_and_tls(site, packets, trace_keys(far, WAN_ADDRESS))
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    assert_lan_tones(site, packets, 440.0, 1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters
    assert counters["wan_out_packets"] > 100 and counters["lan_out_packets"] > 100, counters


@pytest.mark.matrix(peer="linphone-udp", scenario="call in")
def test_srtp_phone_calls_linphone_legacy_tones_both_ways(site: Site) -> None:
    """The srtp-mand baresip at kamailio dials linphonec's extension: the gateway rings it on
    the LAN, linphonec answers by itself; tones both ways, only SRTP/TLS on the WAN."""
    cap = site.capture()
    far = site.provider_phone(FAR)
    phone = legacy_linphone(site)
    far.dial(site.ns, f"sip:{LEGACY}@{site.provider_domain}")
    far.wait_established()
    phone.wait_established()
    time.sleep(3.0)
    far.hangup(site.ns)
    far.wait_terminated()
    phone.wait_terminated()
    (started,) = gateway_events(site.gw, "started")
    assert started["from_side"] == "wan" and started["caller"] == FAR, started
    event = answered(site)
    counters = media_counters(site.gw, str(event["pair"]))
    phone.stop()
    far.stop()
    cap.stop()

    assert not tone_gaps(phone, 1000.0)
    assert analyse_wav(recorded(far)).is_tone(440.0)
    packets = cap.packets()
    clear = assert_wan_side_is_srtp_and_tls(site, packets, trace_keys(far, WAN_ADDRESS))
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    assert_lan_tones(site, packets, 440.0, 1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters


# ---------------------------------------------------------------------------------------------
# linphone as the SRTP far phone over TLS


@pytest.mark.matrix(peer="linphone-tls-srtp", scenario="register")
@pytest.mark.matrix(peer="linphone-tls-srtp", scenario="call out")
def test_legacy_phone_calls_linphone_srtp_tones_both_ways(site: Site) -> None:
    """A plain baresip behind the gateway calls linphonec, registered at kamailio over TLS
    with mandatory SRTP: linphonec accepts the gateway's SDES offer, tones both ways, and
    every WAN packet decrypts under the key the gateway offered."""
    cap = site.capture()
    far = far_linphone(site)
    legacy = site.legacy_phone(LEGACY)
    legacy.dial(site.ns, f"sip:{FAR}@{site.gateway_lan}")
    legacy.wait_established(15)
    far.wait_established()
    time.sleep(3.0)
    legacy.hangup(site.ns)
    legacy.wait_terminated()
    far.wait_terminated()
    event = answered(site)
    counters = media_counters(site.gw, str(event["pair"]))
    legacy.stop()
    far.stop()
    cap.stop()

    assert not tone_gaps(far, 440.0)
    assert analyse_wav(recorded(legacy)).is_tone(1000.0)
    packets = cap.packets()
    clear = assert_wan_side_is_srtp_and_tls(site, packets, linphone_keys(far, WAN_ADDRESS))
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    assert_lan_tones(site, packets, 440.0, 1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters


@pytest.mark.matrix(peer="linphone-tls-srtp", scenario="call in")
def test_linphone_srtp_calls_legacy_phone_tones_both_ways(site: Site) -> None:
    """linphonec at kamailio (TLS, mandatory SRTP) calls the plain baresip's extension: its
    offer carries four SDES suites; the gateway picks one it supports (never NULL), the call
    has tones both ways and only SRTP/TLS leaves the WAN side."""
    cap = site.capture()
    far = far_linphone(site)
    legacy = site.legacy_phone(LEGACY)
    far.call(f"sip:{LEGACY}@{site.provider_domain}")
    legacy.wait_established(15)
    far.wait_established()
    time.sleep(3.0)
    far.hangup()
    far.wait_terminated()
    legacy.wait_terminated()
    event = answered(site)
    counters = media_counters(site.gw, str(event["pair"]))
    legacy.stop()
    far.stop()
    cap.stop()

    assert not tone_gaps(far, 440.0)
    assert analyse_wav(recorded(legacy)).is_tone(1000.0)
    assert event["suite"] == CM80, event  # linphonec's first of its four suites
    packets = cap.packets()
    clear = assert_wan_side_is_srtp_and_tls(site, packets, linphone_keys(far, WAN_ADDRESS))
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    assert_lan_tones(site, packets, 440.0, 1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters
    assert counters["wan_out_packets"] > 100, counters
