"""Drill (issue 14, item 1): kill -9 the media worker under live calls between real phones.

Two plain baresip phones (440 Hz, UDP, RTP/AVP) registered through the gateway each call an
srtp-mand baresip (1000 Hz) registered at kamailio over TLS, all in a network namespace of
the test's own (only ``lo``: the namespace's loopback addresses cannot collide with other
runs). With both calls up and tones flowing, every media worker the gateway reports over its
control socket (``gateway status``) is killed with SIGKILL. The controller restarts the
worker and re-opens the streams from their checkpoints (gateway/media/controller.py).

Checked afterwards: ``gateway status`` shows the restart and the calls restored; in the capture
after the kill each call still carries 1000 Hz to its plain phone (LAN) and SRTP that decrypts
to 440 Hz toward its SRTP phone (WAN); over the whole test every packet leaving the WAN address
is SRTP under a key the gateway gave (no plaintext RTP, no plain SIP); the SRTP phones report
no decryption failure; the BYE ends both legs of each call; the provider side then calls a
plain phone (its registration through the gateway is still there) and that call has audio.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.control import ControlError, control_request
from tests.interop.peers import Baresip, Packet
from tests.interop.test_media import (
    LEGACY,
    SECURE,
    Decryptor,
    Site,
    TraceKeys,
    assert_wan_side_is_srtp_and_tls,
    flows,
    is_rtcp,
    lan_rtp,
    pcmu_tone,
    rtp_payload,
    trace_keys,
)
from tests.interop.test_media import site as media_site  # noqa: F401  (the fixture)

pytestmark = pytest.mark.interop

LEGACY_2 = "2002"
SECURE_2 = "3004"
#: Seconds of audio checked before the kill and after the restart (audio time, not a wait).
AUDIO = 3.0


def _control(site: Site, path: str) -> dict[str, Any]:
    socket_path = site.gw.config_path.parent / "control.sock"
    return control_request(str(socket_path), "GET", path, timeout=10.0)


def _until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _occurrences(phone: Baresip, pattern: str) -> int:
    return len(re.findall(pattern, phone.output()))


def _wait_nth(phone: Baresip, pattern: str, n: int, timeout: float = 10.0) -> None:
    _until(f"{phone.user}: {pattern} x{n}", lambda: _occurrences(phone, pattern) >= n, timeout)


def _by_port(packets: list[Packet], *, dst: bool) -> dict[int, list[Packet]]:
    groups: dict[int, list[Packet]] = {}
    for p in packets:
        groups.setdefault(p.dst[1] if dst else p.src[1], []).append(p)
    return groups


def _workers(site: Site) -> list[dict[str, Any]]:
    return list(_control(site, "/status")["media"]["worker_states"])


@pytest.mark.matrix(peer="baresip-udp", scenario="media worker killed")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="media worker killed")
def test_kill_9_media_worker_calls_keep_audio_both_ways_only_srtp_on_wan(
    media_site: Site,  # noqa: F811  (the fixture imported above)
) -> None:
    site = media_site
    cap = site.capture()
    secures = [site.provider_phone(SECURE), site.provider_phone(SECURE_2)]
    legacies = [site.legacy_phone(LEGACY), site.legacy_phone(LEGACY_2)]
    for legacy, secure in zip(legacies, secures, strict=True):
        legacy.dial(site.ns, f"sip:{secure.user}@{site.gateway_lan}")
    for phone in (*legacies, *secures):
        phone.wait_established(10)
    time.sleep(AUDIO)

    before = _workers(site)
    assert before and all(w["state"] == "running" and w["restarts"] == 0 for w in before)
    killed_at = time.time()
    for w in before:
        os.kill(int(w["pid"]), signal.SIGKILL)

    def restarted() -> bool:
        try:
            states = _workers(site)
        except ControlError:
            return False
        return all(w["state"] == "running" and w["restarts"] == 1 for w in states)

    _until("every media worker restarted with its calls", restarted)
    after = _workers(site)
    assert sum(w["last_restored"] for w in after) == 2, after
    assert all(w["last_lost"] == 0 for w in after), after
    assert {w["pid"] for w in after}.isdisjoint({w["pid"] for w in before})
    assert "media worker 0 restarted" in site.gw.output()
    time.sleep(AUDIO)

    # BYE from each plain phone ends both legs of its call.
    for legacy, secure in zip(legacies, secures, strict=True):
        legacy.hangup(site.ns)
        legacy.wait_terminated(5)
        secure.wait_terminated(5)

    # Registrations survived: the provider side reaches a plain phone through the gateway.
    registered = _control(site, "/registrations")
    assert len(registered["registrations"]) >= 2, registered
    secures[0].dial(site.ns, f"sip:{LEGACY}@{site.provider_domain}")
    _wait_nth(secures[0], r"Call established", 2)
    _wait_nth(legacies[0], r"Call established", 2)
    time.sleep(1.0)  # a second of audio on the new call (audio time, not a wait)
    secures[0].hangup(site.ns)
    _wait_nth(secures[0], r"terminated \(duration", 2)
    _wait_nth(legacies[0], r"terminated \(duration", 2)
    for phone in (*legacies, *secures):
        phone.stop()
    cap.stop()

    for secure in secures:
        assert "failed to decrypt" not in secure.output()
    packets = cap.packets()
    keys = [trace_keys(s, site.layout.wan_address) for s in secures]
    merged = TraceKeys(
        tuple(k for t in keys for k in t.gateway), tuple(k for t in keys for k in t.peer)
    )
    # Invariant 1 over the whole test, the kill and the restart included.
    assert_wan_side_is_srtp_and_tls(site, packets, merged)
    _assert_audio_after(site, packets, merged, killed_at)


def _assert_audio_after(
    site: Site, packets: list[Packet], keys: TraceKeys, killed_at: float
) -> None:
    """After the kill each call's plain phone still hears 1000 Hz (LAN) and each SRTP phone
    still gets SRTP carrying 440 Hz (WAN), grouped by the phone's port (the call made after
    the drill carries the same tones, so it cannot hide a silent drill call)."""
    lan = site.layout.lan_address
    to_phones = _by_port(
        [p for p in lan_rtp(site, packets, lan, "127.0.0.1") if p.time > killed_at], dst=True
    )
    drill_ports = [port for port, group in to_phones.items() if len(group) > 50]
    assert len(drill_ports) >= 2, {port: len(g) for port, g in to_phones.items()}
    for port in drill_ports:
        tone = pcmu_tone(rtp_payload(p.payload) for p in to_phones[port])
        assert tone.is_tone(1000.0), (port, tone)

    decryptor = Decryptor(keys.gateway)
    to_provider: dict[int, list[bytes]] = {}
    for p in flows(packets, site.layout.wan_address):
        plain = decryptor.unprotect(p.payload)
        assert plain is not None  # every WAN packet is ours (checked above as well)
        if p.time > killed_at and not is_rtcp(plain) and plain[1] & 0x7F == 0:
            to_provider.setdefault(p.dst[1], []).append(rtp_payload(plain))
    streams = [payloads for payloads in to_provider.values() if len(payloads) > 50]
    assert len(streams) >= 2, {port: len(v) for port, v in to_provider.items()}
    for payloads in streams:
        assert pcmu_tone(payloads).is_tone(440.0), pcmu_tone(payloads)
