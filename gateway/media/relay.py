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

Direction attributes (hold, ``inactive``) are deliberately not enforced: phones keep sending
comfort noise or RTCP while on hold, and dropping it would only make the stream look dead to the
inactivity timer and to the far end's RTCP. What may cross is decided by keys and addresses.

Per packet the core reads only the first two header bytes (version; RTP/RTCP demultiplexing by
payload type, RFC 5761 §4) and does no logging; destinations are computed once per update or
latch, not per packet.
"""

from __future__ import annotations

from gateway.media.control import StreamCounters, StreamSpec
from gateway.media.srtp import (
    SrtpAuthError,
    SrtpError,
    SrtpProtector,
    SrtpReplayError,
    SrtpUnprotector,
    same_keying,
)

__all__ = [
    "LAN_RTCP",
    "LAN_RTP",
    "WAN_RTCP",
    "WAN_RTP",
    "Address",
    "Forward",
    "RelayStream",
    "is_plain_rtcp",
]

Address = tuple[str, int]

#: Socket indices: which of the stream's four sockets a forwarded packet leaves from.
LAN_RTP = 0
LAN_RTCP = 1
WAN_RTP = 2
WAN_RTCP = 3

#: What a ``from_*`` method returns for a packet to send: payload, destination, socket index.
Forward = tuple[bytes, Address, int]

_RTP_MIN = 12  # fixed RTP header (RFC 3550 §5.1)
_RTCP_MIN = 8  # RTCP common header + SSRC (RFC 3550 §6.4)


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
        "_rx",
        "_spec",
        "_to_phone_rtcp",
        "_to_provider_rtcp",
        "_to_provider_rtcp_via",
        "_tx",
        "counters",
    )

    def __init__(self, spec: StreamSpec) -> None:
        """Build from a spec; raises ValueError for an unknown/NULL suite or a bad key length."""
        #: Counters by direction and drop reason; ``last_*_packet`` hold the ``now`` values of
        #: the last accepted packet (0.0 = none yet).
        self.counters = StreamCounters()
        self._tx: SrtpProtector | None = None
        self._rx: SrtpUnprotector | None = None
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
        self._spec = StreamSpec(lan_port=spec.lan_port, wan_port=spec.wan_port)
        self.update(spec)

    @property
    def spec(self) -> StreamSpec:
        """The spec currently applied."""
        return self._spec

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
        self._tx = tx
        self._rx = rx
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

    def close(self) -> None:
        """Forget the SRTP contexts (and with them the keys) when the call ends."""
        self._tx = None
        self._rx = None
        self._spec = StreamSpec(lan_port=self._spec.lan_port, wan_port=self._spec.wan_port)

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
        c.lan_in_bytes += len(data)
        if source[0] != self._phone_ip:
            if self._phone_ip is None:
                c.drop_no_peer += 1
            else:
                c.drop_wrong_source += 1
            return None
        if len(data) < _RTP_MIN or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        if not self._phone_rtp_latched:
            self._phone_rtp = source
            self._phone_rtp_latched = True
            self._refresh_rtcp_destinations()
        c.last_lan_packet = now
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
        if len(data) < _RTCP_MIN or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        if not self._phone_rtcp_latched:
            self._phone_rtcp = source
            self._phone_rtcp_latched = True
            self._refresh_rtcp_destinations()
        c.last_lan_packet = now
        dest = self._to_provider_rtcp
        if dest is None:
            c.drop_no_peer += 1
            return None
        tx = self._tx
        if tx is not None:
            try:
                out = tx.protect_rtcp(data)
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
        if n < _RTCP_MIN or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        # RFC 5761 §4: payload types 64–95 (with the marker bit masked) are RTCP 192–223.
        if 64 <= data[1] & 0x7F <= 95:
            return self._wan_rtcp(data, source, now, True)
        if n < _RTP_MIN:
            c.drop_malformed += 1
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
            out = data
        else:
            c.drop_no_peer += 1  # no keys yet: nothing from the WAN can be verified
            return None
        if not self._provider_rtp_latched:
            # Latch only after authentication, so a spoofed source cannot steer our SRTP.
            self._provider_rtp = source
            self._provider_rtp_latched = True
            self._refresh_rtcp_destinations()
        c.last_wan_packet = now
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
        if len(data) < _RTCP_MIN or data[0] & 0xC0 != 0x80:
            c.drop_malformed += 1
            return None
        return self._wan_rtcp(data, source, now, False)

    def _wan_rtcp(self, data: bytes, source: Address, now: float, muxed: bool) -> Forward | None:
        c = self.counters
        rx = self._rx
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
        dest = self._to_phone_rtcp
        if dest is None:
            c.drop_no_peer += 1
            return None
        c.lan_out_packets += 1
        return out, dest, LAN_RTCP
