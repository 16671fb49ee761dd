"""DTLS-SRTP with an independent implementation at the provider's media end: aiortc's
``RTCDtlsTransport`` (RFC 5763, RFC 5764; its own handshake driver, its own key export and its
own SRTP sessions through pylibsrtp) against the gateway's worker (gateway/media/dtls.py).

test_dtls_worker.py's far end is pyOpenSSL driven by our code and rtpengine/baresip are C
peers we cannot steer; here the far end's handshake, fingerprint check and RFC 5764 §4.2 key
split are aiortc's, and the test can make it misbehave.

Layout, in one network namespace: kamailio (TLS, 127.0.0.1), the gateway (LAN 127.0.72.20,
WAN 127.0.72.21, trunk keyed ``["dtls"]``), a plain baresip behind it (2001, 440 Hz). The
test is the provider: a TLS UAC through kamailio whose offer is UDP/TLS/RTP/SAVP with aiortc's
certificate fingerprint and an address of ours (127.0.72.40). aiortc's transport wants an
RTCIceTransport; the gateway does no ICE, so :class:`UdpLink` stands in for it (what the
transport uses of one: ``role``, ``_recv`` and ``_send``) over a plain UDP socket to the
gateway's WAN media port, and logs every datagram.

Checked: both roles with tones both ways (RTP protected and unprotected by aiortc's own SRTP
sessions), the WAN seen as DTLS then only SRTP in a capture and in the socket log, the suite
in the call's record the one aiortc agreed. Refusals, each ending the call on both legs with
the DTLS reason and no media either way: a far end with only NULL SRTP profiles (OpenSSL, so
pyOpenSSL and aiortc, cannot name them: tests/interop/dtls_raw.py's hand-built hellos choose
SRTP_NULL_HMAC_SHA1_80 against the gateway's ClientHello, or offer only NULL profiles to it),
and a handshake from a third address (dropped, counted ``dtls_wrong_source``, the call ends at
the handshake's time limit). A wrong fingerprint in the offer is test_dtls.py's (rtpengine).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtp import RtpPacket

from gateway.lab.audio import analyse_wav, write_tone, write_ulaw_tone
from gateway.media.dtls import DTLS_PROFILES
from tests.interop import dtls_raw as raw
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Baresip,
    Kamailio,
    NetNamespace,
    byte_entropy,
    read_sip_message,
    status_code,
)
from tests.interop.test_dtls import call_record
from tests.interop.test_media import (
    Site,
    gateway_events,
    media_counters,
    pcmu_tone,
    recorded,
)
from tests.interop.test_rtpengine_edge import TlsCaller, _body
from tests.pki import TestPki

Need = Callable[..., dict[str, str]]

LEGACY = "2001"
LAN_ADDRESS = "127.0.72.20"
WAN_ADDRESS = "127.0.72.21"
AIORTC = "127.0.72.40"
THIRD = "127.0.72.41"


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
        provider_port=kam.tls_port,
        lan_address=LAN_ADDRESS,
        wan_address=WAN_ADDRESS,
        config={"wan": {"keying": ["dtls"]}},
    )
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


# ---------------------------------------------------------------------------------------------
# aiortc at the provider's media end


class UdpLink(asyncio.DatagramProtocol):
    """What ``RTCDtlsTransport`` uses of its ``RTCIceTransport`` (``role``, ``_recv``,
    ``_send``), over one UDP socket: datagrams go to ``peer``; every datagram in either
    direction is logged (direction, source or destination, bytes)."""

    role = "controlled"  # read only for aiortc's statistics: the DTLS role is set explicitly

    def __init__(self) -> None:
        self.peer: tuple[str, int] | None = None
        self.log: list[tuple[str, tuple[str, int], bytes]] = []
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.log.append(("in", (str(addr[0]), int(addr[1])), data))
        self._queue.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.put_nowait(None)

    async def _recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise ConnectionError("link closed")
        return data

    async def _send(self, data: bytes) -> None:
        assert self._transport is not None and self.peer is not None
        self.log.append(("out", self.peer, data))
        self._transport.sendto(data, self.peer)

    def local_port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Heard:
    """An RTP receiver for aiortc's router: keeps the payloads aiortc's SRTP unprotected."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.payloads.append(packet.payload)

    async def _handle_rtcp_packet(self, packet: object) -> None:
        return None

    def _handle_disconnect(self) -> None:
        return None


@dataclass
class AiortcEnd:
    """aiortc's DTLS transport on a UDP socket of the namespace, its certificate, what it
    heard and what crossed its socket."""

    link: UdpLink
    dtls: RTCDtlsTransport
    heard: Heard = field(default_factory=Heard)

    @classmethod
    async def open(cls, site: Site, bind: str) -> AiortcEnd:
        sock = site.udp_socket(bind)
        loop = asyncio.get_running_loop()
        _, link = await loop.create_datagram_endpoint(UdpLink, sock=sock)
        dtls = RTCDtlsTransport(link, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
        end = cls(link, dtls)
        dtls._register_rtp_receiver(
            end.heard,
            RTCRtpReceiveParameters(
                codecs=[RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)]
            ),
        )
        return end

    @property
    def port(self) -> int:
        return self.link.local_port()

    def fingerprint(self) -> str:
        (sha256,) = [
            f for f in self.dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256"
        ]
        return str(sha256.value)

    def offer(self, setup: str, address: str = AIORTC) -> str:
        """The provider's UDP/TLS/RTP/SAVP offer naming aiortc's certificate (RFC 5763 §5)."""
        return (
            "v=0\r\n"
            f"o=- {secrets.randbelow(10**9)} 1 IN IP4 {address}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {address}\r\n"
            "t=0 0\r\n"
            f"m=audio {self.port} UDP/TLS/RTP/SAVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            f"a=fingerprint:sha-256 {self.fingerprint()}\r\n"
            f"a=setup:{setup}\r\n"
            "a=rtcp-mux\r\n"
            "a=sendrecv\r\n"
        )

    def take_answer(self, answer: str) -> tuple[str, list[RTCDtlsFingerprint]]:
        """Aim the link at the gateway's WAN media port, take aiortc's role from the answer's
        a=setup (RFC 4145 §4); return that a=setup and the gateway's fingerprints."""
        (address,) = re.findall(r"(?m)^c=IN IP4 (\S+)\r$", answer)
        (port,) = re.findall(r"(?m)^m=audio (\d+) UDP/TLS/RTP/SAVP ", answer)
        (setup,) = re.findall(r"(?m)^a=setup:(\S+)\r$", answer)
        prints = [
            RTCDtlsFingerprint(algorithm=a, value=v)
            for a, v in re.findall(r"(?m)^a=fingerprint:(\S+) (\S+)\r$", answer)
        ]
        assert prints, answer
        self.link.peer = (address, int(port))
        # The gateway active -> aiortc accepts the ClientHello; passive -> aiortc sends it.
        self.dtls._set_role("server" if setup == "active" else "client")
        return setup, prints

    async def send_tone(self, tone: Path, seconds: float) -> int:
        """PCMU in 20 ms RTP packets, protected by aiortc's own SRTP session."""
        audio = tone.read_bytes()
        ssrc, seq, ts = secrets.randbits(32), secrets.randbits(15), secrets.randbits(31)
        start = time.monotonic()
        count = int(seconds / 0.02)
        for n in range(count):
            offset = (n * 160) % (len(audio) - 160)
            packet = RtpPacket(
                payload_type=0,
                sequence_number=(seq + n) & 0xFFFF,
                timestamp=(ts + 160 * n) & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=audio[offset : offset + 160],
            )
            await self.dtls._send_rtp(packet.serialize())
            # Paced like a phone: the next packet is due 20 ms after this one.
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        return count

    async def close(self) -> None:
        await self.dtls.stop()
        self.link.close()


def is_dtls(data: bytes) -> bool:
    return bool(data) and 20 <= data[0] <= 63


def is_rtp_like(data: bytes) -> bool:
    return len(data) >= 12 and data[0] >> 6 == 2


def answer_of(final: str) -> str:
    assert status_code(final) == 200, final
    answer = _body(final)
    assert re.findall(r"(?m)^m=audio \d+ (\S+) ", answer) == ["UDP/TLS/RTP/SAVP"], answer
    assert "a=crypto" not in answer and "a=rtcp-mux\r\n" in answer, answer
    return answer


def to_far_end(site: Site, packets: list[Any], far: str) -> list[Any]:
    """UDP datagrams with a payload between the gateway's WAN address and ``far``."""
    return [
        p for p in packets if p.payload and {p.src[0], p.dst[0]} == {site.layout.wan_address, far}
    ]


# ---------------------------------------------------------------------------------------------
# a keyed call, both roles


@pytest.mark.parametrize(
    ("offered_setup", "gateway_setup"),
    [
        pytest.param(
            "actpass",
            "active",
            marks=pytest.mark.matrix(peer="aiortc", scenario="call in (DTLS, gw client)"),
        ),
        pytest.param(
            "active",
            "passive",
            marks=pytest.mark.matrix(peer="aiortc", scenario="call in (DTLS, gw server)"),
        ),
    ],
)
def test_aiortc_keys_the_call_tones_both_ways(
    site: Site, offered_setup: str, gateway_setup: str
) -> None:
    """aiortc's offer is actpass (the gateway answers active and sends the ClientHello) or
    active (the gateway answers passive; aiortc sends it). aiortc checks the gateway's
    certificate against the answer's fingerprint, exports its keys itself and protects a
    1000 Hz tone; the phone's 440 Hz comes back through aiortc's unprotect."""
    cap = site.capture("udp")
    legacy = site.legacy_phone(LEGACY)
    tone = write_ulaw_tone(site.tmp / "tone1000.ulaw", 1000.0, 4.0)

    async def call() -> tuple[AiortcEnd, str, int]:
        end = await AiortcEnd.open(site, AIORTC)
        caller = TlsCaller(site)
        try:
            final = await asyncio.to_thread(caller.invite, end.offer(offered_setup))
            setup, prints = end.take_answer(answer_of(final))
            assert setup == gateway_setup, final
            await asyncio.to_thread(caller.ack_and_route, final)
            await asyncio.wait_for(end.dtls.start(RTCDtlsParameters(fingerprints=prints)), 20)
            assert end.dtls.state == "connected", end.dtls.state
            await asyncio.to_thread(legacy.wait_established, 10)
            sent = await end.send_tone(tone, 3.0)
            assert await asyncio.to_thread(caller.bye) == 200
            assert end.dtls._ssl is not None
            profile = end.dtls._ssl.get_selected_srtp_profile().decode()
        finally:
            caller.close()
            await end.close()
        return end, profile, sent

    end, profile, sent = asyncio.run(call())
    legacy.wait_terminated()
    legacy.stop()
    cap.stop()

    # Tones both ways: aiortc's own SRTP unprotected the phone's 440 Hz; the phone heard
    # the 1000 Hz aiortc protected.
    assert len(end.heard.payloads) > 50, f"{len(end.heard.payloads)} packets unprotected"
    heard = pcmu_tone(end.heard.payloads)
    assert heard.is_tone(440.0), heard
    by_phone = analyse_wav(recorded(legacy))
    assert by_phone.is_tone(1000.0), by_phone

    # The suite in the call's record is the profile aiortc's handshake agreed.
    keyed = gateway_events(site.gw, "keyed")
    assert keyed and DTLS_PROFILES[keyed[-1]["suite"]] == profile, (keyed, profile)
    (answered,) = gateway_events(site.gw, "answered")
    record = call_record(site.gw, str(answered["pair"]))
    assert (record["suite"], record["keying"]) == (keyed[-1]["suite"], "dtls"), record
    counters = media_counters(site.gw, str(answered["pair"]))
    assert counters["drop_auth"] == 0 and counters["dtls_wrong_source"] == 0, counters

    # aiortc's socket log: only the gateway's WAN port spoke to it; DTLS first each way,
    # then only SRTP (the tone's bytes never readable).
    log = end.link.log
    assert {addr for way, addr, _ in log if way == "in"} == {end.link.peer}, log[:3]
    for way in ("in", "out"):
        datagrams = [d for w, _, d in log if w == way]
        assert datagrams and is_dtls(datagrams[0]), f"{way}: no handshake first"
        first_media = next(i for i, d in enumerate(datagrams) if not is_dtls(d))
        # Only a close_notify (aiortc's stop) may follow the media.
        assert all(is_rtp_like(d) for d in datagrams[first_media:] if not is_dtls(d)), way
        assert len([d for d in datagrams if is_rtp_like(d)]) > 50, way
        assert byte_entropy(b"".join(d[12:] for d in datagrams if is_rtp_like(d))) > 7.5
        assert not pcmu_tone(d[12:-10] for d in datagrams if is_rtp_like(d)).is_tone(
            440.0 if way == "in" else 1000.0
        ), way
    assert len([d for w, _, d in log if w == "out" and is_rtp_like(d)]) == sent

    # The capture agrees: the WAN leg held DTLS, then SRTP only, and the gateway's WAN
    # address sent UDP to aiortc's address and nowhere else.
    packets = cap.packets()
    media = to_far_end(site, packets, AIORTC)
    first_rtp = next(i for i, p in enumerate(media) if not is_dtls(p.payload))
    assert all(is_dtls(p.payload) for p in media[:first_rtp]) and first_rtp > 0
    assert all(is_dtls(p.payload) or p.is_rtp_like() for p in media)
    for src, dst, tone_hz in ((WAN_ADDRESS, AIORTC, 440.0), (AIORTC, WAN_ADDRESS, 1000.0)):
        leg = [p for p in media if p.is_rtp_like() and (p.src[0], p.dst[0]) == (src, dst)]
        assert len(leg) > 50, f"{len(leg)} RTP-like packets {src} -> {dst}"
        assert not pcmu_tone(p.payload[12:-10] for p in leg).is_tone(tone_hz)
    assert {p.dst[0] for p in packets if p.src[0] == WAN_ADDRESS} == {AIORTC}
    assert not any(p.is_plain_sip() for p in packets if WAN_ADDRESS in (p.src[0], p.dst[0]))


# ---------------------------------------------------------------------------------------------
# refusals


def long_call_phone(site: Site) -> Baresip:
    """The plain phone with a 30 s tone: baresip hangs up when its file ends, and these calls
    must outlast the gateway's 10 s handshake limit."""
    phone = site.procs.start(
        Baresip(
            site.tmp / f"legacy-{LEGACY}",
            user=LEGACY,
            audio_file=write_tone(site.tmp / "tone440-30s.wav", 440.0, 30.0),
            netns=site.ns.name,
            domain=site.gateway_lan,
            regint=60,
        )
    )
    phone.wait_registered()
    return phone


def ended_reason(site: Site, timeout: float = 10.0) -> str:
    """The reason of the call's one media-ended line (the gateway hung up on media)."""
    deadline = time.monotonic() + timeout
    while not (ended := gateway_events(site.gw, "media-ended")):
        if time.monotonic() > deadline:
            raise site.gw.fail("no media-ended line")
        time.sleep(0.1)
    (only,) = ended
    return str(only["reason"])


class RawEnd:
    """The far end's media socket for the hand-built hellos (tests/interop/dtls_raw.py): sends
    to the gateway's WAN media port, logs every datagram both ways."""

    def __init__(self, site: Site, bind: str) -> None:
        self.sock = site.udp_socket(bind)
        self.port = int(self.sock.getsockname()[1])
        self.peer: tuple[str, int] | None = None
        self.log: list[tuple[str, bytes]] = []

    def send(self, data: bytes) -> None:
        assert self.peer is not None
        self.log.append(("out", data))
        self.sock.sendto(data, self.peer)

    def receive(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, source = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        assert source == self.peer, source
        self.log.append(("in", data))
        return data

    def hello(self, resend: bytes | None = None, timeout: float = 10.0) -> raw.Hello:
        """The next hello the gateway sends (its other handshake datagrams are logged).
        ``resend`` goes out again each second without an answer, as a DTLS client retransmits
        (RFC 6347 §4.2.4): the first may reach the worker before the call's stream is open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.receive(min(1.0, max(0.0, deadline - time.monotonic())))
            if data is None:
                if resend is not None:
                    self.send(resend)
                continue
            found = raw.hellos(data)
            if found:
                return found[0]
        raise AssertionError("no hello from the gateway")

    def drain(self) -> None:
        while self.receive(0.2) is not None:
            pass


def offer(port: int, setup: str, address: str = AIORTC) -> str:
    """A UDP/TLS/RTP/SAVP offer for a far end whose certificate is never shown."""
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    return (
        "v=0\r\n"
        f"o=- {secrets.randbelow(10**9)} 1 IN IP4 {address}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} UDP/TLS/RTP/SAVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        f"a=fingerprint:sha-256 {fingerprint}\r\n"
        f"a=setup:{setup}\r\n"
        "a=rtcp-mux\r\n"
        "a=sendrecv\r\n"
    )


def gateway_port(answer: str) -> tuple[str, int]:
    (address,) = re.findall(r"(?m)^c=IN IP4 (\S+)\r$", answer)
    (port,) = re.findall(r"(?m)^m=audio (\d+) UDP/TLS/RTP/SAVP ", answer)
    return address, int(port)


def assert_no_media(site: Site, packets: list[Any], far: str) -> None:
    """Nothing but DTLS between the gateway's WAN address and the far end, no RTP from the
    gateway to the phone, no plain SIP on the WAN."""
    assert all(is_dtls(p.payload) for p in to_far_end(site, packets, far))
    to_phone = [p for p in packets if p.src[0] == LAN_ADDRESS and p.payload and p.is_rtp_like()]
    assert not to_phone, f"{len(to_phone)} RTP packets reached the phone"
    assert not any(p.is_plain_sip() for p in packets if WAN_ADDRESS in (p.src[0], p.dst[0]))


@pytest.mark.matrix(peer="dtls-raw", scenario="call in (DTLS, NULL profile chosen, gw client)")
def test_a_far_end_choosing_a_null_srtp_profile_ends_the_call(site: Site) -> None:
    """The offer is actpass, so the gateway sends the ClientHello: it lists no NULL profile.
    The far end's ServerHello chooses SRTP_NULL_HMAC_SHA1_80 anyway; the gateway refuses it
    at once (OpenSSL: "bad srtp protection profile list"), ends the call on both legs with the
    DTLS reason, and no media crosses either way."""
    cap = site.capture("udp")
    legacy = long_call_phone(site)
    far = RawEnd(site, AIORTC)
    caller = TlsCaller(site)
    try:
        final = caller.invite(offer(far.port, "actpass"))
        answer = answer_of(final)
        assert re.findall(r"(?m)^a=setup:(\S+)\r$", answer) == ["active"], answer
        far.peer = gateway_port(answer)
        caller.ack_and_route(final)
        ours = far.hello()
        assert ours.msg_type == raw.CLIENT_HELLO, ours
        offered = ours.srtp_profiles()
        assert offered, ours
        assert not set(offered) & {raw.NULL_HMAC_SHA1_80, raw.NULL_HMAC_SHA1_32}, offered
        cipher = next(c for c in raw.CIPHERS if c in ours.ciphers)
        far.send(raw.server_hello(cipher, raw.NULL_HMAC_SHA1_80))
        bye = read_sip_message(caller.tls, 15)
        assert bye.startswith("BYE "), bye
        far.drain()
    finally:
        caller.close()
    legacy.wait_log(r"session closed", 15)
    legacy.stop()
    cap.stop()

    reason = ended_reason(site)
    assert "DTLS-SRTP" in reason and "srtp protection profile" in reason, reason
    assert not gateway_events(site.gw, "keyed")
    assert all(is_dtls(d) for _, d in far.log), "only DTLS crossed"
    assert_no_media(site, cap.packets(), AIORTC)


@pytest.mark.matrix(peer="dtls-raw", scenario="call in (DTLS, NULL profiles offered, gw server)")
def test_a_far_end_offering_only_null_srtp_profiles_ends_the_call(site: Site) -> None:
    """The offer is active, so the far end sends the ClientHello, listing only
    SRTP_NULL_HMAC_SHA1_80 and _32. The gateway's ServerHello chooses none (no use_srtp
    extension); nothing is keyed and at the handshake's time limit the call ends on both legs
    with the DTLS reason; no media crosses either way."""
    cap = site.capture("udp")
    legacy = long_call_phone(site)
    far = RawEnd(site, AIORTC)
    caller = TlsCaller(site)
    try:
        final = caller.invite(offer(far.port, "active"))
        answer = answer_of(final)
        assert re.findall(r"(?m)^a=setup:(\S+)\r$", answer) == ["passive"], answer
        far.peer = gateway_port(answer)
        caller.ack_and_route(final)
        hello = raw.client_hello((raw.NULL_HMAC_SHA1_80, raw.NULL_HMAC_SHA1_32))
        far.send(hello)
        theirs = far.hello(resend=hello)
        assert theirs.msg_type == raw.SERVER_HELLO, theirs
        assert theirs.srtp_profiles() is None, theirs.srtp_profiles()
        bye = read_sip_message(caller.tls, 20)
        assert bye.startswith("BYE "), bye
        far.drain()
    finally:
        caller.close()
    legacy.wait_log(r"session closed", 15)
    legacy.stop()
    cap.stop()

    reason = ended_reason(site)
    assert "DTLS-SRTP" in reason and "timed out" in reason, reason
    assert not gateway_events(site.gw, "keyed")
    assert all(is_dtls(d) for _, d in far.log), "only DTLS crossed"
    assert_no_media(site, cap.packets(), AIORTC)


@pytest.mark.matrix(peer="aiortc", scenario="call in (DTLS, handshake from a third address)")
def test_a_handshake_from_a_third_address_is_dropped_and_the_call_ends(site: Site) -> None:
    """The offer names 127.0.72.40 and a=setup:active; aiortc's ClientHello comes from
    127.0.72.41. The gateway never answers it (counted dtls_wrong_source), nothing keys the
    call, and at the handshake's time limit the call ends with the DTLS reason on both legs."""
    cap = site.capture("udp")
    legacy = long_call_phone(site)

    async def call() -> tuple[AiortcEnd, str]:
        end = await AiortcEnd.open(site, THIRD)
        caller = TlsCaller(site)
        handshake: asyncio.Future[None] | None = None
        try:
            final = await asyncio.to_thread(caller.invite, end.offer("active", AIORTC))
            _, prints = end.take_answer(answer_of(final))
            await asyncio.to_thread(caller.ack_and_route, final)
            start = end.dtls.start(RTCDtlsParameters(fingerprints=prints))
            handshake = asyncio.ensure_future(start)
            bye = await asyncio.to_thread(read_sip_message, caller.tls, 20)
            assert end.dtls.state != "connected", end.dtls.state
        finally:
            if handshake is not None:
                handshake.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handshake
            caller.close()
            await end.close()
        return end, bye

    end, bye = asyncio.run(call())
    assert bye.startswith("BYE "), bye
    legacy.wait_log(r"session closed", 15)
    legacy.stop()
    cap.stop()

    reason = ended_reason(site)
    assert "DTLS-SRTP" in reason and "timed out" in reason, reason
    (answered,) = gateway_events(site.gw, "answered")
    counters = media_counters(site.gw, str(answered["pair"]))
    assert counters["dtls_wrong_source"] >= 1 and counters["dtls_handshakes"] == 0, counters
    sent = [d for w, _, d in end.link.log if w == "out"]
    assert sent and all(is_dtls(d) for d in sent), "aiortc sent its ClientHello"
    heard = [d for w, _, d in end.link.log if w == "in"]
    assert not heard, "the gateway answered the third address"
    packets = cap.packets()
    assert not [p for p in packets if p.src[0] == WAN_ADDRESS], "the gateway's WAN sent UDP"
    assert_no_media(site, packets, THIRD)
    assert not end.heard.payloads
