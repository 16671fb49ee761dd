"""RTP for the lab peers: packets, paced tone playback, and the arrival log both ends keep.

The demo measures the gateway from the outside: the sender notes when it sent each sequence
number, the receiver when that sequence number arrived, on the same clock (one process, one
``time.perf_counter``). One-way delay is the difference; interarrival jitter follows RFC 3550
§6.4.1 and the code of its Appendix A.8. A direct loopback run of the same code is the
baseline the gateway's figures are compared with.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from gateway.lab.audio import FRAME_SAMPLES, tone_frames

#: PCMU (RFC 3551 §6).
PCMU = 0
#: Packet interval of the lab peers.
PTIME = 0.020

_RTP_MIN = 12

clock = time.perf_counter


@dataclass(frozen=True)
class RtpPacket:
    """The fields of a plain RTP packet the lab looks at (RFC 3550 §5.1)."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def build_rtp(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, *, marker: bool = False
) -> bytes:
    """A version 2 RTP packet without CSRCs, extension or padding."""
    header = bytes(
        (
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            (seq >> 8) & 0xFF,
            seq & 0xFF,
        )
    )
    return header + timestamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload


def parse_rtp(data: bytes) -> RtpPacket | None:
    """Parse a plain RTP packet; None if it does not hold together as one.

    CSRCs, a header extension and padding are walked so the payload is exact; anything that
    runs past the end of the datagram is not RTP.
    """
    if len(data) < _RTP_MIN or data[0] & 0xC0 != 0x80:
        return None
    payload_type = data[1] & 0x7F
    if 72 <= payload_type <= 76:
        return None  # RTCP sender/receiver reports and friends (RFC 5761 §4)
    offset = _RTP_MIN + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extension
        if offset + 4 > len(data):
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding: the last byte counts it
        end -= data[-1]
    if offset > end:
        return None
    return RtpPacket(
        payload_type=payload_type,
        marker=bool(data[1] & 0x80),
        seq=int.from_bytes(data[2:4], "big"),
        timestamp=int.from_bytes(data[4:8], "big"),
        ssrc=int.from_bytes(data[8:12], "big"),
        payload=bytes(data[offset:end]),
    )


@dataclass
class MediaLog:
    """One direction of a stream as one end saw it: what was sent and what arrived."""

    #: Sequence number -> send time (sender's log).
    sent: dict[int, float] = field(default_factory=dict)
    #: Sequence number -> first arrival time (receiver's log).
    arrived: dict[int, float] = field(default_factory=dict)
    #: Sequence number -> payload, for the audio check.
    payloads: dict[int, bytes] = field(default_factory=dict)
    duplicates: int = 0

    def record_arrival(self, packet: RtpPacket, at: float) -> None:
        if packet.seq in self.arrived:
            self.duplicates += 1
            return
        self.arrived[packet.seq] = at
        self.payloads[packet.seq] = packet.payload

    def audio(self) -> bytes:
        """Received payloads in sequence order (the seq space never wraps in a lab call)."""
        return b"".join(self.payloads[s] for s in sorted(self.payloads))


@dataclass(frozen=True)
class Transit:
    """One-way delay and jitter of one direction, from a sender's and a receiver's log."""

    sent: int
    arrived: int
    #: One-way delays in seconds, of packets both logs know.
    delays: tuple[float, ...]
    #: RFC 3550 interarrival jitter, seconds.
    jitter: float

    def quantile(self, q: float) -> float:
        """Delay quantile (0..1) in seconds; 0.0 without data."""
        if not self.delays:
            return 0.0
        ordered = sorted(self.delays)
        # Nearest rank: a reported p99 is a delay some packet really had.
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]


def transit(sent: dict[int, float], arrived: dict[int, float]) -> Transit:
    """Delays and jitter of the packets in both logs.

    Jitter is RFC 3550 §6.4.1's estimator, J += (|D| - J) / 16, with D the change in transit
    time between consecutive arrivals. Transit is taken against the actual send time rather
    than the RTP timestamp: both ends share a clock here, and the sender's own scheduling error
    (asyncio sleeps are not exact) is not something the gateway added.
    """
    common = sorted((at, seq) for seq, at in arrived.items() if seq in sent)
    delays = tuple(at - sent[seq] for at, seq in common)
    jitter = 0.0
    previous: float | None = None
    for delay in delays:
        if previous is not None:
            jitter += (abs(delay - previous) - jitter) / 16.0
        previous = delay
    return Transit(sent=len(sent), arrived=len(arrived), delays=delays, jitter=jitter)


class TonePlayer:
    """Sends a tone as PCMU RTP every 20 ms, logging each sequence number's send time.

    ``protect`` turns the RTP packet into what goes on the wire (SRTP for the provider, the
    identity for the plain phone). Pacing follows an absolute schedule so a late wake-up does
    not push every later packet back.
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        freq: float,
        log: MediaLog,
        *,
        protect: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._send = send
        self._protect = protect
        self._frames = tone_frames(freq)
        self.log = log
        self.ssrc = secrets.randbits(32)
        # Random start (RFC 3550 §5.1), low enough that a lab call never wraps.
        self._seq = secrets.randbelow(0x4000)
        self._timestamp = secrets.randbits(31)
        self.errors = 0

    async def play(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        count = max(1, round(seconds / PTIME))
        start = loop.time()
        for n in range(count):
            delay = start + n * PTIME - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send_one(marker=n == 0)

    def send_one(self, *, marker: bool = False) -> None:
        packet = build_rtp(
            PCMU, self._seq, self._timestamp, self.ssrc, next(self._frames), marker=marker
        )
        try:
            wire = self._protect(packet) if self._protect is not None else packet
        except Exception:  # a protect failure is counted, the tone goes on
            self.errors += 1
        else:
            self.log.sent[self._seq] = clock()
            self._send(wire)
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF


class DatagramEndpoint(asyncio.DatagramProtocol):
    """A UDP socket that hands each datagram and its arrival time to a callback."""

    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int], float], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: cast, not check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Timestamp first: anything done before it would count as network delay.
        self._on_datagram(data, addr, clock())

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the far end is not up yet: nothing to do

    @property
    def local(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_endpoint(
    address: str, port: int, on_datagram: Callable[[bytes, tuple[str, int], float], None]
) -> DatagramEndpoint:
    """Bind a UDP endpoint on ``address:port`` (0 lets the OS pick)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: DatagramEndpoint(on_datagram), local_addr=(address, port)
    )
    return protocol


async def open_rtp_pair(
    address: str, on_datagram: Callable[[bytes, tuple[str, int], float], None]
) -> tuple[DatagramEndpoint, DatagramEndpoint]:
    """Bind an even RTP port and the odd RTCP port above it (RFC 3550 §11), both watched."""
    for _ in range(50):
        rtp = await open_endpoint(address, 0, on_datagram)
        port = rtp.local[1]
        if port % 2 == 0 and port < 65535:
            try:
                rtcp = await open_endpoint(address, port + 1, on_datagram)
            except OSError:
                rtp.close()
                continue
            return rtp, rtcp
        rtp.close()
    raise OSError(f"no free even/odd UDP port pair on {address}")
