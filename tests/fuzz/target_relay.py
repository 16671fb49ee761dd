"""Fuzz target 4: the Python relay loop, ``RelayStream``, with real SRTP (RFC 3550, RFC 3711,
RFC 5761).

An input is a stream setup (suite, RTCP mux, keyed or plaintext downgrade or no keys yet)
followed by datagrams to its four ports, from the phone, the provider or an intruder, each
either raw (mutated RTP/RTCP, tests/data/rtp_corpus) or protected by the test itself with the
provider's key (so authentic SRTP reaches the deep path), plus clock steps and spec updates.
Invariants per datagram:

- no exception; exactly one outcome: a Forward with its ``*_out_packets`` counter up by one, or
  None with exactly one drop counter up by one; ``*_in_packets`` up by one;
- a Forward leaves from the right side: LAN input to a WAN socket, WAN input to a LAN socket;
- never plaintext out of a WAN socket: while the stream has outbound keys, every LAN→WAN
  payload unprotects (an independent libsrtp session with the same key, in step with the
  sender) to exactly the datagram the phone sent; without keys and without the operator's
  downgrade nothing goes to the WAN at all;
- from the WAN only what the provider's key protected is relayed, each packet at most once
  (no forgery, no replay), and it arrives as the plaintext that was protected.
"""

from __future__ import annotations

import pylibsrtp

from gateway.media.control import SrtpKeying, StreamCounters, StreamSpec
from gateway.media.relay import LAN_RTCP, LAN_RTP, WAN_RTCP, WAN_RTP, RelayStream
from gateway.media.suites import SrtpSuite
from tests.fuzz.engine import Violation, frame_ops, parse_ops
from tests.fuzz.seeds import CORPUS_SUITES, rtp_packets

FRAMED = True
TOKENS = [
    b"\x80\x00",
    b"\x80\xc8",
    b"\x80\xc9",
    b"\x81\xc9",
    b"\xa0",
    b"\x90",
    b"\x8f",
    b"\xbe\xde",
]

SUITES = list(SrtpSuite)
PHONE = ("127.0.7.10", 8000)
PROVIDER = ("127.0.7.30", 30000)
INTRUDER = ("127.0.7.66", 9999)
SOURCES = (PHONE, (PHONE[0], 8001), PROVIDER, (PROVIDER[0], 30001), INTRUDER)

SETUP, LAN_RAW, WAN_RAW, WAN_SRTP, WAN_SRTCP, TICK, UPDATE = range(7)

_DROPS = tuple(f for f in StreamCounters.__struct_fields__ if f.startswith("drop_"))


def _keying(suite: SrtpSuite, salt: int) -> SrtpKeying:
    return SrtpKeying(suite.value, bytes((salt + 7 * i) % 256 for i in range(suite.master_length)))


def _session(keying: SrtpKeying, inbound: bool) -> pylibsrtp.Session:
    suite = SrtpSuite(keying.suite)
    kind = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=keying.master, ssrc_type=kind, srtp_profile=suite.libsrtp_profile)
    )


def seeds() -> list[bytes]:
    corpus = rtp_packets()
    lan = [p for name, ps in corpus.items() if name.startswith("lan-") for p in ps]
    out = []
    for index, suite in enumerate(SUITES):
        infix = next(k for k, v in CORPUS_SUITES.items() if v == suite.value)
        wan = [p for name, ps in corpus.items() if name.startswith(f"wan-{infix}") for p in ps]
        for mux in (0, 1):
            ops = [(SETUP, bytes([index, mux, 0]))]
            ops += [(LAN_RAW, bytes([0]) + p) for p in lan]
            ops += [(WAN_SRTP, bytes([2]) + p) for p in lan if len(p) >= 12]
            ops += [(WAN_SRTCP, bytes([2 + (1 - mux)]) + corpus["lan-rtcp-rr"][0])]
            ops += [(WAN_RAW, bytes([2]) + p) for p in wan]
            ops += [(TICK, b"\x10"), (UPDATE, b"\x01"), (LAN_RAW, bytes([0]) + lan[0])]
            out.append(frame_ops(ops))
    out.append(
        frame_ops(
            [
                (SETUP, b"\x00\x00\x01"),
                *[(LAN_RAW, b"\x00" + p) for p in lan[:4]],
                (WAN_RAW, b"\x02" + lan[0]),
            ]
        )
    )
    out.append(frame_ops([(SETUP, b"\x00\x00\x02"), *[(LAN_RAW, b"\x00" + p) for p in lan[:4]]]))
    return out


class Run:
    def __init__(self, setup: bytes) -> None:
        setup = setup + b"\x00\x00\x00"
        self.suite = SUITES[setup[0] % len(SUITES)]
        mode = setup[2] % 3  # 0 keyed, 1 plaintext downgrade, 2 no keys yet
        self.tx = _keying(self.suite, 1) if mode == 0 else None
        self.rx = _keying(self.suite, 0xD2) if mode == 0 else None
        self.spec = StreamSpec(
            lan_port=40000,
            wan_port=41000,
            phone_addr=PHONE,
            provider_addr=PROVIDER,
            wan_rtcp_mux=bool(setup[1] & 1),
            wan_tx=self.tx,
            wan_rx=self.rx,
            wan_plaintext=mode == 1,
        )
        self.stream = RelayStream(self.spec, ssrc_idle=0.5)
        self.now = 1.0
        self.provider = _session(self.rx, False) if self.rx else None
        self.checker = _session(self.tx, True) if self.tx else None
        self.authentic: dict[bytes, bytes] = {}
        self.relayed: set[bytes] = set()
        self.srtcp_index = 0

    def deliver(self, port: int, data: bytes, source: tuple[str, int]) -> None:
        stream = self.stream
        before = StreamCounters(
            **{f: getattr(stream.counters, f) for f in StreamCounters.__struct_fields__}
        )
        method = {
            LAN_RTP: stream.from_lan_rtp,
            LAN_RTCP: stream.from_lan_rtcp,
            WAN_RTP: stream.from_wan_rtp,
            WAN_RTCP: stream.from_wan_rtcp,
        }[port]
        result = method(data, source, self.now)
        after = stream.counters
        from_lan = port in (LAN_RTP, LAN_RTCP)
        inbound = "lan_in_packets" if from_lan else "wan_in_packets"
        if getattr(after, inbound) != getattr(before, inbound) + 1:
            raise Violation(f"{inbound} not counted once")
        drops = sum(getattr(after, f) - getattr(before, f) for f in _DROPS)
        outs = (
            after.wan_out_packets - before.wan_out_packets,
            after.lan_out_packets - before.lan_out_packets,
        )
        if result is None:
            if drops != 1 or outs != (0, 0):
                raise Violation(f"drop counted {drops} times, outputs {outs}")
            return
        if drops != 0 or sum(outs) != 1:
            raise Violation(f"forward with {drops} drops and outputs {outs}")
        payload, _dest, sock = result
        if from_lan:
            if sock not in (WAN_RTP, WAN_RTCP) or outs != (1, 0):
                raise Violation(f"LAN datagram forwarded to socket {sock}")
            # The relay takes RTCP port datagrams, and RTCP a phone muxes, as RTCP (RFC 5761 §4).
            rtcp = port == LAN_RTCP or 200 <= data[1] <= 204
            self._check_wan_out(payload, data, rtcp)
        else:
            if sock not in (LAN_RTP, LAN_RTCP) or outs != (0, 1):
                raise Violation(f"WAN datagram forwarded to socket {sock}")
            self._check_lan_out(payload, data)

    def _check_wan_out(self, payload: bytes, sent: bytes, rtcp: bool) -> None:
        if self.spec.wan_tx is None:
            if not self.spec.wan_plaintext:
                raise Violation("a datagram reached the WAN with neither keys nor downgrade")
            return
        assert self.checker is not None
        if payload == sent:
            raise Violation("plaintext out of a WAN socket")
        try:
            clear = (
                self.checker.unprotect_rtcp(payload) if rtcp else self.checker.unprotect(payload)
            )
        except pylibsrtp.Error as error:
            raise Violation(
                f"WAN payload does not unprotect with the stream's key: {error}"
            ) from error
        if clear != sent:
            raise Violation("WAN payload unprotects to something else than the phone sent")

    def _check_lan_out(self, payload: bytes, sent: bytes) -> None:
        if self.spec.wan_rx is None:
            return  # the operator's downgrade: WAN is plain both ways
        if sent not in self.authentic:
            raise Violation("a WAN datagram the provider's key never protected was relayed")
        if sent in self.relayed:
            raise Violation("a WAN datagram was relayed twice (replay)")
        self.relayed.add(sent)
        if payload != self.authentic[sent]:
            raise Violation("relayed WAN datagram differs from what was protected")

    def apply(self, kind: int, payload: bytes) -> None:
        if kind == TICK:
            self.now += (payload[0] if payload else 1) / 32
            return
        if kind == UPDATE:
            flag = payload[0] if payload else 0
            if flag & 1 and self.tx is not None and self.rx is not None:
                # A re-key of both directions (RFC 4568 §7.1.4): new contexts, new checkers.
                gen = self.spec.wan_tx.generation + 1 if self.spec.wan_tx else 1
                self.tx = SrtpKeying(self.tx.suite, self.tx.master, gen)
                self.spec = StreamSpec(
                    **{
                        **{f: getattr(self.spec, f) for f in StreamSpec.__struct_fields__},
                        "wan_tx": self.tx,
                    }
                )
                self.checker = _session(self.tx, True)
            elif flag & 2:
                self.spec = StreamSpec(
                    **{
                        **{f: getattr(self.spec, f) for f in StreamSpec.__struct_fields__},
                        "wan_rtcp_mux": not self.spec.wan_rtcp_mux,
                    }
                )
            self.stream.update(self.spec)
            return
        if not payload:
            return
        source = SOURCES[payload[0] % len(SOURCES)]
        port_hint = payload[0] >> 4 & 1
        data = payload[1:]
        if kind == LAN_RAW:
            self.deliver(LAN_RTCP if port_hint else LAN_RTP, data, source)
        elif kind == WAN_RAW:
            self.deliver(WAN_RTCP if port_hint else WAN_RTP, data, source)
        elif kind in (WAN_SRTP, WAN_SRTCP):
            protected = self._protect(data, kind == WAN_SRTCP)
            if protected is not None:
                self.deliver(
                    WAN_RTCP if port_hint and kind == WAN_SRTCP else WAN_RTP, protected, source
                )

    def _protect(self, data: bytes, rtcp: bool) -> bytes | None:
        if self.provider is None:
            return data
        if len(data) < (8 if rtcp else 12) or len(data) > 1400:
            return None
        data = bytes([0x80 | data[0] & 0x3F]) + data[1:]
        if rtcp:
            data = data[:1] + bytes([200 + data[1] % 5]) + data[2:]
        try:
            out = self.provider.protect_rtcp(data) if rtcp else self.provider.protect(data)
        except (pylibsrtp.Error, ValueError):
            return None
        self.authentic[out] = data
        return out


def check(data: bytes) -> None:
    ops = parse_ops(data)
    setup = ops[0][1] if ops and ops[0][0] == SETUP else b""
    run = Run(setup)
    for kind, payload in ops[:96]:
        if kind != SETUP:
            run.apply(kind, payload)
