"""What the HA lab's bridges saw: invariant 1 on the WAN bridge, tones and audio gaps per call.

Captures come from tshark on the lab's bridges (tests/interop/ha_lab.py), so they hold every
frame between the gateways and the provider (WAN) or the phones (LAN), whichever gateway sent
it. The SRTP phones' SIP trace gives the SDES keys the gateways offered (RFC 4568), so each
WAN packet is checked by decrypting it with libsrtp: a packet that authenticates under a key
the gateway gave was protected by the gateway (RFC 3711 §3.4); nothing else may leave it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.interop.gateway_process import GatewayProcess
from tests.interop.ha_lab import LAN_VIP, NODE_IP, PHONES_IP, PROVIDER_IP, WAN_VIP
from tests.interop.peers import Baresip, Packet, byte_entropy
from tests.interop.test_media import (
    Decryptor,
    TraceKeys,
    is_rtcp,
    pcmu_tone,
    rtp_payload,
    trace_keys,
)

#: A call's stream counts only with this many packets in the window (50 = one second).
MIN_PACKETS = 50


def phone_keys(phones: Iterable[Baresip]) -> TraceKeys:
    """The keys in the SRTP phones' SIP traces: the gateways' and their own."""
    keys = [trace_keys(p, WAN_VIP) for p in phones]
    return TraceKeys(
        tuple(k for t in keys for k in t.gateway), tuple(k for t in keys for k in t.peer)
    )


def gateway_addresses() -> set[str]:
    return {WAN_VIP, *(wan for _lan, wan in NODE_IP.values())}


def assert_wan_bridge_secure(
    packets: Sequence[Packet], phones: Iterable[Baresip], gateways: Iterable[GatewayProcess]
) -> TraceKeys:
    """Invariant 1 over the whole capture: every UDP packet a gateway sent on the WAN bridge
    is SRTP/SRTCP under a key a gateway gave (none plain, none from elsewhere), its payload
    looks like ciphertext, no SIP crosses the bridge in the clear, the signalling is TLS, and
    no gateway logged a key. Returns the keys (for the tone checks)."""
    keys = phone_keys(phones)
    assert keys.gateway, "no SDES key from a gateway in the SRTP phones' traces"
    ours = gateway_addresses()
    out = [p for p in packets if p.proto == "udp" and p.src[0] in ours and p.payload]
    assert len(out) > MIN_PACKETS, f"only {len(out)} UDP packets from the gateways on the WAN"
    assert {p.dst[0] for p in out} == {PROVIDER_IP}, {p.dst for p in out}
    decryptor = Decryptor(keys.gateway)
    bad = [p for p in out if decryptor.unprotect(p.payload) is None]
    assert not bad, f"{len(bad)} of {len(out)} WAN packets from the gateways are not our SRTP"
    rtp = [p for p in out if not is_rtcp(p.payload)]
    assert byte_entropy(b"".join(p.payload[12:] for p in rtp)) > 7.5
    plain_sip = [p for p in packets if p.is_plain_sip()]
    assert not plain_sip, f"{len(plain_sip)} plain SIP packets on the WAN bridge"
    tcp = [p for p in packets if p.proto == "tcp" and p.payload and ours & {p.src[0], p.dst[0]}]
    assert tcp and all(p.payload[:1] in (b"\x14", b"\x15", b"\x16", b"\x17") for p in tcp), (
        "a gateway's TCP payload on the WAN bridge that is not a TLS record"
    )
    for gw in gateways:
        log = gw.output()
        assert not any(key in log for key in keys.all), f"{gw.name} logged an SDES key"
    return keys


@dataclass(frozen=True)
class Stream:
    """One direction of one call as the bridge saw it: (capture time, PCMU payload)."""

    port: int  # the receiving phone's RTP port
    packets: list[tuple[float, bytes]]

    def after(self, since: float) -> list[bytes]:
        return [payload for t, payload in self.packets if t > since]

    def gap(self, start: float, end: float) -> float | None:
        """The longest silence between two packets of this stream that overlaps the window
        [start, end] (the failure and the takeover); None when the stream did not run on
        both sides of ``start`` (a call made after the drill, one ended before it)."""
        times = sorted(t for t, _ in self.packets)
        if not times or times[0] > start or times[-1] < start:
            return None
        gaps = [b - a for a, b in itertools.pairwise(times) if b > start and a < end]
        return max(gaps, default=None)


def to_phones(lan: Sequence[Packet]) -> list[Stream]:
    """Plain PCMU from the LAN virtual address to the plain phones, one stream per port."""
    groups: dict[int, list[tuple[float, bytes]]] = {}
    for p in lan:
        if (
            p.proto == "udp"
            and p.src[0] == LAN_VIP
            and p.dst[0] == PHONES_IP
            and p.is_rtp_like()
            and p.payload[1] & 0x7F == 0
        ):
            groups.setdefault(p.dst[1], []).append((p.time, rtp_payload(p.payload)))
    return [Stream(port, pkts) for port, pkts in sorted(groups.items())]


def to_provider(wan: Sequence[Packet], keys: TraceKeys) -> list[Stream]:
    """SRTP from the gateways to the SRTP phones, decrypted, one stream per port."""
    decryptor = Decryptor(keys.gateway)
    groups: dict[int, list[tuple[float, bytes]]] = {}
    for p in wan:
        if p.proto != "udp" or p.src[0] not in gateway_addresses() or not p.payload:
            continue
        plain = decryptor.unprotect(p.payload)
        if plain is not None and not is_rtcp(plain) and plain[1] & 0x7F == 0:
            groups.setdefault(p.dst[1], []).append((p.time, rtp_payload(plain)))
    return [Stream(port, pkts) for port, pkts in sorted(groups.items())]


def tones_after(
    wan: Sequence[Packet], lan: Sequence[Packet], keys: TraceKeys, since: float, *, calls: int
) -> None:
    """After ``since`` each of ``calls`` calls carries 1000 Hz to its plain phone (LAN) and
    SRTP that decrypts to 440 Hz toward its SRTP phone (WAN)."""
    heard = [s for s in to_phones(lan) if len(s.after(since)) > MIN_PACKETS]
    assert len(heard) >= calls, {s.port: len(s.after(since)) for s in to_phones(lan)}
    for s in heard:
        tone = pcmu_tone(s.after(since))
        assert tone.is_tone(1000.0), (s.port, tone)
    sent = [s for s in to_provider(wan, keys) if len(s.after(since)) > MIN_PACKETS]
    assert len(sent) >= calls, {s.port: len(s.after(since)) for s in to_provider(wan, keys)}
    for s in sent:
        tone = pcmu_tone(s.after(since))
        assert tone.is_tone(440.0), (s.port, tone)


def wan_leaks(packets: Sequence[Packet], keys: TraceKeys) -> dict[str, int]:
    """What :func:`assert_wan_bridge_secure` forbids, counted (for the benchmark's report):
    UDP packets from a gateway that are not SRTP under a gateway's key, plain SIP packets, and
    a gateway's TCP payloads that are not TLS records."""
    ours = gateway_addresses()
    decryptor = Decryptor(keys.gateway)
    out = [p for p in packets if p.proto == "udp" and p.src[0] in ours and p.payload]
    tcp = [p for p in packets if p.proto == "tcp" and p.payload and ours & {p.src[0], p.dst[0]}]
    return {
        "gateway_udp_packets": len(out),
        "not_srtp": sum(1 for p in out if decryptor.unprotect(p.payload) is None),
        "plain_sip": sum(1 for p in packets if p.is_plain_sip()),
        "tcp_not_tls": sum(
            1 for p in tcp if p.payload[:1] not in (b"\x14", b"\x15", b"\x16", b"\x17")
        ),
    }
