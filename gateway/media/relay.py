"""Sans-IO per-packet core of one relayed media stream (RFC 3550, RFC 3711, RFC 5761 §4).

A :class:`RelayStream` sits between four sockets owned by a media worker: the LAN RTP and RTCP
ports (plain RTP/RTCP with the phone, never muxed) and the WAN RTP and RTCP ports (SRTP/SRTCP
with the provider, RTCP muxed on the RTP port when ``wan_rtcp_mux``). Each ``from_*`` method takes
one datagram, its source address and the current time, and returns ``(payload, destination,
socket index)`` to send, or None when the packet is dropped; every drop increments one counter
of :class:`~gateway.media.control.StreamCounters` named after its reason.

Rules enforced here (DESIGN.md invariants 1–3):

- Fail closed: nothing goes to the WAN unprotected unless the operator set ``wan_plaintext``;
  without ``wan_tx`` keying a LAN packet is dropped (counted ``drop_no_peer``: the WAN peer is
  not usable yet).
- WAN packets that fail authentication (``drop_auth``) or the replay window (``drop_replay``) are
  never relayed; unprotected RTCP arriving on the WAN (baresip sends an APP and a BYE in clear)
  is recognised on the failure path and counted ``drop_plain_rtcp``.
- LAN packets are accepted only from the phone's signalled IP (no RTP bleed); WAN packets only
  from the provider's signalled IP. The source port is latched from the first accepted packet
  (symmetric RTP), on the WAN only after the packet authenticated, and replies go there.
- Each direction accepts RTP from at most :data:`SSRC_SLOTS` SSRCs at a time (an
  :class:`SsrcGate`; others are counted ``drop_ssrc``). libsrtp keeps a stream (ROC, replay
  window) per SSRC and looks streams up linearly (RFC 3711 §3.2.3): a phone's address sending
  a new SSRC per packet made every packet of every call on the worker slower and its memory grow
  for the rest of the call. A kept SSRC silent for :data:`SSRC_IDLE_S` may give its slot to a
  new one (a phone changes SSRC after a re-INVITE or a restart, a provider when it switches
  media sources); the one given up is removed from libsrtp and never accepted again under the
  same keys, since a re-created stream would start from ROC 0 and reuse indices (RFC 3711
  §9.1) or accept old packets again.
- RTCP that a phone multiplexes on its RTP port (second byte 200-204, RFC 5761 §4) is relayed
  as RTCP, never counted in the RTP reception statistics or handed to libsrtp as RTP (it would
  be taken for a new SSRC each time). The phone's RTCP goes through the same SSRC gate as its
  RTP (by its sender SSRC): SRTCP and SRTP share libsrtp's streams.
- A new SSRC from the phone takes a slot only once validated (RFC 3550 §6.2.1, A.1 with
  MIN_SEQUENTIAL = 2): heard twice, RTP with consecutive sequence numbers. Until then it is a
  candidate and its packets are dropped, counted ``drop_ssrc``: a legitimate stream (or a
  phone changing SSRC mid-call) loses its first packet, one. A flood of random SSRCs from the
  phone's own address, which before took both slots when it began ahead of the call's first
  packet and kept the call's SSRC out for the whole call, never validates. From the WAN with
  SRTP the authentication tag is the validation (only the key holder can take a slot; a
  forged packet fails before the gate learns anything from it); plaintext from the WAN
  (``wan_plaintext``) goes through probation like the LAN.

Direction attributes (hold, ``inactive``) are deliberately not enforced: phones keep sending
comfort noise or RTCP while on hold, and dropping it would only make the stream look dead to the
inactivity timer and to the far end's RTCP. What may cross is decided by keys and addresses.

Per packet the core reads only the first two header bytes (version; RTP/RTCP demultiplexing by
payload type, RFC 5761 §4) and does no logging; destinations are computed once per update or
latch, not per packet.

Reception statistics for operators (per-call loss and jitter, RFC 3550 A.3 and A.8) are the one
addition to the accepted-RTP path: :class:`ReceptionStats` reads the sequence number and
timestamp (six more header bytes) and does a dozen integer operations and one float multiply,
no allocation (about 0.3 µs per packet in CPython 3.11, against about 2 µs for the rest of the
LAN→WAN path with SRTP); the conversion to milliseconds happens only when counters are queried
(:meth:`RelayStream.snapshot`). RTCP receiver reports (RFC 3550 §6.4.1) are read from the few
RTCP packets (one every few seconds) the relay already handles in clear.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.media.control import StreamCounters, StreamSpec
from gateway.media.srtp import (
    SrtcpIndexError,
    SrtpAuthError,
    SrtpError,
    SrtpProtector,
    SrtpReplayError,
    SrtpUnprotector,
    same_keying,
)
from gateway.media.ssrc_gate import (
    NO_SEQ,
    SSRC_CANDIDATES,
    SSRC_IDLE_S,
    SSRC_RETIRED_MAX,
    SSRC_SLOTS,
    SsrcGate,
)

__all__ = [
    "LAN_RTCP",
    "LAN_RTP",
    "MAX_DATAGRAM",
    "NO_SEQ",
    "RTP_CLOCK_RATE",
    "SSRC_CANDIDATES",
    "SSRC_IDLE_S",
    "SSRC_RETIRED_MAX",
    "SSRC_SLOTS",
    "WAN_RTCP",
    "WAN_RTP",
    "Address",
    "Forward",
    "ReceptionStats",
    "RelayStream",
    "SsrcGate",
    "is_plain_rtcp",
    "read_receiver_report",
]

Address = tuple[str, int]
_Tx = SrtpProtector | None

#: Socket indices: which of the stream's four sockets a forwarded packet leaves from.
LAN_RTP = 0
LAN_RTCP = 1
WAN_RTP = 2
WAN_RTCP = 3

#: What a ``from_*`` method returns for a packet to send: payload, destination, socket index.
Forward = tuple[bytes, Address, int]

_RTP_MIN = 12  # fixed RTP header (RFC 3550 §5.1)
_RTCP_MIN = 8  # RTCP common header + SSRC (RFC 3550 §6.4)

#: Longest datagram relayed. Media workers read one byte more than this, so a longer datagram
#: reaches the relay as ``MAX_DATAGRAM + 1`` bytes and is dropped as malformed (counted with
#: those bytes) instead of being relayed cut short (the plaintext downgrade would forward it).
MAX_DATAGRAM = 2048

#: RTP clock of the codecs legacy phones speak (G.711, G.729, and G.722 by RFC 3551 §4.5.2):
#: jitter is measured in timestamp units and shown in milliseconds with this rate. A stream
#: with another clock (e.g. Opus at 48 kHz) would show its jitter scaled by the ratio.
RTP_CLOCK_RATE = 8000
#: RFC 3550 A.1: a forward jump smaller than this is loss; a larger one (short of a small
#: misorder) starts a new sequence (new SSRC, a restarted sender) instead of counting as loss.
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100


class ReceptionStats:
    """Loss (RFC 3550 A.3) and interarrival jitter (A.8) of one incoming RTP stream.

    Call :meth:`packet` with every accepted RTP packet (its header is in clear under SRTP too).
    Jitter is kept as A.8's integer estimate times 16 in timestamp units; a timestamp jump of
    more than a second (a new timeline after a re-INVITE or SSRC change) is not counted as
    jitter. Loss is expected minus received packets, carried across sequence restarts.
    """

    __slots__ = (
        "_base",
        "_cycles",
        "_jitter16",
        "_lost_before",
        "_max_seq",
        "_received",
        "_transit",
        "clock_rate",
    )

    def __init__(self, clock_rate: int = RTP_CLOCK_RATE) -> None:
        self.clock_rate = clock_rate
        self._max_seq = 0
        self._base = 0
        self._cycles = 0
        self._received = 0
        self._lost_before = 0
        self._transit = 0
        self._jitter16 = 0

    def packet(self, data: bytes, now: float) -> None:
        """Account one RTP packet (at least 12 bytes) that arrived at ``now`` seconds."""
        seq = data[2] << 8 | data[3]
        max_seq = self._max_seq
        # The usual case first: the next packet, or a few ahead (loss), of a known sequence.
        if (seq - max_seq) & 0xFFFF < _MAX_DROPOUT and self._received:
            if seq < max_seq:
                self._cycles += 0x10000  # the 16-bit sequence number wrapped
            self._max_seq = seq
        elif (seq - max_seq) & 0xFFFF <= 0xFFFF - _MAX_MISORDER or not self._received:
            self._restart(seq)
        # else: late or duplicate; counted as received (RFC 3550 A.3 does the same)
        self._received += 1
        rate = self.clock_rate
        transit = int(now * rate) - (data[4] << 24 | data[5] << 16 | data[6] << 8 | data[7])
        d = transit - self._transit
        self._transit = transit
        # More than a second apart is a new timeline (timestamp wrap, new SSRC), not jitter.
        if -rate < d < rate:
            j = self._jitter16
            self._jitter16 = j + (d if d >= 0 else -d) - ((j + 8) >> 4)

    def _restart(self, seq: int) -> None:
        if self._received:
            self._lost_before = self.lost
        self._base = self._max_seq = seq
        self._cycles = self._received = 0
        self._transit = -(1 << 40)  # no previous transit: the next difference is skipped

    @property
    def lost(self) -> int:
        """Packets expected but not received so far (duplicates can make a run negative: 0)."""
        if not self._received:
            return self._lost_before
        expected = self._cycles + self._max_seq - self._base + 1
        return self._lost_before + max(0, expected - self._received)

    @property
    def jitter_ms(self) -> float:
        return self._jitter16 * 1000.0 / (16 * self.clock_rate)

    def state(self) -> tuple[int, int, int, int, int, int, int]:
        """The whole state as integers (handed to and from the worker's C fast path)."""
        return (
            self._max_seq,
            self._base,
            self._cycles,
            self._received,
            self._lost_before,
            self._transit,
            self._jitter16,
        )

    def set_state(self, state: tuple[int, int, int, int, int, int, int]) -> None:
        (
            self._max_seq,
            self._base,
            self._cycles,
            self._received,
            self._lost_before,
            self._transit,
            self._jitter16,
        ) = state


def read_receiver_report(data: bytes) -> tuple[int, int] | None:
    """(cumulative packets lost, interarrival jitter) of the first report block of a plain
    compound RTCP packet's leading SR or RR (RFC 3550 §6.4.1, §6.4.2), or None."""
    if len(data) < 8 or data[0] & 0xC0 != 0x80 or data[0] & 0x1F == 0:
        return None
    packet_type = data[1]
    if packet_type == 200:
        block = 28  # header, SSRC and the 20-byte sender info
    elif packet_type == 201:
        block = 8
    else:
        return None
    if len(data) < block + 24:
        return None
    lost = data[block + 5] << 16 | data[block + 6] << 8 | data[block + 7]
    if lost & 0x800000:
        lost -= 0x1000000  # a signed 24-bit count: duplicates can make it negative
    jitter = int.from_bytes(data[block + 12 : block + 16], "big")
    return lost, jitter


def is_plain_rtcp(data: bytes) -> bool:
    """True when ``data`` walks as an unprotected (compound) RTCP packet to its exact end.

    SRTCP appends an E flag/index word and an authentication tag after the RTCP packets
    (RFC 3711 §3.4) and encrypts everything after the first eight bytes, so its length fields do
    not add up to the datagram. Used only on the failure path, never per accepted packet.
    """
    n = len(data)
    offset = 0
    while offset + 4 <= n:
        if data[offset] & 0xC0 != 0x80 or not 192 <= data[offset + 1] <= 223:
            return False
        offset += ((data[offset + 2] << 8 | data[offset + 3]) + 1) * 4
    return offset == n and n >= _RTCP_MIN


class RelayStream:
    """One m-line's packet path between a phone (LAN, plain) and the provider (WAN, SRTP)."""

    __slots__ = (
        "_lan_reception",
        "_lan_ssrcs",
        "_phone_ip",
        "_phone_rtcp",
        "_phone_rtcp_latched",
        "_phone_rtp",
        "_phone_rtp_latched",
        "_plain",
        "_provider_ip",
        "_provider_rtcp",
        "_provider_rtcp_latched",
        "_provider_rtp",
        "_provider_rtp_latched",
        "_rtcp_rx",
        "_rtcp_tx",
        "_rx",
        "_spec",
        "_ssrc_idle",
        "_to_phone_rtcp",
        "_to_provider_rtcp",
        "_to_provider_rtcp_via",
        "_tx",
        "_wan_reception",
        "_wan_ssrcs",
        "counters",
        "on_change",
    )

    def __init__(self, spec: StreamSpec, *, ssrc_idle: float = SSRC_IDLE_S) -> None:
        """Build from a spec; raises ValueError for an unknown/NULL suite or a bad key length.

        ``ssrc_idle``: how long a kept SSRC must be silent before a new one may take its slot
        (:class:`SsrcGate`; tests shorten it)."""
        #: Counters by direction and drop reason; ``last_*_packet`` hold the ``now`` values of
        #: the last accepted packet (0.0 = none yet).
        self.counters = StreamCounters()
        self._tx: SrtpProtector | None = None
        self._rx: SrtpUnprotector | None = None
        # SRTCP on the WAN RTCP port keyed apart (spec.wan_rtcp_tx/rx: DTLS without mux).
        self._rtcp_tx: SrtpProtector | None = None
        self._rtcp_rx: SrtpUnprotector | None = None
        self._phone_ip: str | None = None
        self._phone_rtp: Address | None = None
        self._phone_rtcp: Address | None = None
        self._phone_rtp_latched = False
        self._phone_rtcp_latched = False
        self._provider_ip: str | None = None
        self._provider_rtp: Address | None = None
        self._provider_rtcp: Address | None = None
        self._provider_rtp_latched = False
        self._provider_rtcp_latched = False
        self._to_phone_rtcp: Address | None = None
        self._to_provider_rtcp: Address | None = None
        self._to_provider_rtcp_via = WAN_RTCP
        self._plain = False
        self._lan_reception = ReceptionStats()
        self._wan_reception = ReceptionStats()
        self._ssrc_idle = ssrc_idle
        self._lan_ssrcs = SsrcGate(ssrc_idle)
        self._wan_ssrcs = SsrcGate(ssrc_idle)
        self._spec = StreamSpec(lan_port=spec.lan_port, wan_port=spec.wan_port)
        #: Called after anything :meth:`fast_lan` / :meth:`fast_wan` depend on changed
        #: (update, latch, close): the worker's C fast path reconfigures itself then.
        self.on_change: Callable[[], None] | None = None
        self.update(spec)

    @property
    def spec(self) -> StreamSpec:
        """The spec currently applied."""
        return self._spec

    @property
    def lan_reception(self) -> ReceptionStats:
        """Reception statistics of the RTP from the phone."""
        return self._lan_reception

    @property
    def wan_reception(self) -> ReceptionStats:
        """Reception statistics of the (authenticated) RTP from the provider."""
        return self._wan_reception

    @property
    def lan_ssrcs(self) -> SsrcGate:
        """The SSRCs accepted from the phone."""
        return self._lan_ssrcs

    @property
    def wan_ssrcs(self) -> SsrcGate:
        """The SSRCs accepted from the provider (each admitted after it authenticated)."""
        return self._wan_ssrcs

    def fast_lan(self) -> tuple[str, Address, SrtpProtector] | None:
        """The LAN RTP → WAN RTP steady state, or None while it is not reached.

        (phone IP, provider RTP destination, protector): once the phone's port is latched and
        both the provider's address and the outbound keys are known, every accepted LAN RTP
        packet takes the same path, which the worker's C fast path may then take over. Never
        without keys (fail closed: plaintext to the WAN stays on the Python path).
        """
        if (
            self._phone_ip is None
            or not self._phone_rtp_latched
            or self._provider_rtp is None
            or self._tx is None
        ):
            return None
        return self._phone_ip, self._provider_rtp, self._tx

    def fast_wan(self) -> tuple[str, Address, SrtpUnprotector] | None:
        """The WAN RTP → LAN RTP steady state (provider IP, phone RTP destination,
        unprotector), or None: as :meth:`fast_lan`, after the provider's port latched."""
        if (
            self._provider_ip is None
            or not self._provider_rtp_latched
            or self._phone_rtp is None
            or self._rx is None
        ):
            return None
        return self._provider_ip, self._phone_rtp, self._rx

    def contexts(self) -> tuple[SrtpProtector | None, SrtpUnprotector | None, _Tx]:
        """The SRTP contexts (protect, unprotect, the RTCP port's protect) now in use."""
        return self._tx, self._rx, self._rtcp_tx

    def latches(self) -> tuple[Address | None, Address | None, Address | None, Address | None]:
        """Latched phone RTP/RTCP and provider RTP/RTCP sources (None: not latched)."""
        return (
            self._phone_rtp if self._phone_rtp_latched else None,
            self._phone_rtcp if self._phone_rtcp_latched else None,
            self._provider_rtp if self._provider_rtp_latched else None,
            self._provider_rtcp if self._provider_rtcp_latched else None,
        )

    def restore(self, latches: tuple[Address | None, ...], now: float) -> None:
        """Take back a dead worker's latches (each still checked against the signalled IP,
        as a latch is) and, for each direction with keys, the SSRCs its context restores."""
        phone_rtp, phone_rtcp, provider_rtp, provider_rtcp = latches
        if phone_rtp is not None and phone_rtp[0] == self._phone_ip:
            self._phone_rtp, self._phone_rtp_latched = phone_rtp, True
        if phone_rtcp is not None and phone_rtcp[0] == self._phone_ip:
            self._phone_rtcp, self._phone_rtcp_latched = phone_rtcp, True
        if provider_rtp is not None and provider_rtp[0] == self._provider_ip:
            self._provider_rtp, self._provider_rtp_latched = provider_rtp, True
        if provider_rtcp is not None and provider_rtcp[0] == self._provider_ip:
            self._provider_rtcp, self._provider_rtcp_latched = provider_rtcp, True
        for gate, context in ((self._lan_ssrcs, self._tx), (self._wan_ssrcs, self._rx)):
            for ssrc in context._pending if context is not None else ():
                gate.admit(ssrc, now)
        self._refresh_rtcp_destinations()
        self._changed()

    def _changed(self) -> None:
        hook = self.on_change
        if hook is not None:
            hook()

    def snapshot(self) -> StreamCounters:
        """The counters with the reception statistics brought up to date (for QueryStats)."""
        c = self.counters
        lan, wan = self._lan_reception, self._wan_reception
        c.lost_lan_in = lan.lost
        c.jitter_ms_lan_in = lan.jitter_ms
        c.lost_wan_in = wan.lost
        c.jitter_ms_wan_in = wan.jitter_ms
        return c

    # -- control -------------------------------------------------------------------------

    def update(self, spec: StreamSpec) -> None:
        """Apply a new spec (re-INVITE, answer, hold/resume, re-key).

        A direction's SRTP context is kept when its keying is unchanged, so ROC and replay
        window carry on (RFC 3711 §3.3.1); a new key or generation builds a new context
        (RFC 4568 §7.1.4). Latched ports are kept while the signalled address is unchanged.
        If a new keying is invalid, ValueError is raised and nothing changes.
        """
        old = self._spec
        tx = self._tx
        rx = self._rx
        # Build new contexts first so a bad key leaves the stream as it was.
        if not same_keying(spec.wan_tx, tx.keying if tx else None):
            tx = SrtpProtector(spec.wan_tx) if spec.wan_tx is not None else None
        if not same_keying(spec.wan_rx, rx.keying if rx else None):
            rx = SrtpUnprotector(spec.wan_rx) if spec.wan_rx is not None else None
        # SSRCs are kept and retired per crypto context: new keys, a clean slate.
        if tx is not self._tx:
            self._lan_ssrcs = SsrcGate(self._ssrc_idle)
        if rx is not self._rx:
            self._wan_ssrcs = SsrcGate(self._ssrc_idle)
        rtcp_tx, rtcp_rx = self._rtcp_tx, self._rtcp_rx
        if not same_keying(spec.wan_rtcp_tx, old.wan_rtcp_tx):
            rtcp_tx = SrtpProtector(spec.wan_rtcp_tx) if spec.wan_rtcp_tx else None
        if not same_keying(spec.wan_rtcp_rx, old.wan_rtcp_rx):
            rtcp_rx = SrtpUnprotector(spec.wan_rtcp_rx) if spec.wan_rtcp_rx else None
        self._tx, self._rx, self._rtcp_tx, self._rtcp_rx = tx, rx, rtcp_tx, rtcp_rx
        self._plain = spec.wan_plaintext

        if spec.phone_addr != old.phone_addr or spec.phone_rtcp_addr != old.phone_rtcp_addr:
            self._phone_ip = spec.phone_addr[0] if spec.phone_addr else None
            self._phone_rtp = spec.phone_addr
            self._phone_rtp_latched = False
            self._phone_rtcp = spec.phone_rtcp_addr
            self._phone_rtcp_latched = False
        if (
            spec.provider_addr != old.provider_addr
            or spec.provider_rtcp_addr != old.provider_rtcp_addr
        ):
            self._provider_ip = spec.provider_addr[0] if spec.provider_addr else None
            self._provider_rtp = spec.provider_addr
            self._provider_rtp_latched = False
            self._provider_rtcp = spec.provider_rtcp_addr
            self._provider_rtcp_latched = False
        self._spec = spec
        self._refresh_rtcp_destinations()
        self._changed()

    def close(self) -> None:
        """Forget the SRTP contexts (and with them the keys) when the call ends."""
        self._tx = self._rtcp_tx = self._rx = self._rtcp_rx = None
        self._spec = StreamSpec(lan_port=self._spec.lan_port, wan_port=self._spec.wan_port)
        self._changed()

    def _refresh_rtcp_destinations(self) -> None:
        # RTCP defaults to the RTP port + 1 when nothing else is known (RFC 3550 §11).
        phone_rtcp = self._phone_rtcp
        if phone_rtcp is None and self._phone_rtp is not None:
            phone_rtcp = (self._phone_rtp[0], self._phone_rtp[1] + 1)
        self._to_phone_rtcp = phone_rtcp
        if self._spec.wan_rtcp_mux:
            self._to_provider_rtcp = self._provider_rtp
            self._to_provider_rtcp_via = WAN_RTP
        else:
            provider_rtcp = self._provider_rtcp
            if provider_rtcp is None and self._provider_rtp is not None:
                provider_rtcp = (self._provider_rtp[0], self._provider_rtp[1] + 1)
            self._to_provider_rtcp = provider_rtcp
            self._to_provider_rtcp_via = WAN_RTCP

    # -- LAN → WAN -----------------------------------------------------------------------

    def from_lan_rtp(self, data: bytes, source: Address, now: float) -> Forward | None:
        """A datagram on the LAN RTP port: plain RTP from the phone, protected to the WAN."""
        c = self.counters
        c.lan_in_packets += 1
        n = len(data)
        c.lan_in_bytes += n
        if source[0] != self._phone_ip:
            if self._phone_ip is None:
                c.drop_no_peer += 1
            else:
                c.drop_wrong_source += 1
            return None
        if not _RTCP_MIN <= n <= MAX_DATAGRAM or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        # RFC 5761 §4: a phone that multiplexes anyway sends RTCP SR, RR, SDES, BYE or APP here.
        if 200 <= data[1] <= 204:
            return self._lan_rtcp(data, source, now, True)
        if n < _RTP_MIN:
            c.drop_malformed += 1
            return None
        gate = self._lan_ssrcs
        ssrc = data[8] << 24 | data[9] << 16 | data[10] << 8 | data[11]
        index = gate.slot(ssrc)
        if index >= 0:
            gate.heard(index, now)
        elif gate.admissible(ssrc, now) and gate.probe(ssrc, data[2] << 8 | data[3]):
            retired = gate.admit(ssrc, now)
            if retired is not None and self._tx is not None:
                self._tx.forget(retired)
        else:
            c.drop_ssrc += 1  # no slot for it, or on probation (RFC 3550 A.1)
            return None
        c.last_lan_packet = now
        # Before the latch: the latch hands the reception state to the C fast path, which must
        # see this packet counted (its loss would otherwise be measured from the next one).
        self._lan_reception.packet(data, now)
        if not self._phone_rtp_latched:
            self._phone_rtp = source
            self._phone_rtp_latched = True
            self._refresh_rtcp_destinations()
            self._changed()
        elif index < 0:
            self._changed()  # the fast path serves the kept SSRCs only
        dest = self._provider_rtp
        if dest is None:
            c.drop_no_peer += 1
            return None
        tx = self._tx
        if tx is not None:
            try:
                out = tx.protect(data)
            except SrtpError:
                # libsrtp refuses a repeated or far-back sequence number (index reuse under one
                # key); StreamCounters has no tx-specific reason, and the packet is unusable.
                c.drop_malformed += 1
                return None
        elif self._plain:
            out = data
        else:
            c.drop_no_peer += 1  # fail closed: no keys, no WAN
            return None
        c.wan_out_packets += 1
        return out, dest, WAN_RTP

    def lan_rtp_refused(self, data: bytes, source: Address, now: float) -> bool:
        """True, having counted ``data`` as :meth:`from_lan_rtp` would, when all it would do
        is drop it for its new SSRC (refused, or kept on probation) while a slot is free;
        otherwise False, with nothing changed (:meth:`from_lan_rtp` decides).

        For the worker's C fast path, which hands every packet of a new SSRC back to Python:
        this reads none of the state the C lane holds (with a slot free no last-heard time
        matters, and only Python changes which SSRCs are kept), so a flood of new SSRCs from
        the phone costs no exchange of state with the lane per packet."""
        n = len(data)
        gate = self._lan_ssrcs
        if (
            source[0] != self._phone_ip
            or not _RTP_MIN <= n <= MAX_DATAGRAM
            or data[0] & 0xC0 != 0x80
            or 200 <= data[1] <= 204
            or len(gate.ssrcs) >= SSRC_SLOTS
        ):
            return False
        ssrc = data[8] << 24 | data[9] << 16 | data[10] << 8 | data[11]
        if gate.slot(ssrc) >= 0:
            return False
        if gate.admissible(ssrc, now) and gate.probe(ssrc, data[2] << 8 | data[3]):
            return False  # validated: from_lan_rtp admits it
        c = self.counters
        c.lan_in_packets += 1
        c.lan_in_bytes += n
        c.drop_ssrc += 1
        return True

    def from_lan_rtcp(self, data: bytes, source: Address, now: float) -> Forward | None:
        """A datagram on the LAN RTCP port: plain RTCP from the phone, SRTCP to the WAN."""
        c = self.counters
        c.lan_in_packets += 1
        c.lan_in_bytes += len(data)
        if source[0] != self._phone_ip:
            if self._phone_ip is None:
                c.drop_no_peer += 1
            else:
                c.drop_wrong_source += 1
            return None
        if not _RTCP_MIN <= len(data) <= MAX_DATAGRAM or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        return self._lan_rtcp(data, source, now, False)

    def _lan_rtcp(self, data: bytes, source: Address, now: float, muxed: bool) -> Forward | None:
        c = self.counters
        # SRTCP shares libsrtp's per-SSRC streams with SRTP: the sender's SSRC (RFC 3550 §6.4)
        # goes through the same gate as RTP's, or an RTCP flood would grow them as well.
        gate = self._lan_ssrcs
        ssrc = data[4] << 24 | data[5] << 16 | data[6] << 8 | data[7]
        index = gate.slot(ssrc)
        if index >= 0:
            gate.heard(index, now)
        elif gate.admissible(ssrc, now) and gate.probe(ssrc, NO_SEQ):
            retired = gate.admit(ssrc, now)
            if retired is not None and self._tx is not None:
                self._tx.forget(retired)
            self._changed()  # the fast path serves the kept SSRCs only
        else:
            c.drop_ssrc += 1  # no slot for it, or on probation
            return None
        # RTCP muxed on the RTP port says nothing about where the phone wants RTCP sent.
        if not muxed and not self._phone_rtcp_latched:
            self._phone_rtcp = source
            self._phone_rtcp_latched = True
            self._refresh_rtcp_destinations()
        c.last_lan_packet = now
        report = read_receiver_report(data)
        if report is not None:
            c.phone_reported_lost = report[0]
            c.phone_reported_jitter_ms = report[1] * 1000.0 / RTP_CLOCK_RATE
        dest = self._to_provider_rtcp
        if dest is None:
            c.drop_no_peer += 1
            return None
        tx = self._tx if self._to_provider_rtcp_via == WAN_RTP else self._rtcp_tx or self._tx
        if tx is not None:
            try:
                out = tx.protect_rtcp(data)
            except SrtcpIndexError:  # it could repeat an index a dead worker used
                c.drop_rtcp_unkeyed += 1
                return None
            except SrtpError:
                c.drop_malformed += 1
                return None
        elif self._plain:
            out = data
        else:
            c.drop_no_peer += 1  # fail closed
            return None
        c.wan_out_packets += 1
        return out, dest, self._to_provider_rtcp_via

    # -- WAN → LAN -----------------------------------------------------------------------

    def from_wan_rtp(self, data: bytes, source: Address, now: float) -> Forward | None:
        """A datagram on the WAN RTP port: SRTP, or SRTCP when muxed (RFC 5761 §4)."""
        c = self.counters
        c.wan_in_packets += 1
        c.wan_in_bytes += len(data)
        if source[0] != self._provider_ip:
            if self._provider_ip is None:
                c.drop_no_peer += 1
            else:
                c.drop_wrong_source += 1
            return None
        n = len(data)
        if not _RTCP_MIN <= n <= MAX_DATAGRAM or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        # RFC 5761 §4: payload types 64–95 (with the marker bit masked) are RTCP 192–223.
        if 64 <= data[1] & 0x7F <= 95:
            return self._wan_rtcp(data, source, now, True)
        if n < _RTP_MIN:
            c.drop_malformed += 1
            return None
        # Checked before libsrtp: a refused SSRC costs no authentication. A new one is kept
        # only once it authenticated (only the key holder can take a slot): the tag is its
        # validation, and a forged packet fails before the gate learns anything from it.
        gate = self._wan_ssrcs
        ssrc = data[8] << 24 | data[9] << 16 | data[10] << 8 | data[11]
        index = gate.slot(ssrc)
        if index < 0 and not gate.admissible(ssrc, now):
            c.drop_ssrc += 1
            return None
        rx = self._rx
        if rx is not None:
            try:
                out = rx.unprotect(data)
            except SrtpAuthError:
                c.drop_auth += 1
                return None
            except SrtpReplayError:
                c.drop_replay += 1
                return None
            except SrtpError:
                c.drop_malformed += 1
                return None
        elif self._plain:
            # No tag says who sent it: a new SSRC is validated by probation, as on the LAN.
            if index < 0 and not gate.probe(ssrc, data[2] << 8 | data[3]):
                c.drop_ssrc += 1
                return None
            out = data
        else:
            c.drop_no_peer += 1  # no keys yet: nothing from the WAN can be verified
            return None
        if index >= 0:
            gate.heard(index, now)
        else:
            retired = gate.admit(ssrc, now)
            if retired is not None and rx is not None:
                rx.forget(retired)
        c.last_wan_packet = now
        self._wan_reception.packet(data, now)  # the RTP header is not encrypted (RFC 3711 §3.1)
        if not self._provider_rtp_latched:
            # Latch only after authentication, so a spoofed source cannot steer our SRTP.
            # After the reception count: the latch hands that state to the C fast path.
            self._provider_rtp = source
            self._provider_rtp_latched = True
            self._refresh_rtcp_destinations()
            self._changed()
        elif index < 0:
            self._changed()  # the fast path serves the kept SSRCs only
        dest = self._phone_rtp
        if dest is None:
            c.drop_no_peer += 1
            return None
        c.lan_out_packets += 1
        return out, dest, LAN_RTP

    def from_wan_rtcp(self, data: bytes, source: Address, now: float) -> Forward | None:
        """A datagram on the WAN RTCP port (RTP port + 1): SRTCP from the provider."""
        c = self.counters
        c.wan_in_packets += 1
        c.wan_in_bytes += len(data)
        if source[0] != self._provider_ip:
            if self._provider_ip is None:
                c.drop_no_peer += 1
            else:
                c.drop_wrong_source += 1
            return None
        if not _RTCP_MIN <= len(data) <= MAX_DATAGRAM or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        return self._wan_rtcp(data, source, now, False)

    def _wan_rtcp(self, data: bytes, source: Address, now: float, muxed: bool) -> Forward | None:
        c = self.counters
        rx = self._rx if muxed else self._rtcp_rx or self._rx
        if rx is not None:
            try:
                out = rx.unprotect_rtcp(data)
            except SrtpReplayError:
                c.drop_replay += 1
                return None
            except SrtpError:
                # Only now is it worth looking further: plain RTCP is a peer bug, not an attack.
                if is_plain_rtcp(data):
                    c.drop_plain_rtcp += 1
                else:
                    c.drop_auth += 1
                return None
        elif self._plain:
            out = data
        else:
            c.drop_no_peer += 1
            return None
        if not muxed and not self._provider_rtcp_latched:
            self._provider_rtcp = source
            self._provider_rtcp_latched = True
            self._refresh_rtcp_destinations()
        c.last_wan_packet = now
        report = read_receiver_report(out)
        if report is not None:
            c.provider_reported_lost = report[0]
            c.provider_reported_jitter_ms = report[1] * 1000.0 / RTP_CLOCK_RATE
        dest = self._to_phone_rtcp
        if dest is None:
            c.drop_no_peer += 1
            return None
        c.lan_out_packets += 1
        return out, dest, LAN_RTCP
