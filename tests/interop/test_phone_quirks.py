"""Real peers sending what legacy phones and ATAs really send, through the real gateway.

Every test runs in its own network namespace (only ``lo``) with kamailio as the TLS provider
on 127.0.0.1 (the address its test certificate names), the gateway on 127.0.4.20 (LAN) and
127.0.4.21 (WAN), and phones on 127.0.4.x (sipp) or 127.0.0.1 (baresip, which puts the
default-route address in its SDP).

- sipp REGISTERs written the way an SPA ATA writes them (no rport, ``;expires`` on a Contact
  with a display name) and in compact forms with odd case, blanks and a folded line register
  at kamailio through the gateway; a Route giving one URI parameter two values gets a 400 whose
  reason phrase names the parameter, and goes no further;
- an ATA-style sipp call (compact headers, no rport, no Max-Forwards, ``;lr;lr`` Route on
  every request) reaches a named extension at the provider;
- baresip 1.0 with ``outbound="sip:GATEWAY;lr"`` (which writes ``Route: <...;lr;lr>``)
  registers through the gateway and calls ``reception``, a TLS+SRTP baresip registered at
  kamailio: tones both ways, and the capture shows only TLS and SRTP on the WAN side.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import analyse_wav
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import Baresip, Kamailio, NetNamespace, Sipp
from tests.interop.test_media import (
    Site,
    answered_pair,
    assert_wan_side_is_srtp_and_tls,
    lan_rtp,
    media_counters,
    pcmu_tone,
    recorded,
    rtp_payload,
    stop_phones,
    trace_keys,
)
from tests.interop.test_signalling import (
    gateway_events,
    headers,
    kamailio_contacts,
    kamailio_requests,
    responses,
    sipp_messages,
)
from tests.pki import TestPki

pytestmark = pytest.mark.interop

Need = Callable[..., dict[str, str]]

GATEWAY_LAN = "127.0.4.20"
GATEWAY_WAN = "127.0.4.21"
RECEPTION = "reception"


@pytest.fixture
def site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
) -> Site:
    need("kamailio", "kamcmd", "baresip", "sipp", "tshark")
    kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
    layout = GatewayLayout(
        lan_address=GATEWAY_LAN, wan_address=GATEWAY_WAN, provider_port=kam.tls_port
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


def lan_sipp(site: Site, scenario: str, host: str, user: str, **kw: object) -> Sipp:
    """A sipp phone on ``host`` talking to the gateway's LAN side, its domain the gateway."""
    return site.procs.start(
        Sipp(
            site.tmp / scenario,
            scenario,
            host=host,
            remote=(site.layout.lan_address, site.layout.lan_port),
            user=user,
            domain=site.layout.lan_address,
            name=scenario,
            netns=site.ns.name,
            **kw,  # type: ignore[arg-type]
        )
    )


def registered_at_provider(kam: Kamailio, user: str) -> bool:
    return re.search(rf"AoR: {re.escape(user)}\b", kamailio_contacts(kam)) is not None


# ---------------------------------------------------------------------------------------------
# registrations


@pytest.mark.matrix(peer="sipp-udp", scenario="register (ATA quirks)")
@pytest.mark.parametrize(
    ("scenario", "host", "user"),
    [
        ("quirk_register_spa", "127.0.4.11", "1011"),
        ("quirk_register_compact", "127.0.4.12", "1012"),
    ],
)
def test_quirky_register_reaches_the_provider(
    site: Site, scenario: str, host: str, user: str
) -> None:
    """The phone gets 200 (at the port it sent from: no rport needed), kamailio holds the
    gateway's binding for the user, and the gateway logged the registration."""
    reg = lan_sipp(site, scenario, host, user, keys={"fold": " "})
    reg.wait_done(20, expect_success=1)
    assert registered_at_provider(site.kam, user), kamailio_contacts(site.kam)
    assert [e for e in gateway_events(site.gw, "registered") if e.get("user") == user]
    (ok,) = responses(sipp_messages(reg), 200, "REGISTER")
    (contact,) = headers(ok, "Contact")
    assert contact.startswith(f"<sip:{user}@{host}:{reg.port}>;expires="), contact


@pytest.mark.matrix(peer="sipp-udp", scenario="malformed input")
def test_route_with_two_transports_is_refused_by_name(site: Site) -> None:
    """Two values for one URI parameter could route two ways: 400, the reason phrase (and the
    Warning) name the parameter, and the REGISTER never reaches the provider."""
    reg = lan_sipp(site, "quirk_register_refused", "127.0.4.13", "1013")
    reg.wait_done(20, expect_success=1)
    (refusal,) = responses(sipp_messages(reg), 400)
    assert refusal.split("\n", 1)[0].strip() == (
        "SIP/2.0 400 conflicting duplicate URI parameter 'transport'"
    )
    assert "conflicting duplicate URI parameter" in headers(refusal, "Warning")[0]
    assert not [r for r in kamailio_requests(site.kam, "REGISTER") if "1013" in r]
    assert not registered_at_provider(site.kam, "1013")


# ---------------------------------------------------------------------------------------------
# calls to a named extension at the provider


def reception(site: Site) -> Baresip:
    """``reception``: a TLS, srtp-mand baresip registered at kamailio, auto-answering with
    1000 Hz (its SIP trace gives the SDES keys)."""
    return site.provider_phone(RECEPTION)


@pytest.mark.matrix(peer="sipp-udp", scenario="named extension")
def test_ata_with_compact_headers_calls_a_named_extension(site: Site) -> None:
    """Compact headers, no rport, no Max-Forwards and a ``;lr;lr`` Route on every request:
    the call is answered by ``reception`` at the provider, which hears the
    ATA's 440 Hz, and ends with the ATA's BYE."""
    answerer = reception(site)
    ata = lan_sipp(
        site,
        "quirk_uac_invite",
        "127.0.4.14",
        "1014",
        to_user=RECEPTION,
        rtp_file=site.tones.ulaw_440,
        params={"hold_ms": "3000"},
        timeout=30,
    )
    ata.wait_done(30, expect_success=1)
    answerer.wait_terminated(10)
    (started,) = gateway_events(site.gw, "started")
    assert started["caller"] == "1014" and started["callee"] == RECEPTION, started
    stop_phones(answerer)
    heard = analyse_wav(recorded(answerer))
    assert heard.is_tone(440.0), heard
    assert "failed to decrypt" not in answerer.output()


@pytest.mark.matrix(peer="baresip-udp", scenario="register")
@pytest.mark.matrix(peer="baresip-udp", scenario="named extension")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="call in")
def test_baresip_with_outbound_proxy_registers_and_calls_reception(site: Site) -> None:
    """baresip 1.0 with ``outbound="sip:GATEWAY;lr"`` sends ``Route: <sip:GATEWAY;lr;lr>``:
    the gateway takes the Route as naming itself, registers the phone at kamailio and carries
    its call to ``reception`` (TLS + SRTP at the provider). Each end records the other's tone;
    every packet leaving the gateway's WAN side is SRTP under the gateway's keys, and no plain
    SIP crosses it."""
    cap = site.capture()
    answerer = reception(site)
    gateway = f"{site.layout.lan_address}:{site.layout.lan_port}"
    phone = site.procs.start(
        Baresip(
            site.tmp / "outbound-phone",
            user="2001",
            audio_file=site.tones.wav_440,
            netns=site.ns.name,
            domain=site.provider_domain,  # the AOR is the provider's; the Route finds the gateway
            outbound=f"sip:{gateway};lr",
            regint=60,
        )
    )
    phone.wait_registered()
    assert registered_at_provider(site.kam, "2001"), kamailio_contacts(site.kam)
    phone.dial(site.ns, f"sip:{RECEPTION}@{site.provider_domain}")
    phone.wait_established(10)
    answerer.wait_established(10)
    time.sleep(3.0)  # three seconds of tone each way
    phone.hangup(site.ns)
    phone.wait_terminated(5)
    answerer.wait_terminated(5)
    counters = media_counters(site.gw, answered_pair(site.gw))
    stop_phones(phone, answerer)
    cap.stop()

    packets = cap.packets()
    to_gateway = [
        p.payload.decode("utf-8", "replace")
        for p in packets
        if p.proto == "udp" and p.dst == (site.layout.lan_address, site.layout.lan_port)
    ]
    routes = {line for text in to_gateway for line in re.findall(r"(?m)^Route: ([^\r\n]+)", text)}
    assert routes == {f"<sip:{gateway};lr;lr>"}, routes  # the quirk really was on the wire
    assert any(t.startswith("REGISTER ") for t in to_gateway)
    assert any(t.startswith("BYE ") for t in to_gateway)  # in-dialog, with the Route too

    assert analyse_wav(recorded(answerer)).is_tone(440.0)
    assert analyse_wav(recorded(phone)).is_tone(1000.0)
    assert "failed to decrypt" not in answerer.output()
    keys = trace_keys(answerer, site.layout.wan_address)
    clear = assert_wan_side_is_srtp_and_tls(site, packets, keys)
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    lan = site.layout.lan_address
    to_phone = lan_rtp(site, packets, lan, "127.0.0.1")
    assert pcmu_tone(rtp_payload(p.payload) for p in to_phone).is_tone(1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters
