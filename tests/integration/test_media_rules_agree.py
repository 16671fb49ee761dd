"""The media worker's two packet loops checked against each other (RFC 3550, RFC 3711, RFC 5761).

The worker relays RTP either through its pure-Python loop (every datagram through
:class:`~gateway.media.relay.RelayStream`, the reference) or through the C fast path
(``gateway.media._fastpath``), which serves the steady state of a stream in C and hands
everything else back to the same Python rules. The packet rules so exist twice; this module
replays the same packet sequences through both and requires the same outcome.

How: two real :class:`~gateway.media.worker._Worker` objects run in this process, one with the
C engine and one without, each with its own stream, loopback sockets and peer sockets (phone,
provider, an intruder; distinct 127.0.0.0/8 addresses as in test_media_worker.py), the same
keys and the same specs. A sequence is a list of datagrams, each from a named peer to a named
gateway socket. Each datagram is sent, the gateway socket is waited on until it is readable,
and the worker runs exactly one loop round (``_fast_round`` / ``_python_round``, the bodies of
its two run loops). The C round reports the time it read; the Python worker's clock hands the
same time to its round, so arrival times (and with them jitter) are the same on both sides.

What is compared, per datagram (or, in the second mode, only once at the end of the sequence,
so that how often the C counters are folded into Python cannot hide or cause a difference):

- every datagram the gateway sent: which peer socket got it, from which gateway socket (LAN or
  WAN, RTP or RTCP), and its exact bytes (SRTP with fixed keys is deterministic, so the
  ciphertext must match byte for byte);
- every :class:`~gateway.media.control.StreamCounters` field as QueryStats reports it: packets
  and bytes in and out, each drop reason (wrong source, malformed, SRTP authentication and
  replay failures, plain RTCP on the WAN, no peer), last-packet times, loss and jitter;
- the whole RFC 3550 A.3/A.8 reception state of both directions (highest sequence, base,
  cycles, received, loss carried over, transit, jitter), which is finer than the counters.

Sequences run for both directions (LAN RTP → WAN SRTP, WAN SRTP → LAN RTP) and every suite:
in order, loss (right after latching too), reordering, duplicates, the 16-bit sequence wrap
(ROC), SSRC change, SSRC floods (the SSRCs a direction keeps, the ones it drops, slots given
up and SSRCs retired, with a shortened idle time too), wrong source address and port, truncated
and malformed headers, bad tags, RTCP muxed on the RTP port (by the provider and by a phone),
datagrams of 0 to 65507 bytes; then a seeded random corpus of
mutated packets (bit flips, truncation, splicing, replays), whose seed and packet index a
failure names (``MEDIA_RULES_SEED`` picks another seed), and the stored seed corpus under
tests/data/rtp_corpus (``python -m tests.integration.test_media_rules_agree --write-corpus``
rewrites it from :func:`seed_corpus`).

With CI set the C extension must be built (CI builds it); elsewhere these tests are skipped
without it.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pylibsrtp
import pytest

from gateway.media import worker as worker_module
from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.relay import (
    LAN_RTCP,
    LAN_RTP,
    MAX_DATAGRAM,
    SSRC_IDLE_S,
    SSRC_RETIRED_MAX,
    WAN_RTCP,
    WAN_RTP,
    Address,
)
from gateway.media.suites import SrtpSuite
from gateway.media.worker import _snapshot, _Stream, _Worker
from tests.integration.test_media_worker import (
    INTRUDER_IP,
    LAN,
    PHONE_IP,
    PROVIDER_IP,
    TIMEOUT,
    WAN,
    free_ports,
)

SEED = os.environ.get("MEDIA_RULES_SEED", "media-rules-1")
CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "rtp_corpus"
SSRC = 0x5EED0001
OTHER_SSRC = 0x0BADCAFE
PORT_NAMES = {LAN_RTP: "lan_rtp", LAN_RTCP: "lan_rtcp", WAN_RTP: "wan_rtp", WAN_RTCP: "wan_rtcp"}
#: Peer sockets of a rig and their addresses; "_alt" is the same host on another port.
PEER_IPS = {
    "phone": PHONE_IP,
    "phone_rtcp": PHONE_IP,
    "phone_alt": PHONE_IP,
    "intruder": INTRUDER_IP,
    "provider": PROVIDER_IP,
    "provider_rtcp": PROVIDER_IP,
    "provider_alt": PROVIDER_IP,
}


def require_fastpath() -> None:
    if worker_module._fastpath is None:
        if os.environ.get("CI"):
            pytest.fail("the C fast path was not built (CI builds it: setup.py build_ext)")
        pytest.skip("the C fast path is not built here (setup.py build_ext --inplace)")


@pytest.fixture(autouse=True)
def _fastpath_built() -> None:
    require_fastpath()


# -- packets ------------------------------------------------------------------------------


def rtp(
    seq: int,
    *,
    ssrc: int = SSRC,
    payload: bytes | int = 160,
    ts: int | None = None,
    pt: int = 0,
    marker: bool = False,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    csrc_count: int = 0,
) -> bytes:
    """An RTP packet (RFC 3550 §5.1); ``payload`` as bytes or a length of a fixed pattern."""
    if isinstance(payload, int):
        payload = bytes((seq + i) & 0xFF for i in range(payload))
    first = version << 6 | padding << 5 | extension << 4 | csrc_count
    stamp = (seq * 160 if ts is None else ts) & 0xFFFFFFFF
    return struct.pack("!BBHII", first, pt | marker << 7, seq & 0xFFFF, stamp, ssrc) + payload


def rtcp_rr(ssrc: int = SSRC, lost: int = 3, jitter: int = 40) -> bytes:
    """An RTCP receiver report with one report block (RFC 3550 §6.4.2)."""
    block = struct.pack("!IIIIII", OTHER_SSRC, lost & 0xFFFFFF, 1000, jitter, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block


def keying(suite: SrtpSuite, salt: int) -> SrtpKeying:
    """Fixed keys: the same bytes on both rigs make their SRTP output comparable."""
    return SrtpKeying(
        suite=suite.value, master=bytes((salt + 7 * i) & 0xFF for i in range(suite.master_length))
    )


def tx_keying(suite: SrtpSuite) -> SrtpKeying:
    return keying(suite, 0x11)


def rx_keying(suite: SrtpSuite) -> SrtpKeying:
    return keying(suite, 0x5A)


class Provider:
    """The provider's side of ``wan_rx``: protects what it sends to the gateway."""

    def __init__(self, suite: SrtpSuite, k: SrtpKeying | None = None) -> None:
        k = rx_keying(suite) if k is None else k
        policy = pylibsrtp.Policy(
            key=k.master,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=suite.libsrtp_profile,
        )
        self._session = pylibsrtp.Session(policy)

    @classmethod
    def keyed(cls, suite: SrtpSuite, k: SrtpKeying) -> Provider:
        return cls(suite, k)

    def srtp(self, packet: bytes) -> bytes:
        return self._session.protect(packet)

    def srtcp(self, packet: bytes) -> bytes:
        return self._session.protect_rtcp(packet)


# -- sequences ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One datagram: from a peer socket (a key of PEER_IPS) to a gateway socket index; or,
    with ``change`` set, an UpdateStream of the spec instead (a key of SPEC_CHANGES)."""

    sender: str
    port: int
    data: bytes
    note: str = ""
    change: str = ""


def change(name: str) -> Step:
    return Step("", LAN_RTP, b"", name, name)


#: Spec updates a re-INVITE brings (RFC 4568 §7.1.4 re-key, a peer moving, keys withdrawn):
#: each takes the current spec, the rig's peer addresses and the suite.
SPEC_CHANGES: dict[str, Callable[[StreamSpec, dict[str, Address], SrtpSuite], StreamSpec]] = {
    "re-key to the provider": lambda spec, _, suite: msgspec.structs.replace(
        spec, wan_tx=keying(suite, 0x23)
    ),
    "re-key from the provider": lambda spec, _, suite: msgspec.structs.replace(
        spec, wan_rx=keying(suite, 0x77)
    ),
    "same keys again": lambda spec, _, suite: msgspec.structs.replace(
        spec, wan_tx=tx_keying(suite), wan_rx=rx_keying(suite), direction="sendonly"
    ),
    "provider moves": lambda spec, peers, _: msgspec.structs.replace(
        spec, provider_addr=peers["provider_alt"]
    ),
    "phone moves": lambda spec, peers, _: msgspec.structs.replace(
        spec, phone_addr=peers["phone_alt"]
    ),
    "keys withdrawn": lambda spec, _, __: msgspec.structs.replace(spec, wan_tx=None, wan_rx=None),
}


@dataclass(frozen=True)
class Sequence:
    name: str
    steps: list[Step]
    mux: bool = False
    plaintext: bool = False
    #: How long a kept SSRC must be silent before a new one may take its slot; 0 lets every
    #: new SSRC take the slot of the one heard longest ago (slots given up at every change).
    ssrc_idle: float = SSRC_IDLE_S


FLOOD_SSRC = 0x20000000


def rtcp_types() -> list[tuple[str, bytes]]:
    """RTCP packets a phone that multiplexes may send on its RTP port (RFC 5761 §4)."""
    sender_info = struct.pack("!IIIII", 0xE0000000, 0, 1600, 10, 1600)
    return [
        ("SR", struct.pack("!BBHI", 0x80, 200, 6, SSRC) + sender_info),
        ("RR", rtcp_rr(lost=5)),
        ("SDES", struct.pack("!BBHI", 0x81, 202, 2, SSRC) + b"\x01\x02ab\x00\x00"),
        ("BYE", struct.pack("!BBHI", 0x81, 203, 1, SSRC)),
        ("APP", struct.pack("!BBHI", 0x80, 204, 2, SSRC) + b"name"),
        ("8-byte RR", struct.pack("!BBHI", 0x80, 201, 1, SSRC)),
        ("RR cut to 6", rtcp_rr()[:6]),
    ]


def phone(data: bytes, note: str = "", sender: str = "phone", port: int = LAN_RTP) -> Step:
    return Step(sender, port, data, note)


def provider(data: bytes, note: str = "", sender: str = "provider", port: int = WAN_RTP) -> Step:
    return Step(sender, port, data, note)


def malformed_headers() -> list[tuple[str, bytes]]:
    """Headers the rules must refuse or libsrtp must reject: cut short, wrong version, CSRC
    list or extension running past the end, padding length beyond the packet."""
    good = rtp(40)
    cases = [(f"truncated to {n}", good[:n]) for n in range(12)]
    cases += [(f"version {v}", rtp(41, version=v)) for v in (0, 1, 3)]
    cases += [
        ("15 CSRCs in a 20-byte packet", rtp(42, csrc_count=15, payload=8)),
        ("CSRC count one past the end", rtp(43, csrc_count=3, payload=8)),
        ("extension header cut", rtp(44, extension=True, payload=2)),
        ("extension length past the end", rtp(45, extension=True, payload=b"\xbe\xde\xff\xff")),
        ("padding length 0", rtp(46, padding=True, payload=b"\x00" * 20)),
        ("padding past the end", rtp(47, padding=True, payload=b"\x01" * 19 + b"\xff")),
        ("padding bit, empty payload", rtp(48, padding=True, payload=b"")),
    ]
    return cases


#: Datagram sizes around every limit: the fixed header, libsrtp's 1500-byte buffer less its
#: trailer, 1500, the relay's MAX_DATAGRAM and the largest UDP datagram over IPv4.
SIZES = (12, 13, 100, 172, 1000, 1356, 1357, 1400, 1490, 1500, 1501, 2000)
BIG = (MAX_DATAGRAM - 1, MAX_DATAGRAM, MAX_DATAGRAM + 1, 3000, 9000, 65507)


def lan_sequences() -> list[Sequence]:
    """Plain RTP from the phone, protected toward the provider."""
    seqs = [
        Sequence("in order", [phone(rtp(s)) for s in range(1, 21)]),
        Sequence(
            "loss gaps", [phone(rtp(s)) for s in (1, 2, 3, 7, 8, 20, 21, 500, 501, 4000, 4001)]
        ),
        # The latching packet is handled in Python, the rest by the C lane: a gap right after
        # it was measured from the second packet by the C path.
        Sequence("loss right after latching", [phone(rtp(s)) for s in (100, 103, 104, 110)]),
        Sequence("reordering", [phone(rtp(s)) for s in (1, 2, 4, 3, 5, 8, 6, 7, 9, 2, 10)]),
        Sequence("duplicates", [phone(rtp(s)) for s in (1, 2, 2, 3, 3, 3, 4, 1, 5)]),
        Sequence("sequence wrap", [phone(rtp(s)) for s in [*range(65530, 65536), *range(6)]]),
        Sequence(
            "SSRC change",
            [phone(rtp(s)) for s in range(1, 6)]
            + [phone(rtp(s, ssrc=OTHER_SSRC)) for s in range(9000, 9005)]
            + [phone(rtp(s)) for s in range(6, 9)],
        ),
        Sequence(
            "wrong source address and port",
            [
                phone(rtp(1)),
                phone(rtp(2), sender="intruder"),
                phone(rtp(3)),
                phone(rtp(4), sender="phone_alt"),
                phone(rtp(5), sender="intruder"),
                phone(rtp(6)),
            ],
        ),
        Sequence(
            "latched from another port of the phone",
            [phone(rtp(1), sender="phone_alt"), phone(rtp(2)), phone(rtp(3), sender="phone_alt")],
        ),
        Sequence(
            "malformed headers",
            [phone(rtp(1))]
            + [
                step
                for note, data in malformed_headers()
                for step in (phone(data, note), phone(rtp(100 + len(data)), "good after"))
            ],
        ),
        Sequence(
            "malformed before latching",
            [phone(data, note) for note, data in malformed_headers()] + [phone(rtp(1))],
        ),
        Sequence(
            "RTCP on the RTCP port and on the RTP port",
            [
                phone(rtp(0), "on probation"),
                phone(rtp(1)),
                phone(rtcp_rr(), port=LAN_RTCP, sender="phone_rtcp"),
                phone(rtcp_rr(lost=9)),
                phone(rtp(2)),
                phone(b"\x80\xc9\x00", "short RTCP", port=LAN_RTCP, sender="phone_rtcp"),
            ],
        ),
        Sequence(
            "sizes",
            [phone(rtp(1))]
            + [phone(rtp(2 + i, payload=n - 12), f"{n} bytes") for i, n in enumerate(SIZES)]
            + [phone(rtp(100 + i, payload=n - 12), f"{n} bytes") for i, n in enumerate(BIG)]
            + [phone(rtp(200))],
        ),
        Sequence(
            "re-INVITEs mid-stream",
            [phone(rtp(s)) for s in range(1, 5)]
            + [change("same keys again")]
            + [phone(rtp(s)) for s in range(5, 8)]
            + [change("re-key to the provider")]
            + [phone(rtp(s)) for s in (8, 9, 12)]
            + [change("provider moves")]
            + [phone(rtp(s)) for s in (13, 14)]
            + [change("phone moves")]
            + [phone(rtp(15)), phone(rtp(16), sender="phone_alt"), phone(rtp(18))]
            + [change("keys withdrawn")]
            + [phone(rtp(s)) for s in (19, 20)],
        ),
        Sequence(
            "plaintext downgrade with oversized datagrams",
            [phone(rtp(1, payload=n - 12), f"{n} bytes") for n in (172, *BIG, 1500)],
            plaintext=True,
        ),
        Sequence(
            "RTCP muxed by the phone",
            [phone(rtp(1)), phone(rtp(2))]
            + [s for note, data in rtcp_types() for s in (phone(data, note), phone(rtp(3)))]
            + [phone(rtp(s)) for s in (4, 5, 7)],
        ),
        Sequence(
            "RTCP muxed by the phone before latching",
            [phone(rtcp_rr()), phone(rtp(1)), phone(rtcp_rr(lost=2)), phone(rtp(2))],
        ),
        Sequence("SSRC flood", lan_flood(150)),
        Sequence(
            "SSRC flood on the RTCP port",
            [phone(rtp(1))]
            + [
                step
                for i in range(60)
                for step in (
                    phone(rtcp_rr(ssrc=FLOOD_SSRC + i), port=LAN_RTCP, sender="phone_rtcp"),
                    phone(rtp(2 + i)),
                )
            ],
        ),
        Sequence("SSRC flood before latching", lan_flood(40, first=False)),
        Sequence("SSRC slots given up at every change", ssrc_churn(phone), ssrc_idle=0.0),
        Sequence(
            "SSRC flood past the retired limit",
            lan_flood(SSRC_RETIRED_MAX + 20),
            ssrc_idle=0.0,
        ),
    ]
    return seqs


def lan_flood(count: int, first: bool = True) -> list[Step]:
    """The call's RTP with ``count`` packets of new SSRCs from the phone among it."""
    steps = [phone(rtp(1))] if first else []
    for i in range(count):
        steps.append(phone(rtp(i, ssrc=FLOOD_SSRC + i), "flood"))
        if i % 10 == 9:
            steps.append(phone(rtp(2 + i // 10)))
    return steps


def ssrc_churn(
    sender: Callable[[bytes, str], Step], protect: Callable[[bytes], bytes] = bytes
) -> list[Step]:
    """SSRCs coming and going (with a shortened idle time): each new one takes a slot, the
    one heard longest ago is retired, and a retired one that comes back is dropped."""
    a, b, c, d = 0xA0, 0xB0, 0xC0, 0xD0
    order = [(a, 1), (a, 2), (b, 1), (a, 3), (b, 2), (c, 1), (a, 4), (b, 3), (c, 2), (d, 1)]
    order += [(c, 3), (a, 5), (d, 2), (b, 4), (d, 3), (c, 4)]
    return [sender(protect(rtp(seq, ssrc=ssrc)), f"SSRC {ssrc:#x}") for ssrc, seq in order]


def wan_sequences(suite: SrtpSuite) -> list[Sequence]:
    """SRTP from the provider, unprotected toward the phone."""

    def srtp_run(seqs: list[int], **kwargs: Any) -> list[bytes]:
        p = Provider(suite)
        return [p.srtp(rtp(s, **kwargs)) for s in seqs]

    out = [
        Sequence("in order", [provider(d) for d in srtp_run(list(range(1, 21)))]),
        Sequence(
            "loss gaps",
            [provider(d) for d in srtp_run([1, 2, 3, 7, 8, 20, 21, 500, 501, 4000, 4001])],
        ),
        Sequence(
            "loss right after latching", [provider(d) for d in srtp_run([100, 103, 104, 110])]
        ),
    ]
    p = Provider(suite)
    packets = {s: p.srtp(rtp(s)) for s in range(1, 11)}
    out.append(
        Sequence("reordering", [provider(packets[s]) for s in (1, 2, 4, 3, 5, 8, 6, 7, 9, 10)])
    )
    out.append(
        Sequence(
            "duplicates (replays)",
            [provider(packets[s]) for s in (1, 2, 2, 3, 3, 3, 4, 1, 5)],
        )
    )
    p = Provider(suite)
    out.append(
        Sequence(
            "sequence wrap (ROC)",
            [provider(p.srtp(rtp(s))) for s in [*range(65530, 65536), *range(6)]],
        )
    )
    p = Provider(suite)
    out.append(
        Sequence(
            "SSRC change",
            [provider(p.srtp(rtp(s))) for s in range(1, 6)]
            + [provider(p.srtp(rtp(s, ssrc=OTHER_SSRC))) for s in range(9000, 9005)]
            + [provider(p.srtp(rtp(s))) for s in range(6, 9)],
        )
    )
    p = Provider(suite)
    first, second, third, fourth = (p.srtp(rtp(s)) for s in range(1, 5))
    out.append(
        Sequence(
            "wrong source address and port",
            [
                provider(first, sender="intruder", note="valid SRTP, wrong host, before latch"),
                provider(first),
                provider(second, sender="intruder"),
                provider(third, sender="provider_alt"),
                provider(fourth),
            ],
        )
    )
    p = Provider(suite)
    good = [p.srtp(rtp(s)) for s in range(1, 60)]
    steps = [provider(good[0])]
    i = 1
    for note, data in malformed_headers():
        steps += [provider(data, note), provider(good[i], "good after")]
        i += 1
    for cut in (12, 13, len(good[i]) - 1):
        steps += [provider(good[i][:cut], f"SRTP cut to {cut}"), provider(good[i + 1])]
        i += 2
    out.append(Sequence("malformed headers", steps))
    p = Provider(suite)
    tampered = []
    for s in range(1, 9):
        packet = bytearray(p.srtp(rtp(s)))
        if s % 2 == 0:
            packet[-1 if s % 4 else 20] ^= 0x40  # the tag, or a payload byte under it
        tampered.append(provider(bytes(packet), "bad tag" if s % 2 == 0 else ""))
    out.append(Sequence("bad tags", tampered))
    p = Provider(suite)
    out.append(
        Sequence(
            "RTCP muxed on the RTP port",
            [
                provider(p.srtp(rtp(1))),
                provider(p.srtcp(rtcp_rr()), "SRTCP muxed"),
                provider(rtcp_rr(), "plain RTCP muxed"),
                provider(p.srtp(rtp(2))),
                provider(p.srtcp(rtcp_rr(lost=1)), "SRTCP on the RTCP port", port=WAN_RTCP),
                provider(rtcp_rr(), "plain RTCP on the RTCP port", port=WAN_RTCP),
                provider(p.srtp(rtp(3))),
            ],
            mux=True,
        )
    )
    p = Provider(suite)
    sized = [provider(p.srtp(rtp(1)))]
    for i, n in enumerate(SIZES):
        try:
            sized.append(provider(p.srtp(rtp(2 + i, payload=n - 12)), f"{n}+trailer bytes"))
        except (pylibsrtp.Error, ValueError):  # beyond what libsrtp protects: junk of that size
            sized.append(provider(rtp(2 + i, payload=n - 12), f"{n} bytes unprotected"))
    sized += [provider(rtp(100 + i, payload=n - 12), f"{n} bytes") for i, n in enumerate(BIG)]
    sized.append(provider(p.srtp(rtp(200))))
    out.append(Sequence("sizes", sized))
    p = Provider(suite)
    rekeyed = Provider.keyed(suite, keying(suite, 0x77))
    steps = [provider(p.srtp(rtp(s))) for s in range(1, 5)]
    steps += [change("same keys again")] + [provider(p.srtp(rtp(s))) for s in (5, 6, 9)]
    steps += [change("re-key from the provider"), provider(p.srtp(rtp(10)), "old key")]
    steps += [provider(rekeyed.srtp(rtp(s))) for s in (11, 12, 14)]
    steps += [change("provider moves"), provider(rekeyed.srtp(rtp(15)), "from the old port")]
    steps += [provider(rekeyed.srtp(rtp(s)), sender="provider_alt") for s in (16, 17)]
    steps += [change("phone moves")] + [provider(rekeyed.srtp(rtp(s))) for s in (18, 19)]
    steps += [provider(rekeyed.srtp(rtp(s)), sender="provider_alt") for s in (20, 22)]
    steps += [change("keys withdrawn"), provider(rekeyed.srtp(rtp(23)))]
    out.append(Sequence("re-INVITEs mid-stream", steps))
    p = Provider(suite)
    steps = [provider(p.srtp(rtp(1)))]
    for i in range(120):
        flood = p.srtp(rtp(i, ssrc=FLOOD_SSRC + i))
        if i % 3 == 0:  # forged: a bad tag
            flood = flood[:-1] + bytes([flood[-1] ^ 1])
        steps.append(provider(flood, "flood"))
        if i % 10 == 9:
            steps.append(provider(p.srtp(rtp(2 + i // 10))))
    out.append(Sequence("SSRC flood", steps))
    p = Provider(suite)
    churn = ssrc_churn(provider, p.srtp)
    forged = bytearray(p.srtp(rtp(9, ssrc=0xE0)))
    forged[-1] ^= 1
    churn += [provider(bytes(forged), "new SSRC, bad tag"), provider(p.srtp(rtp(6, ssrc=0xC0)))]
    out.append(Sequence("SSRC slots given up at every change", churn, ssrc_idle=0.0))
    return out


def mixed_sequence(suite: SrtpSuite) -> Sequence:
    """Both directions interleaved, RTCP included (what a real call looks like)."""
    p = Provider(suite)
    steps = []
    for s in range(1, 13):
        steps.append(phone(rtp(s)))
        steps.append(provider(p.srtp(rtp(1000 + s, ssrc=OTHER_SSRC))))
        if s % 4 == 0:
            steps.append(phone(rtcp_rr(), port=LAN_RTCP, sender="phone_rtcp"))
            steps.append(provider(p.srtcp(rtcp_rr(OTHER_SSRC)), port=WAN_RTCP))
    return Sequence("both directions", steps)


# -- the random corpus ---------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[str, bytes]:
    """One mutation of a valid packet: bit flips, a cut, a splice with another, growth."""
    kind = rng.randrange(5)
    if kind == 0:
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(len(out) * 8) if rng.random() < 0.5 else rng.randrange(96)
            out[bit // 8 % len(out)] ^= 1 << (bit % 8)
        return "bit flips", bytes(out)
    if kind == 1:
        return "truncated", data[: rng.randrange(len(data))]
    if kind == 2:
        cut = rng.randrange(len(data) + 1)
        return "spliced", data[:cut] + other[rng.randrange(len(other) + 1) :]
    if kind == 3:
        first = rng.choice((0x00, 0x40, 0xC0, 0x90, 0xAF, 0xBF, 0xA0))
        return "first byte", bytes([first]) + data[1:]
    size = rng.choice((1357, 1500, 1501, MAX_DATAGRAM, MAX_DATAGRAM + 1, 4000))
    return "grown", (data + bytes(rng.getrandbits(8) for _ in range(64)) * 70)[:size]


def random_corpus(seed: str, suite: SrtpSuite, direction: str, count: int) -> list[Step]:
    """``count`` datagrams, mostly valid, a fifth of them mutated, some from the wrong host,
    some replayed or held back and sent late; deterministic for a given seed."""
    rng = random.Random(f"{seed}/{suite.value}/{direction}")
    p = Provider(suite)
    seq = rng.randrange(65536)
    ssrc = SSRC
    sent: list[bytes] = []
    held: list[bytes] = []
    steps: list[Step] = []
    lan = direction == "lan"
    while len(steps) < count:
        roll = rng.random()
        if roll < 0.02:
            ssrc = rng.getrandbits(32)
        seq = (seq + (rng.randint(2, 40) if roll < 0.08 else 1)) & 0xFFFF
        packet = rtp(seq, ssrc=ssrc, payload=rng.choice((0, 20, 160, 160, 160, 320)))
        valid = packet if lan else p.srtp(packet)
        note = f"seq {seq}"
        if rng.random() < 0.04:
            held.append(valid)
            continue
        if held and rng.random() < 0.3:
            valid, note = held.pop(0), "late"
        elif sent and rng.random() < 0.04:
            valid, note = rng.choice(sent), "replayed"
        sent = [*sent[-50:], valid]
        data = valid
        if rng.random() < 0.2:
            how, data = mutate(rng, valid, rng.choice(sent))
            note += f", {how}"
        roll = rng.random()
        if roll < 0.03:
            if lan:
                data, note = rtcp_rr(lost=rng.randrange(100)), "RTCP"
            else:
                data, note = (p.srtcp(rtcp_rr()), "SRTCP") if roll < 0.02 else (rtcp_rr(), "RTCP")
        sender = "phone" if lan else "provider"
        roll = rng.random()
        if roll < 0.03:
            sender = "intruder"
        elif roll < 0.05:
            sender += "_alt"
        steps.append(Step(sender, LAN_RTP if lan else WAN_RTP, data, note))
    return steps


# -- the seed corpus on disk ---------------------------------------------------------------


@dataclass(frozen=True)
class CorpusEntry:
    """A stored file: one packet or a sequence (each packet as a 2-byte length, then it)."""

    name: str
    direction: str  # "lan": plain RTP from the phone; "wan": SRTP from the provider
    suite: SrtpSuite
    packets: list[bytes]
    about: str


def frame(packets: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in packets)


def unframe(data: bytes) -> list[bytes]:
    packets = []
    while data:
        n = int.from_bytes(data[:2], "big")
        packets.append(data[2 : 2 + n])
        data = data[2 + n :]
    return packets


SUITE_TAGS = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: "aes80",
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: "aes32",
    SrtpSuite.AEAD_AES_128_GCM: "gcm128",
    SrtpSuite.AEAD_AES_256_GCM: "gcm256",
}


def seed_corpus() -> list[CorpusEntry]:
    """What tests/data/rtp_corpus holds (the files are written from this, and checked)."""
    aes = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    entries = [
        CorpusEntry("lan-rtp-valid.bin", "lan", aes, [rtp(1)], "one valid G.711 RTP packet"),
        CorpusEntry("lan-rtp-header-only.bin", "lan", aes, [rtp(2, payload=0)], "12-byte RTP"),
        CorpusEntry("lan-rtcp-rr.bin", "lan", aes, [rtcp_rr()], "an RTCP RR on the RTP port"),
    ]
    for i, (note, data) in enumerate(malformed_headers()):
        if i % 3 == 0 or i >= 12:
            slug = note.replace(" ", "-").replace(",", "")
            entries.append(
                CorpusEntry(f"lan-malformed-{slug}.bin", "lan", aes, [data], f"RTP, {note}")
            )
    entries += [
        CorpusEntry(
            "lan-seq-wrap.seq",
            "lan",
            aes,
            [rtp(s) for s in [*range(65533, 65536), *range(3)]],
            "RTP across the sequence wrap",
        ),
        CorpusEntry(
            "lan-seq-loss-reorder-dup.seq",
            "lan",
            aes,
            [rtp(s) for s in (1, 4, 3, 3, 5, 2, 6)],
            "RTP with a gap, a late packet and a duplicate",
        ),
    ]
    for suite, tag in SUITE_TAGS.items():
        p = Provider(suite)
        first = p.srtp(rtp(1))
        bad = bytearray(p.srtp(rtp(2)))
        bad[-1] ^= 1
        entries += [
            CorpusEntry(
                f"wan-{tag}-srtp-valid.bin", "wan", suite, [first], f"SRTP ({suite.value})"
            ),
            CorpusEntry(
                f"wan-{tag}-srtp-bad-tag.bin", "wan", suite, [bytes(bad)], "SRTP, last byte flipped"
            ),
            CorpusEntry(
                f"wan-{tag}-seq-wrap-replay.seq",
                "wan",
                suite,
                [p.srtp(rtp(s)) for s in (65534, 65535, 0, 1)] + [first],
                "SRTP across the wrap (ROC 0 to 1), then a replay of the first packet",
            ),
            CorpusEntry(
                f"wan-{tag}-srtcp-muxed.bin", "wan", suite, [p.srtcp(rtcp_rr())], "SRTCP (RR)"
            ),
        ]
    entries.append(
        CorpusEntry("wan-plain-rtcp.bin", "wan", aes, [rtcp_rr()], "plain RTCP where SRTCP belongs")
    )
    return entries


def corpus_readme(entries: list[CorpusEntry]) -> str:
    lines = [
        "# RTP/SRTP seed corpus",
        "",
        "Packets for the media path's fuzzing and for tests/integration/test_media_rules_agree.py,",
        "which replays each through both packet loops of the media worker and checks that the",
        "stored files are what its `seed_corpus()` builds. Rewrite them with",
        "`python -m tests.integration.test_media_rules_agree --write-corpus`.",
        "",
        "- `*.bin`: one datagram, raw.",
        "- `*.seq`: a sequence: each datagram as a 2-byte big-endian length, then its bytes.",
        "- `lan-*`: plain RTP/RTCP as a phone sends it to the gateway's LAN RTP port.",
        "- `wan-<suite>-*`: SRTP/SRTCP as the provider sends it to the WAN RTP port, protected",
        "  with a fixed test key (not a secret): master key and salt byte i = (0x5A + 7 i) mod",
        "  256, as many bytes as the suite's key and salt (30 for AES-CM, 28 for AES-128-GCM,",
        "  44 for AES-256-GCM). aes80/aes32 = AES_CM_128_HMAC_SHA1_80/32, gcm128/gcm256 =",
        "  AEAD_AES_128_GCM/AEAD_AES_256_GCM.",
        "",
        "| file | what |",
        "| --- | --- |",
    ]
    lines += [f"| `{e.name}` | {e.about} |" for e in entries]
    return "\n".join(lines) + "\n"


def write_corpus() -> None:
    entries = seed_corpus()
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    for e in entries:
        body = e.packets[0] if e.name.endswith(".bin") else frame(e.packets)
        (CORPUS_DIR / e.name).write_bytes(body)
    (CORPUS_DIR / "README.md").write_text(corpus_readme(entries))


# -- the rigs -------------------------------------------------------------------------------


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


Output = tuple[str, str, bytes]  # (peer that got it, gateway socket it left from, bytes)


@dataclass
class Observation:
    outputs: list[Output]
    counters: dict[str, Any]
    reception: tuple[tuple[int, ...], tuple[int, ...]]
    #: Each direction's kept SSRCs with their last-heard times, and whether it may retire more.
    ssrcs: tuple[Any, Any]


@dataclass
class Rig:
    """One worker in this process (C engine or not) with one stream and its peer sockets."""

    fast: bool
    sequence: Sequence
    suite: SrtpSuite
    now: float = 0.0
    peers: dict[str, socket.socket] = field(default_factory=dict)
    #: Datagrams that reached an active C lane (it may still have handed them back).
    offered_to_c: int = 0

    def __post_init__(self) -> None:
        self.control, self._other = socket.socketpair()
        self.worker = _Worker(
            self.control,
            lan_address=LAN,
            wan_address=WAN,
            inactivity_timeout=60.0,
            dscp=0,
            fast_path=self.fast,
            clock=lambda: self.now,
            ssrc_idle=self.sequence.ssrc_idle,
        )
        for name, ip in PEER_IPS.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # Room for a whole sequence's output when it is collected at the end only.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((ip, 0))
            sock.setblocking(False)
            self.peers[name] = sock
        self.peer_names = {s.getsockname(): n for n, s in self.peers.items()}
        self.addresses: dict[str, Address] = {n: s.getsockname() for n, s in self.peers.items()}
        address = self.addresses
        with free_ports() as (lan_port, wan_port):
            spec = StreamSpec(
                lan_port=lan_port,
                wan_port=wan_port,
                phone_addr=address["phone"],
                phone_rtcp_addr=address["phone_rtcp"],
                provider_addr=address["provider"],
                provider_rtcp_addr=address["provider_rtcp"],
                wan_rtcp_mux=self.sequence.mux,
                wan_tx=None if self.sequence.plaintext else tx_keying(self.suite),
                wan_rx=None if self.sequence.plaintext else rx_keying(self.suite),
                wan_plaintext=self.sequence.plaintext,
            )
            error = self.worker._open("agree", 0, spec, 0.0)
        assert error is None, error
        self.stream: _Stream = self.worker._calls["agree"].streams[0]
        assert (self.stream.lanes is not None) == self.fast
        self.gateway_names = {
            s.getsockname(): PORT_NAMES[i] for i, s in enumerate(self.stream.sockets)
        }

    def close(self) -> None:
        self.worker._close_call("agree")
        self.worker._epoll.close()
        for sock in (*self.peers.values(), self.control, self._other):
            sock.close()

    def deliver(self, step: Step, now: float | None) -> float:
        """Send one datagram and run one loop round; returns the round's time."""
        target = self.stream.sockets[step.port]
        self.peers[step.sender].sendto(step.data, target.getsockname())
        assert readable(target, TIMEOUT), "the datagram did not arrive"
        if self.fast:
            lanes = self.stream.lanes
            assert lanes is not None
            lane = {LAN_RTP: lanes[0], WAN_RTP: lanes[1]}.get(step.port)
            self.offered_to_c += lane is not None and lane.active
            now = self.worker._fast_round(0, -1)
        else:
            assert now is not None
            self.now = now
            self.worker._python_round(0.0, -1)
        assert not readable(target, 0), "more than one datagram per round"
        return now

    def out_total(self) -> int:
        c = _snapshot(self.stream)
        return c.lan_out_packets + c.wan_out_packets

    def collect(self, count: int) -> list[Output]:
        """The ``count`` datagrams the gateway counted as sent (waited for), and any extra
        already there; per peer in arrival order."""
        got: list[Output] = []
        socks = list(self.peers.values())
        while len(got) < count:
            ready = select.select(socks, [], [], TIMEOUT)[0]
            assert ready, f"counted {count} datagrams out, {len(got)} arrived"
            for sock in ready:
                got.append(self._read(sock))
        for sock in select.select(socks, [], [], 0)[0]:
            got.append(self._read(sock))
        return sorted(got, key=lambda o: o[0])  # stable: the order per peer stays

    def _read(self, sock: socket.socket) -> Output:
        data, source = sock.recvfrom(70000)
        return self.peer_names[sock.getsockname()], self.gateway_names[source], data

    def observe(self, outputs: list[Output]) -> Observation:
        counters = msgspec.structs.asdict(_snapshot(self.stream))
        relay = self.stream.relay
        return Observation(
            outputs,
            counters,
            (relay.lan_reception.state(), relay.wan_reception.state()),
            (relay.lan_ssrcs.state(), relay.wan_ssrcs.state()),
        )

    def run(self, times: list[float] | None, every: bool) -> tuple[list[float], list[Observation]]:
        """Replay the sequence; observations after every datagram, or once at the end."""
        seen: list[Observation] = []
        stamps: list[float] = []
        sent = 0
        for i, step in enumerate(self.sequence.steps):
            if step.change:
                relay = self.stream.relay
                relay.update(SPEC_CHANGES[step.change](relay.spec, self.addresses, self.suite))
                stamps.append(stamps[-1] if stamps else 0.0)
            else:
                stamps.append(self.deliver(step, None if times is None else times[i]))
            if every:
                total = self.out_total()
                seen.append(self.observe(self.collect(total - sent)))
                sent = total
        if not every:
            seen.append(self.observe(self.collect(self.out_total())))
        return stamps, seen


def describe(step: Step) -> str:
    if step.change:
        return f"update: {step.change}"
    head = step.data[:24].hex()
    return f"{step.sender} → {PORT_NAMES[step.port]}, {len(step.data)} bytes {head} ({step.note})"


def compare(sequence: Sequence, suite: SrtpSuite, *, every: bool = True, seed: str = "") -> int:
    """Replay ``sequence`` through the C loop and the Python loop; fail at the first datagram
    after which they differ, naming it. Returns how many datagrams reached an active C lane."""
    fast = Rig(True, sequence, suite)
    slow = Rig(False, sequence, suite)
    try:
        times, c_seen = fast.run(None, every)
        _, py_seen = slow.run(times, every)
    finally:
        fast.close()
        slow.close()
    for i, (c_obs, py_obs) in enumerate(zip(c_seen, py_seen, strict=True)):
        if c_obs == py_obs:
            continue
        index = i if every else len(sequence.steps) - 1
        where = f"{sequence.name} [{suite.value}]" + (f" seed {seed!r}" if seed else "")
        what = describe(sequence.steps[index]) if every else "(compared at the end only)"
        lines = [f"{where}: the loops differ after packet {index}: {what}"]
        for name in c_obs.counters:
            if c_obs.counters[name] != py_obs.counters[name]:
                lines.append(
                    f"  {name}: C {c_obs.counters[name]!r}, Python {py_obs.counters[name]!r}"
                )
        if c_obs.reception != py_obs.reception:
            lines.append(f"  reception: C {c_obs.reception}, Python {py_obs.reception}")
        if c_obs.ssrcs != py_obs.ssrcs:
            lines.append(f"  kept SSRCs: C {c_obs.ssrcs}, Python {py_obs.ssrcs}")
        if c_obs.outputs != py_obs.outputs:
            lines.append(f"  sent: C {short(c_obs.outputs)}, Python {short(py_obs.outputs)}")
        pytest.fail("\n".join(lines))
    return fast.offered_to_c


def short(outputs: list[Output]) -> list[tuple[str, str, int, str]]:
    return [(peer, via, len(data), data[:16].hex()) for peer, via, data in outputs]


# -- tests ----------------------------------------------------------------------------------

SUITES = list(SrtpSuite)
SUITE_IDS = [SUITE_TAGS[s] for s in SUITES]


def cases() -> Iterator[Any]:
    aes = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    for suite in SUITES:
        for seq in lan_sequences():
            if seq.plaintext and suite is not aes:
                continue  # no keys: the suite plays no part
            yield pytest.param(seq, suite, id=f"lan-{SUITE_TAGS[suite]}-{seq.name}")
        for seq in wan_sequences(suite):
            yield pytest.param(seq, suite, id=f"wan-{SUITE_TAGS[suite]}-{seq.name}")
        yield pytest.param(mixed_sequence(suite), suite, id=f"both-{SUITE_TAGS[suite]}")


@pytest.mark.parametrize(("sequence", "suite"), list(cases()))
@pytest.mark.parametrize("every", [True, False], ids=["per-packet", "at-end"])
def test_both_loops_agree(sequence: Sequence, suite: SrtpSuite, every: bool) -> None:
    offered = compare(sequence, suite, every=every)
    # Only a stream without keys never reaches C (plaintext stays on the Python path).
    assert (offered == 0) == sequence.plaintext


@pytest.mark.parametrize("direction", ["lan", "wan"])
@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_both_loops_agree_on_a_random_corpus(suite: SrtpSuite, direction: str) -> None:
    steps = random_corpus(SEED, suite, direction, 1500)
    offered = compare(Sequence(f"random corpus ({direction})", steps), suite, seed=SEED)
    assert offered > len(steps) // 2


def test_stored_seed_corpus_is_current_and_both_loops_agree_on_it() -> None:
    entries = seed_corpus()
    stored = {p.name for p in CORPUS_DIR.iterdir()}
    assert stored == {e.name for e in entries} | {"README.md"}, "rewrite with --write-corpus"
    assert (CORPUS_DIR / "README.md").read_text() == corpus_readme(entries)
    for e in entries:
        raw = (CORPUS_DIR / e.name).read_bytes()
        packets = [raw] if e.name.endswith(".bin") else unframe(raw)
        assert packets == e.packets, f"{e.name} differs from seed_corpus()"
    for suite in SUITES:
        for direction, first in (("lan", phone(rtp(7000))), ("wan", None)):
            steps = [] if first is None else [first]
            for e in entries:
                if e.direction == direction and (direction == "lan" or e.suite is suite):
                    steps += [
                        phone(p, e.name) if direction == "lan" else provider(p, e.name)
                        for p in e.packets
                    ]
            compare(Sequence(f"stored corpus ({direction})", steps), suite)


# -- absolute checks of the rules that differed (RFC 3550 A.3) -------------------------------


@pytest.mark.parametrize("direction", ["lan", "wan"])
@pytest.mark.parametrize("fast", [True, False], ids=["c-fast-path", "python-loop"])
def test_loss_right_after_latching_is_counted(direction: str, fast: bool) -> None:
    """The latching packet (always handled in Python) counts before the C lane takes over:
    seq 100, then 103 and 104, is 2 lost (RFC 3550 A.3: expected 5, received 3)."""
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    p = Provider(suite)
    if direction == "wan":
        steps = [provider(p.srtp(rtp(s))) for s in (100, 103, 104)]
    else:  # 99: the phone's first packet, on probation (RFC 3550 A.1)
        steps = [phone(rtp(s)) for s in (99, 100, 103, 104)]
    rig = Rig(fast, Sequence("loss right after latching", steps), suite)
    try:
        for i, step in enumerate(steps):
            rig.deliver(step, float(i + 1))
        counters = _snapshot(rig.stream)
        lanes = rig.stream.lanes
        if fast:
            assert lanes is not None
            lane = lanes[0 if direction == "lan" else 1]
            assert lane.active, "the C lane served the packets after the latch"
        relay = rig.stream.relay
        reception = relay.lan_reception if direction == "lan" else relay.wan_reception
        assert reception.lost == 2
        assert (counters.lost_lan_in, counters.lost_wan_in) == (
            (2, 0) if direction == "lan" else (0, 2)
        )
        rig.collect(3)
    finally:
        rig.close()


@pytest.mark.parametrize("direction", ["lan", "wan"])
@pytest.mark.parametrize("fast", [True, False], ids=["c-fast-path", "python-loop"])
def test_ssrc_flood_is_dropped_and_counted(
    direction: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RTP with a new SSRC per packet from the peer's own address: the call's packets go
    through and libsrtp makes no stream for the flood. From the phone no flood SSRC leaves
    probation (RFC 3550 A.1): each comes back from the C lane to Python while a slot is free
    and is dropped there without taking the lane's state back and handing it over again. From
    the provider (SRTP: the tag is the validation) one flood SSRC takes the free second slot
    and the rest are dropped and counted by the C lane itself."""
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    p = Provider(suite)
    wrap = p.srtp if direction == "wan" else bytes
    send = provider if direction == "wan" else phone
    steps = [send(wrap(rtp(s)), "call") for s in (1, 2)]
    steps += [send(wrap(rtp(3 + i, ssrc=FLOOD_SSRC + i)), "flood") for i in range(200)]
    steps += [send(wrap(rtp(s)), "call") for s in (3, 4)]
    rig = Rig(fast, Sequence("flood", steps), suite)
    # Count what reaches the Python rules on the WAN socket (on the LAN socket a wrapped
    # handler would hide the phone's RTP handler from the worker's shortcut for the flood).
    fd = rig.stream.sockets[WAN_RTP].fileno()
    sock, handler, sockets, served = rig.worker._handlers[fd]
    in_python: list[bytes] = []

    def counted(data: bytes, source: Address, now: float) -> Any:
        in_python.append(data)
        return handler(data, source, now)

    rig.worker._handlers[fd] = (sock, counted, sockets, served)
    # Count the exchanges of state with the C lanes (one per full Python turn).
    exchanges: list[None] = []
    hand_over = _Stream._hand_over

    def counting(stream: _Stream) -> None:
        exchanges.append(None)
        hand_over(stream)

    monkeypatch.setattr(_Stream, "_hand_over", counting)
    try:
        for i, step in enumerate(steps):
            if i == 2:
                before_flood = len(exchanges)
            rig.deliver(step, float(i + 1) / 1000)
            if i == 201:
                flood_exchanges = len(exchanges) - before_flood
        counters = _snapshot(rig.stream)
        relay = rig.stream.relay
        if direction == "lan":
            assert flood_exchanges == 0
            assert counters.drop_ssrc == 1 + 200
            assert (counters.wan_out_packets, counters.lan_out_packets) == (3, 0)
            assert relay.lan_ssrcs.ssrcs == [SSRC]
        else:
            # On the fast path Python saw the latching packet and the SSRC it admitted, only.
            assert len(in_python) == (2 if fast else len(steps))
            assert counters.drop_ssrc == 199
            assert (counters.wan_out_packets, counters.lan_out_packets) == (0, 5)
            assert relay.wan_ssrcs.ssrcs == [SSRC, FLOOD_SSRC]
        context = relay._tx if direction == "lan" else relay._rx
        assert context is not None
        with pytest.raises(pylibsrtp.Error):
            context._session.remove_stream(FLOOD_SSRC + 1)  # no stream was made for it
        rig.collect(3 if direction == "lan" else 5)
    finally:
        rig.close()


@pytest.mark.parametrize("fast", [True, False], ids=["c-fast-path", "python-loop"])
def test_datagrams_over_max_datagram_are_dropped_not_cut(fast: bool) -> None:
    """A datagram longer than the relay's limit is dropped as malformed, never relayed cut to
    the receive size (the plaintext downgrade relayed its first 2048 bytes)."""
    steps = [phone(rtp(0), "on probation"), phone(rtp(1)), phone(rtp(2, payload=2990))]
    steps.append(phone(rtp(3, payload=MAX_DATAGRAM - 12)))
    rig = Rig(fast, Sequence("oversize", steps, plaintext=True), SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    try:
        for i, step in enumerate(steps):
            rig.deliver(step, float(i + 1))
        counters = _snapshot(rig.stream)
        assert counters.drop_malformed == 1
        assert counters.wan_out_packets == 2
        assert counters.lan_in_bytes == 2 * 172 + (MAX_DATAGRAM + 1) + MAX_DATAGRAM
        assert [o[2] for o in rig.collect(2)] == [steps[1].data, steps[3].data]
    finally:
        rig.close()


def test_c_lane_keeps_libsrtp_inside_its_receive_buffer() -> None:
    """However long a packet Python's limit would allow, the C lane never lets libsrtp append
    its trailer past the end of its receive buffer: a lane configured with a huge ``max_len``
    still drops a MAX_DATAGRAM-byte packet (counted malformed, as the Python path counts it)."""
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    rig = Rig(True, Sequence("clamp", []), suite)
    try:
        rig.deliver(phone(rtp(0)), None)  # on probation
        rig.deliver(phone(rtp(1)), None)
        fast = rig.stream.relay.fast_lan()
        assert fast is not None and rig.stream.lanes is not None
        native = fast[2].native()
        assert native is not None
        ctx, fn, _, owner = native
        lane = rig.stream.lanes[0]
        provider_port = rig.addresses["provider"][1]
        out_fd = rig.stream.sockets[WAN_RTP].fileno()
        ips = socket.inet_aton(PHONE_IP), socket.inet_aton(PROVIDER_IP)
        lane.configure(out_fd, *ips, provider_port, ctx, fn, 1 << 30, owner)
        rig.deliver(phone(rtp(2, payload=MAX_DATAGRAM - 12)), None)
        counters = _snapshot(rig.stream)
        assert (counters.wan_out_packets, counters.drop_malformed) == (1, 1)
        assert len(rig.collect(1)) == 1
    finally:
        rig.close()


def main(argv: list[str]) -> int:
    if argv == ["--write-corpus"]:
        write_corpus()
        print(f"wrote {len(seed_corpus())} files and README.md to {CORPUS_DIR}")
        return 0
    print(
        "usage: python -m tests.integration.test_media_rules_agree --write-corpus", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
