"""rtpengine as the provider's SRTP edge, with its default SRTP offers, calling a phone behind
the gateway.

A provider that anchors media in rtpengine and converts its customers' plain RTP to SRTP
offers, unless told otherwise (rtpengine 10.5, ng ``offer`` with only ``transport-protocol``):

- twelve SDES lines (AEAD_AES_256/128_GCM, AES_256/192/128_CM_HMAC_SHA1_80/32, F8_128 and
  NULL_HMAC_SHA1_80/32), with unpadded base64 keys;
- a DTLS fingerprint and ``a=setup:actpass`` next to them, under ``RTP/SAVP`` or, when asked
  for DTLS-SRTP, ``UDP/TLS/RTP/SAVP``.

The gateway keys the WAN side with SDES only (DTLS-SRTP is a later issue). From such an offer
it must pick a non-NULL SDES suite it supports, answer ``RTP/SAVP`` with exactly that one
a=crypto line (no fingerprint, no setup: DTLS is not taken up), and never pick NULL.

Layout, in one network namespace: kamailio (TLS, 127.0.0.1), the gateway (LAN 127.0.3.20,
WAN 127.0.3.21), a plain baresip behind it (2001, 440 Hz) and rtpengine on 127.0.3.40. The
test is the provider's caller: it asks rtpengine for the SRTP offer of a plain party
(a UDP socket on 127.0.3.41 sending 1000 Hz PCMU), sends that offer in an INVITE over TLS
through kamailio to the phone's extension, gives the gateway's answer back to rtpengine, and
then checks the tones both ways and that the WAN leg between the gateway and rtpengine is
SRTP only. kamailio's rtpengine module is packaged too, but driving rtpengine over its ng port
from the test keeps the offer exactly rtpengine's default.
"""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.lab.audio import analyse_wav, write_ulaw_tone
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Kamailio,
    NetNamespace,
    Rtpengine,
    byte_entropy,
    client_ssl_context,
    read_sip_message,
    status_code,
)
from tests.interop.test_media import Site, gateway_events, pcmu_tone, recorded, rtp_payload
from tests.pki import TestPki

Need = Callable[..., dict[str, str]]

LEGACY = "2001"
CALLER = "3009"
LAN_ADDRESS = "127.0.3.20"
WAN_ADDRESS = "127.0.3.21"
RTPENGINE = "127.0.3.40"
FAR_MEDIA = "127.0.3.41"


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
        provider_port=kam.tls_port, lan_address=LAN_ADDRESS, wan_address=WAN_ADDRESS
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


# ---------------------------------------------------------------------------------------------
# a provider-side caller over TLS through kamailio


def _header(message: str, name: str) -> list[str]:
    head = message.split("\r\n\r\n", 1)[0]
    return [m.group(1).strip() for m in re.finditer(rf"(?im)^{name}\s*:(.*)$", head)]


def _body(message: str) -> str:
    return message.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in message else ""


class TlsCaller:
    """A minimal UAC on one verified TLS connection to kamailio: INVITE, ACK, BYE."""

    def __init__(self, site: Site) -> None:
        raw = site.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect(site.kam.tls_address)
        self.tls: ssl.SSLSocket = client_ssl_context(site.pki).wrap_socket(
            raw, server_hostname="127.0.0.1"
        )
        self.local = self.tls.getsockname()
        self.domain = site.provider_domain
        self.call_id = secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)
        self.to = f"<sip:{LEGACY}@127.0.0.1>"
        self.target = f"sip:{LEGACY}@{self.domain}"
        self.route: list[str] = []
        self.branch = ""

    def close(self) -> None:
        self.tls.close()

    def _request(self, method: str, uri: str, cseq: int, body: str = "") -> None:
        if method != "ACK" or not self.branch:
            self.branch = "z9hG4bK" + secrets.token_hex(8)
        host, port = self.local[0], self.local[1]
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/TLS {host}:{port};branch={self.branch};rport;alias",
            "Max-Forwards: 70",
            f"From: <sip:{CALLER}@127.0.0.1>;tag={self.from_tag}",
            f"To: {self.to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{CALLER}@{host}:{port};transport=tls>",
            *(f"Route: {r}" for r in self.route),
            *(["Content-Type: application/sdp"] if body else []),
            f"Content-Length: {len(body.encode())}",
            "",
            body,
        ]
        self.tls.sendall("\r\n".join(lines).encode())

    def _final(self, method: str) -> str:
        while True:
            msg = read_sip_message(self.tls, 15)
            if not msg.startswith("SIP/2.0"):
                continue  # a request on our connection (none expected) is not our answer
            if not any(c.split()[-1] == method for c in _header(msg, "CSeq")):
                continue
            if status_code(msg) >= 200:
                return msg

    def invite(self, sdp: str) -> str:
        """Send the INVITE, return the final response (ACKing a refusal hop by hop)."""
        self._request("INVITE", self.target, 1, sdp)
        final = self._final("INVITE")
        to = _header(final, "To")
        if to:
            self.to = to[0]
        if status_code(final) >= 300:
            self._request("ACK", self.target, 1)
        return final

    def ack_and_route(self, ok: str) -> str:
        """ACK a 200 along its Record-Route (reversed for the UAC); return the target."""
        self.route = list(reversed([r for h in _header(ok, "Record-Route") for r in h.split(",")]))
        (contact,) = _header(ok, "Contact")
        self.target = contact.strip().split(">")[0].lstrip("<")
        self.branch = ""
        self._request("ACK", self.target, 1)
        return self.target

    def bye(self) -> int:
        self._request("BYE", self.target, 2)
        return status_code(self._final("BYE"))


# ---------------------------------------------------------------------------------------------
# the plain party behind rtpengine


class PlainParty:
    """A UDP socket that sends a PCMU tone (20 ms packets) and keeps what it receives."""

    def __init__(self, site: Site, tone: Path) -> None:
        self.sock = site.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((FAR_MEDIA, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.audio = tone.read_bytes()
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def sdp(self) -> str:
        return (
            "v=0\r\n"
            f"o=- {secrets.randbelow(10**9)} 1 IN IP4 {FAR_MEDIA}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {FAR_MEDIA}\r\n"
            "t=0 0\r\n"
            f"m=audio {self.port} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=sendrecv\r\n"
        )

    def start(self, to: tuple[str, int]) -> None:
        self._threads = [
            threading.Thread(target=self._send, args=(to,), daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _send(self, to: tuple[str, int]) -> None:
        ssrc = secrets.randbits(32)
        seq, ts = secrets.randbits(15), secrets.randbits(31)
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(self.audio) - 160, 160)):
            if self._stop.is_set():
                return
            header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big")
            self.sock.sendto(
                header + ssrc.to_bytes(4, "big") + self.audio[offset : offset + 160], to
            )
            seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
            # Paced like a phone: the next packet is due 20 ms after this one.
            time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) >= 12 and data[1] & 0x7F == 0:
                self.received.append(data)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# the test


@pytest.mark.parametrize(
    "transport",
    [
        pytest.param(
            "RTP/SAVP",
            marks=pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (SDES+DTLS offer)"),
        ),
        pytest.param(
            "UDP/TLS/RTP/SAVP",
            marks=pytest.mark.matrix(peer="rtpengine-edge", scenario="call in (UDP/TLS/RTP/SAVP)"),
        ),
    ],
)
def test_rtpengine_default_srtp_offer_gets_sdes_answer(site: Site, transport: str) -> None:
    """rtpengine's default SRTP offer (12 SDES suites with NULL among them, a DTLS fingerprint,
    setup:actpass) reaches the gateway through kamailio: it answers RTP/SAVP with one non-NULL
    SDES line and no DTLS attributes; tones pass both ways and the WAN leg is SRTP only."""
    rtpe = site.procs.start(
        Rtpengine(
            site.tmp / "rtpengine",
            interface=RTPENGINE,
            port_range=(36000, 36099),
            netns=site.ns.name,
        )
    )
    cap = site.capture()
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
                "transport-protocol": transport,
                "ICE": "remove",
            }
        )
        assert offer.get("result") == "ok", offer
        srtp_offer = str(offer["sdp"])
        # What makes this offer hard: NULL suites, a fingerprint and the DTLS role beside SDES.
        assert "NULL_HMAC_SHA1_80" in srtp_offer and "a=fingerprint:" in srtp_offer
        assert "a=setup:actpass" in srtp_offer and f" {transport} " in srtp_offer

        final = caller.invite(srtp_offer)
        assert status_code(final) == 200, final
        answer = _body(final)
        media = re.findall(r"(?m)^m=audio (\d+) (\S+) ", answer)
        assert [proto for _, proto in media] == ["RTP/SAVP"], answer
        cryptos = re.findall(r"(?m)^a=crypto:\d+ (\S+) inline:", answer)
        assert len(cryptos) == 1 and "NULL" not in cryptos[0], answer
        assert "a=fingerprint" not in answer and "a=setup" not in answer, answer
        (event,) = gateway_events(site.gw, "answered")
        assert event["suite"] == cryptos[0] and event["plaintext_downgrade"] is False, event

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
        time.sleep(3.0)
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

    # The WAN leg (gateway <-> rtpengine) is SRTP both ways: ciphertext, no tone when read as
    # PCMU, and no SIP in the clear anywhere on the gateway's WAN address.
    packets = cap.packets()
    for src, dst in ((WAN_ADDRESS, RTPENGINE), (RTPENGINE, WAN_ADDRESS)):
        leg = [p for p in packets if p.is_rtp_like() and (p.src[0], p.dst[0]) == (src, dst)]
        assert len(leg) > 50, f"{len(leg)} RTP-like packets {src} -> {dst}"
        assert byte_entropy(b"".join(p.payload[12:] for p in leg)) > 7.5
        as_pcmu = pcmu_tone(p.payload[12:-10] for p in leg)
        assert not as_pcmu.is_tone(440.0) and not as_pcmu.is_tone(1000.0), as_pcmu
    assert not any(p.is_plain_sip() for p in packets if WAN_ADDRESS in (p.src[0], p.dst[0]))
