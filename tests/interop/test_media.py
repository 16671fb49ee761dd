"""Media through the real gateway, between real phones (baresip) and a real provider (kamailio).

Every test runs in its own network namespace (only ``lo``): kamailio (TLS registrar/proxy on
127.0.0.1), the gateway (``python -m gateway run``; LAN 127.0.0.20, WAN 127.0.0.21, media
workers included), baresips and tshark. The legacy phone is a plain baresip (UDP, RTP/AVP)
registered through the gateway's LAN side; the provider-side phone is a baresip with
``mediaenc=srtp-mand`` registered at kamailio over TLS. Tones (440 Hz from the legacy phone,
1000 Hz from the SRTP phone) are checked by frequency in the recordings and in the capture.

The SRTP phone runs with SIP trace (``-s``), so the test knows the SDES keys the gateway gave
it and can decrypt what the capture saw on the WAN with libsrtp (pylibsrtp): that proves the
packets leaving the gateway's WAN side are SRTP under the negotiated key and carry the tone,
while read as plain PCMU they carry nothing. The gateway logs one ``media-closed`` JSON line per
call with the per-stream counters (gateway/app.py), which the tests read for drop counts.
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest

from gateway.lab.audio import analyse_samples, analyse_wav, ulaw_encode_sample, ulaw_to_samples
from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Baresip,
    Capture,
    Kamailio,
    NetNamespace,
    Packet,
    Sipp,
    Stunnel,
    byte_entropy,
    client_ssl_context,
    read_sip_message,
    sip_register_request,
    status_code,
)
from tests.pki import TestPki

pytestmark = pytest.mark.interop

Need = Callable[..., dict[str, str]]

LEGACY = "2001"  # plain phone behind the gateway (LAN)
SECURE = "3001"  # srtp-mand baresip at the provider (WAN)
PLAIN_PROVIDER_PHONE = "3002"  # baresip at the provider without mediaenc (RTP/AVP)
PLAIN_ANSWERER = "3003"  # sipp at the provider answering RTP/AVP

CM80 = "AES_CM_128_HMAC_SHA1_80"
_CRYPTO = re.compile(r"a=crypto:\d+ (\S+) inline:([A-Za-z0-9+/]+={0,2})")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------
# the site: kamailio + gateway in one namespace


@dataclass
class Site:
    """One test's namespace, provider and gateway."""

    ns: NetNamespace
    kam: Kamailio
    gw: GatewayProcess
    layout: GatewayLayout
    pki: TestPki
    procs: ProcessSet
    tmp: Path
    tones: Tones

    @property
    def provider_domain(self) -> str:
        return f"127.0.0.1:{self.kam.tls_port}"

    @property
    def gateway_lan(self) -> str:
        return f"{self.layout.lan_address}:{self.layout.lan_port}"

    def legacy_phone(self, user: str = LEGACY) -> Baresip:
        """A plain (UDP, RTP/AVP) baresip playing 440 Hz, registered through the gateway."""
        phone = self.procs.start(
            Baresip(
                self.tmp / f"legacy-{user}",
                user=user,
                audio_file=self.tones.wav_440,
                netns=self.ns.name,
                domain=self.gateway_lan,
                regint=60,
            )
        )
        phone.wait_registered()
        return phone

    def provider_phone(self, user: str = SECURE, *, srtp: str | None = "srtp-mand") -> Baresip:
        """A TLS baresip at kamailio playing 1000 Hz, with SIP trace (for its SDES keys)."""
        phone = Baresip(
            self.tmp / f"provider-{user}",
            user=user,
            audio_file=self.tones.wav_1000,
            netns=self.ns.name,
            tls=True,
            srtp=srtp,
            pki=self.pki,
            domain=self.provider_domain,
            regint=60,
        )
        phone.argv.append("-s")  # SIP trace on stdout: the SDP, keys included (test peer only)
        self.procs.start(phone)
        phone.wait_registered()
        return phone

    def capture(self, bpf: str = "udp or tcp") -> Capture:
        return self.procs.start(Capture(self.tmp / "cap", bpf=bpf, netns=self.ns.name))

    def udp_socket(self, address: str) -> socket.socket:
        sock = self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        return sock


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
    layout = GatewayLayout(provider_port=kam.tls_port)
    gw = procs.start(GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name))
    gw.wait_provider_up()
    gw.wait_listening()
    return Site(netns, kam, gw, layout, pki, procs, tmp_path, tones)


# ---------------------------------------------------------------------------------------------
# gateway log


def gateway_events(gw: GatewayProcess, kind: str) -> list[dict[str, Any]]:
    """The gateway's JSON event lines of one kind, in order."""
    out = []
    for line in gw.stderr().splitlines():
        if not line.startswith("{") or '"event"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == kind:
            out.append(record)
    return out


def media_counters(gw: GatewayProcess, pair: str, timeout: float = 10.0) -> dict[str, int]:
    """Stream 0's counters from the ``media-closed`` line the gateway logs at call end."""
    deadline = time.monotonic() + timeout
    while True:
        for record in gateway_events(gw, "media-closed"):
            if record.get("pair") == pair:
                streams = record["streams"]
                assert set(streams) == {"0"}, streams
                return dict(streams["0"])
        if time.monotonic() > deadline:
            raise gw.fail(f"no media-closed line for {pair}")
        time.sleep(0.1)


def answered_pair(gw: GatewayProcess) -> str:
    (answered,) = gateway_events(gw, "answered")
    assert answered["suite"] == CM80 and answered["plaintext_downgrade"] is False, answered
    return str(answered["pair"])


# ---------------------------------------------------------------------------------------------
# SDES keys from the SRTP phone's SIP trace, SRTP decryption


@dataclass(frozen=True)
class TraceKeys:
    """AES_CM_128_HMAC_SHA1_80 inline keys seen in a baresip SIP trace, by who sent the SDP."""

    gateway: tuple[str, ...]  # in SDP with c=IN IP4 127.0.0.21 (the gateway's WAN side)
    peer: tuple[str, ...]  # in the phone's own SDP

    @property
    def all(self) -> tuple[str, ...]:
        return self.gateway + self.peer


def trace_keys(phone: Baresip, wan_address: str) -> TraceKeys:
    text = _ANSI.sub("", phone.stdout()).replace("\r", "")
    gateway: list[str] = []
    peer: list[str] = []
    for section in re.split(r"\n(?=(?:TLS|TCP|UDP) \S+ -> \S+\n)", text):
        if "a=crypto:" not in section:
            continue
        keys = [k for suite, k in _CRYPTO.findall(section) if suite == CM80]
        target = gateway if f"c=IN IP4 {wan_address}" in section else peer
        target.extend(k for k in keys if k not in target)
    return TraceKeys(tuple(gateway), tuple(peer))


def rtp_payload(packet: bytes) -> bytes:
    """The payload of a plain RTP packet (after CSRCs and a header extension)."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= offset + 4:
        offset += 4 + 4 * struct.unpack("!H", packet[offset + 2 : offset + 4])[0]
    return packet[offset:]


def is_rtcp(payload: bytes) -> bool:
    return len(payload) >= 8 and payload[0] >> 6 == 2 and 200 <= payload[1] <= 204


class Decryptor:
    """Unprotects captured SRTP/SRTCP with any of the given keys (one libsrtp session each).

    libsrtp authenticates before it accepts anything, so a packet that unprotects under a key
    was protected with that key; failures leave a session unchanged.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.sessions = {
            key: pylibsrtp.Session(
                pylibsrtp.Policy(
                    key=base64.b64decode(key),
                    ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                    srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
                )
            )
            for key in keys
        }
        self.used: set[str] = set()

    def unprotect(self, payload: bytes) -> bytes | None:
        for key, session in self.sessions.items():
            try:
                plain = (
                    session.unprotect_rtcp(payload)
                    if is_rtcp(payload)
                    else session.unprotect(payload)
                )
            except pylibsrtp.Error:
                continue
            self.used.add(key)
            return bytes(plain)
        return None


def pcmu_tone(payloads: Iterable[bytes]) -> Any:
    return analyse_samples(ulaw_to_samples(b"".join(payloads)))


# ---------------------------------------------------------------------------------------------
# calls and captures


def flows(packets: Iterable[Packet], src: str, dst: str | None = None) -> list[Packet]:
    """UDP packets from ``src`` (to ``dst`` if given)."""
    return [
        p
        for p in packets
        if p.proto == "udp" and p.src[0] == src and (dst is None or p.dst[0] == dst) and p.payload
    ]


def in_range(port: int, span: tuple[int, int]) -> bool:
    return span[0] <= port <= span[1] + 1  # + 1: the RTCP port of the last RTP port


def stop_phones(*phones: Baresip) -> None:
    """Stop the phones (by PID) so their recordings are complete WAV files."""
    for phone in phones:
        phone.stop()


def recorded(phone: Baresip) -> Path:
    (path,) = phone.recordings("dec")
    return path


def assert_wan_side_is_srtp_and_tls(
    site: Site, packets: list[Packet], keys: TraceKeys, secure_ip: str = "127.0.0.1"
) -> list[bytes]:
    """Invariant 1 on a good call's capture: every UDP packet leaving the gateway's WAN address
    comes from its WAN media range and is SRTP/SRTCP that authenticates under a key the gateway
    gave the SRTP phone; read as PCMU it carries no tone; no SIP crosses the WAN in the clear.
    Returns the decrypted PCMU payloads the gateway sent on the WAN, in order."""
    wan = site.layout.wan_address
    out = flows(packets, wan)
    assert len(out) > 50, f"only {len(out)} packets from the gateway's WAN side"
    assert all(in_range(p.src[1], site.layout.wan_media) for p in out), {p.src for p in out}
    assert {p.dst[0] for p in out} == {secure_ip}
    decryptor = Decryptor(keys.gateway)
    clear: list[bytes] = []
    undecryptable = 0
    for p in out:
        plain = decryptor.unprotect(p.payload)
        if plain is None:
            undecryptable += 1
        elif not is_rtcp(plain) and plain[1] & 0x7F == 0:
            clear.append(rtp_payload(plain))
    assert undecryptable == 0, f"{undecryptable} of {len(out)} WAN packets are not our SRTP"
    assert decryptor.used, "no gateway key decrypted anything"
    rtp_out = [p for p in out if not is_rtcp(p.payload)]
    ciphertext = b"".join(p.payload[12:] for p in rtp_out)
    assert byte_entropy(ciphertext) > 7.5, byte_entropy(ciphertext)
    raw_read = pcmu_tone(p.payload[12:-10] for p in rtp_out)
    assert not raw_read.is_tone(440.0) and not raw_read.is_tone(1000.0), raw_read
    # Signalling: the gateway's WAN side talks TLS only (to kamailio), never plain SIP.
    wan_tcp = [p for p in packets if p.proto == "tcp" and wan in (p.src[0], p.dst[0])]
    assert any(p.payload[:1] in (b"\x16", b"\x17") for p in wan_tcp), "no TLS on the WAN side"
    assert not any(p.is_plain_sip() for p in packets if wan in (p.src[0], p.dst[0]))
    # Keys are for the peers only: the gateway never logs them (invariant 4).
    log = site.gw.output()
    assert keys.gateway and not any(key in log for key in keys.all)
    return clear


def lan_rtp(site: Site, packets: list[Packet], src: str, dst: str) -> list[Packet]:
    """Plain PCMU RTP from ``src`` to ``dst`` (LAN side)."""
    return [
        p
        for p in flows(packets, src, dst)
        if p.is_rtp_like() and p.payload[1] & 0x7F == 0 and not is_rtcp(p.payload)
    ]


# ---------------------------------------------------------------------------------------------
# 1 + 3: calls both ways, tones both ways, only SRTP/TLS on the WAN


@pytest.mark.matrix(peer="baresip-udp", scenario="call out")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="call out")
def test_legacy_phone_calls_srtp_phone_tones_both_ways_wan_only_srtp(site: Site) -> None:
    """The plain phone (440 Hz) calls the srtp-mand phone (1000 Hz) through the gateway and
    kamailio over TLS: each records the other's tone. The capture proves invariant 1 for the
    whole call: every packet from the gateway's WAN address is SRTP/SRTCP that authenticates
    under the key the gateway offered (decrypted it is the 440 Hz tone; read as PCMU it is
    noise) and no plain SIP crosses the WAN side; the LAN leg meanwhile is plain PCMU (440 Hz
    from the phone, 1000 Hz to it), so the capture would have seen plaintext had it leaked."""
    cap = site.capture()
    secure = site.provider_phone()
    legacy = site.legacy_phone()
    legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    legacy.wait_established(10)
    secure.wait_established(10)
    time.sleep(3.0)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    pair = answered_pair(site.gw)
    counters = media_counters(site.gw, pair)
    stop_phones(legacy, secure)
    cap.stop()

    heard_by_secure = analyse_wav(recorded(secure))
    heard_by_legacy = analyse_wav(recorded(legacy))
    assert heard_by_secure.is_tone(440.0), heard_by_secure
    assert heard_by_legacy.is_tone(1000.0), heard_by_legacy
    assert "SRTP is Enabled" in secure.output()
    assert "failed to decrypt" not in secure.output()

    packets = cap.packets()
    keys = trace_keys(secure, site.layout.wan_address)
    clear = assert_wan_side_is_srtp_and_tls(site, packets, keys)
    assert len(clear) > 100
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)

    lan = site.layout.lan_address
    from_phone = lan_rtp(site, packets, "127.0.0.1", lan)
    to_phone = lan_rtp(site, packets, lan, "127.0.0.1")
    assert pcmu_tone(rtp_payload(p.payload) for p in from_phone).is_tone(440.0)
    assert pcmu_tone(rtp_payload(p.payload) for p in to_phone).is_tone(1000.0)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters
    assert counters["drop_wrong_source"] == 0, counters
    assert counters["wan_out_packets"] > 100 and counters["lan_out_packets"] > 100, counters


@pytest.mark.matrix(peer="baresip-udp", scenario="call in")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="call in")
def test_srtp_phone_calls_legacy_extension_tones_both_ways(site: Site) -> None:
    """The other way round: the srtp-mand phone at the provider dials the legacy phone's
    extension; kamailio reaches the gateway's WAN TLS listener through the registration's
    contact token, the gateway rings the plain phone on the LAN; each side records the other's
    tone, and again only authenticated SRTP leaves the gateway's WAN address."""
    cap = site.capture()
    secure = site.provider_phone()
    legacy = site.legacy_phone()
    secure.dial(site.ns, f"sip:{LEGACY}@{site.provider_domain}")
    secure.wait_established(10)
    legacy.wait_established(10)
    time.sleep(3.0)
    secure.hangup(site.ns)
    secure.wait_terminated(5)
    legacy.wait_terminated(5)
    (started,) = gateway_events(site.gw, "started")
    assert started["from_side"] == "wan" and started["caller"] == SECURE, started
    counters = media_counters(site.gw, answered_pair(site.gw))
    stop_phones(legacy, secure)
    cap.stop()

    heard_by_legacy = analyse_wav(recorded(legacy))
    heard_by_secure = analyse_wav(recorded(secure))
    assert heard_by_legacy.is_tone(1000.0), heard_by_legacy
    assert heard_by_secure.is_tone(440.0), heard_by_secure
    assert "failed to decrypt" not in secure.output()
    clear = assert_wan_side_is_srtp_and_tls(
        site, cap.packets(), trace_keys(secure, site.layout.wan_address)
    )
    assert pcmu_tone(clear).is_tone(440.0), pcmu_tone(clear)
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters


# ---------------------------------------------------------------------------------------------
# 2: a provider without crypto is refused, nothing plain leaves


def _register_tls_contact(site: Site, user: str, contact: str) -> None:
    """REGISTER ``user`` at kamailio over TLS (verified) with an explicit Contact."""
    ctx = client_ssl_context(site.pki)
    raw = site.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(site.kam.tls_address)
    with raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        local = tls.getsockname()
        tls.sendall(
            sip_register_request(
                user=user,
                domain="127.0.0.1",
                transport="TLS",
                local=(local[0], local[1]),
                contact=contact,
            )
        )
        while True:
            reply = read_sip_message(tls, 5)
            if status_code(reply) >= 200:
                assert status_code(reply) == 200, reply
                return


@pytest.mark.matrix(peer="sipp-tls-stunnel", scenario="plaintext refused")
@pytest.mark.matrix(peer="baresip-udp", scenario="plaintext refused")
def test_provider_without_crypto_is_refused_and_nothing_plain_leaves(site: Site) -> None:
    """Fail closed, both directions, with real peers:

    - the legacy phone calls a provider-side sipp (TLS via stunnel) that answers 200 with
      plain RTP/AVP and then streams plain RTP: the gateway refuses (JSON ``refused`` event,
      488 with a Warning to the phone, which logs the 488) and ends the provider leg;
    - a provider-side baresip without mediaenc offers plain RTP/AVP to the legacy extension:
      the gateway answers it 488 and the legacy phone never rings.

    A capture on the gateway's WAN address and media ranges (BPF) shows not one packet from
    the gateway's WAN media ports, and nothing relayed to the phone on the LAN; a probe sent
    at the end proves the capture was live."""
    wan, lan = site.layout.wan_address, site.layout.lan_address
    (wlo, whi), (llo, lhi) = site.layout.wan_media, site.layout.lan_media
    cap = site.capture(
        f"udp and ((host {wan} and portrange {wlo}-{whi + 1})"
        f" or (host {lan} and portrange {llo}-{lhi + 1}))"
    )
    legacy = site.legacy_phone()
    plain_caller = site.provider_phone(PLAIN_PROVIDER_PHONE, srtp=None)

    # A provider-side UAS answering without crypto: sipp (TCP) behind stunnel (TLS).
    uas = site.procs.start(
        Sipp(
            site.tmp / "sipp",
            "uas_answer",
            transport="t1",
            name="plain-uas",
            user=PLAIN_ANSWERER,
            rtp_file=site.tones.ulaw_440,
            netns=site.ns.name,
        )
    )
    tunnel = Stunnel(site.tmp / "stunnel", site.pki, netns=site.ns.name)
    to_uas = tunnel.add_server(("127.0.0.1", uas.port))
    site.procs.start(tunnel)
    _register_tls_contact(
        site, PLAIN_ANSWERER, f"sip:{PLAIN_ANSWERER}@127.0.0.1:{to_uas.accept[1]};transport=tls"
    )

    legacy.dial(site.ns, f"sip:{PLAIN_ANSWERER}@{site.gateway_lan}")
    legacy.wait_log(r"488 Not Acceptable Here", 10)
    # The gateway ACKs the answer and ends the provider leg at once. (sipp may see the BYE
    # overtake the ACK through kamailio and then count its call as failed: not our concern.)
    uas.wait_exit(15)
    received = uas.msg_path.read_text()
    assert re.search(r"(?m)^ACK sip:", received) and re.search(r"(?m)^BYE sip:", received)

    plain_caller.dial(site.ns, f"sip:{LEGACY}@{site.provider_domain}")
    plain_caller.wait_log(r"488 Not Acceptable Here", 10)
    time.sleep(1.0)  # room for anything that would (wrongly) follow

    probe_port = wlo
    with site.udp_socket("127.0.0.1") as probe:
        probe.sendto(b"capture-probe", (wan, probe_port))
    time.sleep(0.3)
    cap.stop()

    refused = gateway_events(site.gw, "refused")
    assert len(refused) == 2, refused
    outbound, inbound = refused
    assert outbound["status"] == 488 and "plaintext RTP/AVP" in outbound["reason"], outbound
    assert inbound["status"] == 488 and "plaintext RTP/AVP" in inbound["reason"], inbound
    assert not gateway_events(site.gw, "answered")
    assert "Call established" not in legacy.output()
    assert "call: answering" not in legacy.output()  # the plain offer never reached the phone
    assert re.search(r"REQ BYE sip:\S+ from 127\.0\.0\.21", site.kam.stderr())

    packets = cap.packets()
    assert any(p.payload == b"capture-probe" for p in packets), "capture was not live"
    from_wan = [p for p in packets if p.src[0] == wan]
    assert from_wan == [], f"{len(from_wan)} packets left the gateway's WAN media ports"
    to_phone = [p for p in packets if p.src[0] == lan]
    assert to_phone == [], f"{len(to_phone)} packets relayed to the LAN phone"


# ---------------------------------------------------------------------------------------------
# 4: injection on the LAN, tampering and replay on the WAN


def _sniff_srtp(site: Site, src: str, dst: tuple[str, int], timeout: float = 5.0) -> bytes:
    """One SRTP packet on its way from ``src`` to ``dst``, read off ``lo`` (AF_PACKET)."""
    sock = site.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    with sock:
        sock.bind(("lo", 0x0800))
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                frame = sock.recv(65535)
            except TimeoutError:
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[9] != 17:
                continue
            ihl = (ip[0] & 0x0F) * 4
            dport = struct.unpack("!H", ip[ihl + 2 : ihl + 4])[0]
            payload = ip[ihl + 8 : struct.unpack("!H", ip[2:4])[0]]
            if (
                socket.inet_ntoa(ip[12:16]) == src
                and (socket.inet_ntoa(ip[16:20]), dport) == dst
                and len(payload) > 30
                and not is_rtcp(payload)
            ):
                return payload
    raise AssertionError(f"no SRTP packet from {src} to {dst} within {timeout}s")


def _pcmu_packets(count: int, ssrc: int, freq: float) -> Iterator[bytes]:
    for n in range(count):
        header = struct.pack("!BBHII", 0x80, 0, 1000 + n, 160 * n, ssrc)
        body = bytes(
            ulaw_encode_sample(round(16000 * math.sin(2 * math.pi * freq * (160 * n + i) / 8000)))
            for i in range(160)
        )
        yield header + body


@pytest.mark.matrix(peer="baresip-udp", scenario="SRTP tamper/replay")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="SRTP tamper/replay")
def test_injected_tampered_and_replayed_packets_are_dropped_and_counted(site: Site) -> None:
    """During a good call (legacy phone -> srtp phone):

    - 50 plain RTP packets (a 2000 Hz tone) sent to the gateway's LAN media port from another
      address (127.0.0.66) are dropped as ``drop_wrong_source`` (no RTP bleed, invariant 3);
    - a real SRTP packet of the provider phone, read off the wire, is sent to the gateway's WAN
      media port tampered (sequence moved ahead, a payload bit flipped) 5 times from the
      provider's address -> ``drop_auth``; replayed unchanged 5 times -> ``drop_replay``;
      sent unchanged from another address 5 times -> ``drop_wrong_source`` (invariant 2);
    - the call goes on: both phones keep hearing the other's tone to the end of the call, the
      SRTP phone never fails to decrypt, and none of the injected audio reaches anyone.
    The counts come from the gateway's ``media-closed`` log line and match exactly."""
    secure = site.provider_phone()
    legacy = site.legacy_phone()
    legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    legacy.wait_established(10)
    secure.wait_established(10)
    established = time.monotonic()
    lan_port = int(legacy.wait_log(rf"receiving from {site.layout.lan_address}:(\d+)", 5)[1])
    wan_port = int(secure.wait_log(rf"receiving from {site.layout.wan_address}:(\d+)", 5)[1])
    time.sleep(1.0)

    lan_target = (site.layout.lan_address, lan_port)
    wan_target = (site.layout.wan_address, wan_port)
    genuine = _sniff_srtp(site, "127.0.0.1", wan_target)
    seq = struct.unpack("!H", genuine[2:4])[0]
    with site.udp_socket("127.0.0.66") as intruder, site.udp_socket("127.0.0.1") as spoofer:
        for packet in _pcmu_packets(50, 0x1BAD1DEA, 2000.0):
            intruder.sendto(packet, lan_target)
            time.sleep(0.002)
        for n in range(5):
            tampered = bytearray(genuine)
            tampered[2:4] = struct.pack("!H", (seq + 500 + n) & 0xFFFF)
            tampered[20 + n] ^= 0x01
            spoofer.sendto(bytes(tampered), wan_target)
            spoofer.sendto(genuine, wan_target)  # replay
            intruder.sendto(genuine, wan_target)  # right packet, wrong address
    time.sleep(2.0)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    call_seconds = time.monotonic() - established
    counters = media_counters(site.gw, answered_pair(site.gw))
    stop_phones(legacy, secure)

    assert counters["drop_wrong_source"] == 50 + 5, counters
    assert counters["drop_auth"] == 5, counters
    assert counters["drop_replay"] == 5, counters
    assert counters["drop_malformed"] == 0, counters
    # Everything the phone sent crossed but its first packet (RFC 3550 probation of its SSRC,
    # relay.SsrcGate); nothing injected did.
    assert counters["drop_ssrc"] == 1, counters
    assert counters["wan_out_packets"] == counters["lan_in_packets"] - 50 - 1, counters
    assert "failed to decrypt" not in secure.output()

    for phone, expected in ((secure, 440.0), (legacy, 1000.0)):
        path = recorded(phone)
        whole = analyse_wav(path)
        assert whole.is_tone(expected), (phone.name, whole)
        # baresip records what it decodes: audio kept arriving until the hangup...
        assert whole.seconds > call_seconds - 1.0, (phone.name, whole.seconds, call_seconds)
        # ...and the last second, well after the injections, is still the far end's tone.
        tail = analyse_wav(path, skip_seconds=whole.seconds - 1.1)
        assert tail.is_tone(expected), (phone.name, tail)


# ---------------------------------------------------------------------------------------------
# 5: hold and resume


@pytest.mark.matrix(peer="baresip-udp", scenario="hold/resume")
@pytest.mark.matrix(peer="baresip-tls-srtp", scenario="hold/resume")
def test_hold_and_resume_keep_audio_both_ways(site: Site) -> None:
    """Hold and resume from both ends of a call (legacy phone -> srtp phone), with baresip's
    ``hold``/``resume`` (re-INVITEs with sendonly/recvonly, then sendrecv), first from the
    LAN phone, then from the provider phone. After each resume the capture shows, from the
    gateway, the 1000 Hz tone in plain PCMU to the legacy phone and SRTP that decrypts (key
    from the SDP) to the 440 Hz tone toward the srtp phone; the srtp phone never fails to
    decrypt and the gateway drops nothing for authentication or replay.

    Limitation: neither baresip 1.0 nor the gateway changes its SDES key on these re-INVITEs
    (baresip keeps its key; the gateway keeps its own unless the operator asks for a re-key,
    which has no API yet), so this proves hold/resume with the same keys, ROC carried on.
    Decryption accepts any key from the trace, so a re-key would be checked the same way."""
    cap = site.capture("udp")
    secure = site.provider_phone()
    legacy = site.legacy_phone()
    legacy.dial(site.ns, f"sip:{SECURE}@{site.gateway_lan}")
    legacy.wait_established(10)
    secure.wait_established(10)
    time.sleep(1.5)
    marks: list[tuple[str, float]] = []
    for holder in (legacy, secure):
        assert holder.command(site.ns, "hold").get("ok") is True
        time.sleep(1.5)
        assert holder.command(site.ns, "resume").get("ok") is True
        marks.append((holder.name, time.time()))
        time.sleep(2.5)
    legacy.hangup(site.ns)
    legacy.wait_terminated(5)
    secure.wait_terminated(5)
    counters = media_counters(site.gw, answered_pair(site.gw))
    stop_phones(legacy, secure)
    cap.stop()

    directions = set(re.findall(r"a=(sendonly|recvonly)", secure.stdout()))
    assert directions == {"sendonly", "recvonly"}, directions  # both holds were signalled
    assert "failed to decrypt" not in secure.output()
    assert counters["drop_auth"] == counters["drop_replay"] == 0, counters

    packets = cap.packets()
    keys = trace_keys(secure, site.layout.wan_address)
    wan, lan = site.layout.wan_address, site.layout.lan_address
    decryptor = Decryptor(keys.gateway)
    to_secure = [
        (p.time, decryptor.unprotect(p.payload))
        for p in flows(packets, wan, "127.0.0.1")
        if not is_rtcp(p.payload)
    ]
    assert all(plain is not None for _, plain in to_secure), "WAN packets not under our keys"
    to_legacy = [(p.time, p.payload) for p in lan_rtp(site, packets, lan, "127.0.0.1")]
    for who, resumed in marks:
        window = (resumed + 0.3, resumed + 2.3)
        toward_secure = [
            rtp_payload(plain)
            for t, plain in to_secure
            if plain is not None and window[0] <= t < window[1] and plain[1] & 0x7F == 0
        ]
        toward_legacy = [rtp_payload(pl) for t, pl in to_legacy if window[0] <= t < window[1]]
        assert len(toward_secure) > 50 and len(toward_legacy) > 50, (
            who,
            len(toward_secure),
            len(toward_legacy),
        )
        heard_secure = pcmu_tone(toward_secure)
        heard_legacy = pcmu_tone(toward_legacy)
        assert heard_secure.is_tone(440.0), (who, "to srtp phone", heard_secure)
        assert heard_legacy.is_tone(1000.0), (who, "to legacy phone", heard_legacy)
