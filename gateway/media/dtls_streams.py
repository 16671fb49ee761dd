"""A media worker's DTLS-SRTP streams: the handshake on the WAN RTP port, keys into the relay.

A stream whose spec carries ``wan_dtls`` (:class:`~gateway.media.control.DtlsKeying`) starts
without WAN keys: the relay drops everything toward the provider and from it (fail closed),
while a :class:`~gateway.media.dtls.DtlsEndpoint` runs on the stream's WAN RTP port. Datagrams
there are demultiplexed by their first byte (RFC 7983 §7: 20-63 DTLS, 128-191 RTP/RTCP); the
C fast path declines anything that is not RTP, so DTLS always reaches this module. When the
handshake is done (the peer's certificate matched the SDP fingerprint, a profile from the
operator's list was agreed), the exported keys become the spec's ``wan_tx``/``wan_rx`` and go
to the relay by the ordinary update path: from then on packets flow exactly as with SDES.

- Only the provider's signalled IP may take part: a DTLS record from any other address is
  dropped before the handshake sees it and counted ``dtls_wrong_source``.
- A failed or timed-out handshake (:data:`~gateway.media.dtls.DEFAULT_HANDSHAKE_TIMEOUT`) is
  reported once (:class:`~gateway.media.control.DtlsFailed`); the signalling side ends the
  call. The stream stays without keys until then.
- An update with the same ``DtlsKeying.generation`` keeps the association and its keys
  (RFC 5763 §6.6: a re-INVITE that changes nothing); a new generation starts afresh.
- The handshake presents the certificate the stream's SDP named
  (``DtlsKeying.local_fingerprint``): the worker keeps the current certificate, the one it
  replaced (an offer sent just before a renewal is answered after it) and any an open stream
  names; a named certificate no longer held fails the stream (never another certificate).
- With RTCP multiplexing (RFC 5761) SRTCP is keyed from the RTP port's association. Without
  it RFC 5764 §4.1 keys RTCP with an association of its own on the WAN RTCP port: a second
  :class:`~gateway.media.dtls.DtlsEndpoint` runs there (same role, same certificate, same
  fingerprint check, DTLS only from the provider's IP), and its exported keys become the
  spec's ``wan_rtcp_tx``/``wan_rtcp_rx`` (SRTCP both ways) while SRTP keeps the RTP port's.
  Until it completes RTCP fails closed: none crosses the WAN either way (the phone's RTCP and
  RTCP on the WAN RTCP port are dropped and counted ``drop_rtcp_unkeyed``). A failed or timed
  out RTCP handshake leaves it so (logged; the call and its RTP go on). :class:`DtlsKeyed` is
  sent again once the RTCP keys are known, so a crashed worker's successor carries both on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec import structs

from gateway.media.control import DtlsFailed, DtlsKeyed, StreamSpec
from gateway.media.dtls import DtlsDone, DtlsEndpoint, DtlsFailure
from gateway.media.dtls_identity import certificate_fingerprint
from gateway.media.relay import (
    LAN_RTCP,
    LAN_RTP,
    WAN_RTCP,
    WAN_RTP,
    Address,
    Forward,
    RelayStream,
)

__all__ = ["DtlsStreams"]

_Handler = Callable[[bytes, Address, float], Forward | None]


@dataclass(slots=True)
class _Session:
    key: str
    call_id: str
    index: int
    relay: RelayStream
    sock: socket.socket
    #: The spec as the signalling process sent it (keys None on the WAN side).
    spec: StreamSpec
    endpoint: DtlsEndpoint | None = None
    generation: int = -1
    #: Where the peer's DTLS comes from (replies go there); None: its signalled address.
    peer: Address | None = None
    done: DtlsDone | None = None
    reported: bool = False
    timer: float | None = None
    #: Set by a datagram: the loop applies the outcome after the packet's turn.
    changed: bool = field(default=False)
    #: Without rtcp-mux: the WAN RTCP port's association (RFC 5764 §4.1), a session of its
    #: own whose ``parent`` is the RTP port's.
    rtcp: _Session | None = None
    parent: _Session | None = None


class DtlsStreams:
    """Every DTLS-keyed stream of one worker, and the certificate they handshake with."""

    def __init__(
        self,
        send_report: Callable[[DtlsFailed | DtlsKeyed], None],
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._send_report = send_report
        #: The worker's once-per-text warning on stderr.
        self._warn = warn
        #: Certificates (DER, key PEM) by sha-256 fingerprint; the current one, and the one
        #: before it.
        self._identities: dict[str, tuple[bytes, bytes]] = {}
        self._current: str | None = None
        self._previous: str | None = None
        self._sessions: dict[str, _Session] = {}
        #: Sessions whose handshake is under way (they have a timer).
        self._timed: dict[str, _Session] = {}
        self._changed: list[_Session] = []
        #: When :meth:`step` must run next (inf: nothing pending).
        self.next_due = float("inf")

    def set_identity(self, certificate: bytes, key: bytes) -> None:
        """The certificate new associations present unless their SDP named another one."""
        fingerprint = certificate_fingerprint(certificate)
        if fingerprint != self._current:
            self._previous, self._current = self._current, fingerprint
        self._identities[fingerprint] = (certificate, key)
        named = {self._current, self._previous}
        for session in self._sessions.values():
            keying = session.spec.wan_dtls
            if keying is not None and keying.local_fingerprint is not None:
                named.add(self._find(keying.local_fingerprint))
        for unused in [f for f in self._identities if f not in named]:
            del self._identities[unused]  # no stream names it any more: the key goes

    def _find(self, fingerprint: tuple[str, str]) -> str | None:
        """The sha-256 fingerprint of the held certificate ``fingerprint`` names, if any."""
        hash_name, digest = fingerprint[0].lower(), fingerprint[1].upper()
        if hash_name == "sha-256":
            return digest if digest in self._identities else None
        for sha256, (der, _) in self._identities.items():
            try:
                if certificate_fingerprint(der, hash_name) == digest:
                    return sha256
            except ValueError:
                return None
        return None

    # -- streams -------------------------------------------------------------------------

    def open(
        self,
        key: str,
        call_id: str,
        index: int,
        relay: RelayStream,
        sock: socket.socket,
        now: float,
        rtcp_sock: socket.socket | None = None,
    ) -> dict[int, _Handler]:
        """Take a DTLS-keyed stream; returns the handlers for its four sockets, by socket
        index (``relay.LAN_RTP`` …): DTLS on the WAN RTP port (and on ``rtcp_sock``, the WAN
        RTCP port, without rtcp-mux), the RTCP rules on the others."""
        session = _Session(key, call_id, index, relay, sock, relay.spec)
        if rtcp_sock is not None:
            session.rtcp = _Session(f"{key}#rtcp", call_id, index, relay, rtcp_sock, relay.spec)
            session.rtcp.parent = session
        self._sessions[key] = session
        self._start(session, relay.spec, now)
        lan_rtp, wan_rtp = relay.from_lan_rtp, relay.from_wan_rtp
        lan_rtcp, wan_rtcp = relay.from_lan_rtcp, relay.from_wan_rtcp

        def from_lan_rtp(data: bytes, source: Address, now: float) -> Forward | None:
            # RFC 5761 §4: a phone multiplexing RTCP anyway (SR, RR, SDES, BYE, APP).
            rtcp = len(data) > 1 and 200 <= data[1] <= 204
            if rtcp and self._rtcp_unkeyed(session, data, lan=True):
                return None
            return lan_rtp(data, source, now)

        def from_wan_rtp(data: bytes, source: Address, now: float) -> Forward | None:
            if data and 20 <= data[0] <= 63:  # RFC 7983 §7: DTLS
                self._datagram(session, data, source, now)
                return None
            return wan_rtp(data, source, now)

        def from_lan_rtcp(data: bytes, source: Address, now: float) -> Forward | None:
            if self._rtcp_unkeyed(session, data, lan=True):
                return None
            return lan_rtcp(data, source, now)

        def from_wan_rtcp(data: bytes, source: Address, now: float) -> Forward | None:
            rtcp = session.rtcp
            if data and 20 <= data[0] <= 63 and rtcp is not None and self._rtcp_runs(session):
                self._datagram(rtcp, data, source, now)  # RFC 5764 §4.1: RTCP's own
                return None
            if self._rtcp_unkeyed(session, data, lan=False):
                return None
            return wan_rtcp(data, source, now)

        return {
            LAN_RTP: from_lan_rtp,
            WAN_RTP: from_wan_rtp,
            LAN_RTCP: from_lan_rtcp,
            WAN_RTCP: from_wan_rtcp,
        }

    def update(self, key: str, spec: StreamSpec, now: float) -> StreamSpec:
        """The spec to give the relay for an UpdateStream: the signalled one with the
        association's keys while its generation stands."""
        session = self._sessions.get(key)
        if session is None:
            return spec
        session.spec = spec
        self._start(session, spec, now)
        return self._keyed(session)

    def close(self, key: str) -> None:
        self._sessions.pop(key, None)
        self._timed.pop(key, None)
        self._timed.pop(f"{key}#rtcp", None)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    # -- time ----------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Apply handshakes that progressed, handle due timers; refresh :attr:`next_due`.

        Only the handshakes under way are looked at (``_timed``), not every DTLS stream."""
        changed, self._changed = self._changed, []
        for session in changed:
            session.changed = False
            owner = session.parent or session
            if self._sessions.get(owner.key) is owner:  # not closed since
                self._settle(session, now)
        if now >= self.next_due:
            for session in list(self._timed.values()):
                endpoint = session.endpoint
                if endpoint is not None and session.timer is not None and now >= session.timer:
                    endpoint.handle_timer(now)
                    self._transmit(session)
                    self._settle(session, now)
        for key in [k for k, s in self._timed.items() if s.timer is None]:
            del self._timed[key]
        self.next_due = min(
            (s.timer for s in self._timed.values() if s.timer is not None),
            default=float("inf"),
        )

    @property
    def pending(self) -> bool:
        """A handshake progressed during the last round: :meth:`step` has work."""
        return bool(self._changed)

    # -- internals -----------------------------------------------------------------------

    def _start(self, session: _Session, spec: StreamSpec, now: float) -> None:
        self._start_rtp(session, spec, now)
        rtcp = session.rtcp
        if rtcp is not None:
            rtcp.spec = spec
            if self._rtcp_runs(session):
                self._start_rtp(rtcp, spec, now)
            else:
                rtcp.endpoint = rtcp.done = rtcp.timer = None
                rtcp.generation = -1
                self._timed.pop(rtcp.key, None)

    @staticmethod
    def _rtcp_runs(session: _Session) -> bool:
        """The WAN RTCP port has an association of its own: DTLS-keyed, no rtcp-mux."""
        return session.spec.wan_dtls is not None and not session.spec.wan_rtcp_mux

    def _start_rtp(self, session: _Session, spec: StreamSpec, now: float) -> None:
        """Start (or keep) the association of ``session``: the RTP port's, or the RTCP
        port's (``session.parent`` set), whose restored keys are ``wan_rtcp_tx``/``rx``."""
        keying = spec.wan_dtls
        if keying is None:
            session.endpoint = None
            session.done = None
            return
        if keying.generation == session.generation and (session.endpoint or session.done):
            return  # RFC 5763 §6.6: nothing changed, the association stands
        tx, rx = spec.wan_tx, spec.wan_rx
        if session.parent is not None:  # the RTCP port's association
            tx, rx = spec.wan_rtcp_tx, spec.wan_rtcp_rx
        if tx is not None and rx is not None:
            # A stream a crashed worker held, re-opened with the keys its handshake gave
            # (DtlsKeyed): the association carries on, the provider starts no new one.
            session.generation = keying.generation
            session.done = DtlsDone(tx.suite, tx, rx, "")
            session.endpoint = None
            return
        if keying.role == "client" and spec.provider_addr is None:
            return  # nobody to send the ClientHello to yet: the answer will say
        session.generation = keying.generation
        session.done = None
        session.reported = False
        session.peer = None
        if keying.local_fingerprint is None:
            identity = self._identities.get(self._current or "")
        else:
            identity = self._identities.get(self._find(keying.local_fingerprint) or "")
        if identity is None:
            named = keying.local_fingerprint
            self._fail(
                session,
                "no DTLS certificate in this media worker"
                if named is None
                else f"the certificate our SDP named ({named[0]} {named[1][:23]}...) is no "
                "longer held by this media worker",
            )
            return
        try:
            session.endpoint = DtlsEndpoint(
                role=keying.role,
                certificate=identity[0],
                key=identity[1],
                fingerprints=keying.fingerprints,
                profiles=keying.profiles,
                now=now,
                generation=keying.generation,
            )
        except ValueError as exc:
            session.endpoint = None
            self._fail(session, str(exc))
            return
        self._transmit(session)
        session.timer = session.endpoint.get_timer(now)
        self._timed[session.key] = session
        self.next_due = min(self.next_due, session.timer or self.next_due)

    def _rtcp_unkeyed(self, session: _Session, data: bytes, *, lan: bool) -> bool:
        """True (dropped, counted) for RTCP of a DTLS-keyed WAN side without rtcp-mux: its own
        association on the RTCP port (RFC 5764 §4.1) is not run, so nothing keys it."""
        spec = session.spec
        if spec.wan_dtls is None or spec.wan_rtcp_mux:
            return False
        if session.rtcp is not None and session.rtcp.done is not None:
            return False  # keyed by the RTCP port's association
        counters = session.relay.counters
        if lan:
            counters.lan_in_packets += 1
            counters.lan_in_bytes += len(data)
        else:
            counters.wan_in_packets += 1
            counters.wan_in_bytes += len(data)
        counters.drop_rtcp_unkeyed += 1
        if self._warn is not None:  # the worker says it once, the counter says it per call
            self._warn(
                "a DTLS-SRTP stream without rtcp-mux: its RTCP is not carried on the WAN until "
                "the RTCP port's DTLS association completes (RFC 5764 §4.1; counted "
                "drop_rtcp_unkeyed)"
            )
        return True

    def _datagram(self, session: _Session, data: bytes, source: Address, now: float) -> None:
        provider = session.spec.provider_addr
        if session.parent is not None:
            provider = session.spec.provider_rtcp_addr or provider
        endpoint = session.endpoint
        if provider is None or source[0] != provider[0]:
            session.relay.counters.dtls_wrong_source += 1
            return
        if endpoint is None:
            return  # no association running (not started yet, or carried on after a crash)
        session.peer = source
        session.relay.counters.last_wan_packet = now
        endpoint.receive(data, now)
        self._transmit(session)
        if not session.changed:
            session.changed = True
            self._changed.append(session)

    def _settle(self, session: _Session, now: float) -> None:
        endpoint = session.endpoint
        if endpoint is None:
            return
        result = endpoint.result
        session.timer = endpoint.get_timer(now)
        owner = session.parent or session
        if isinstance(result, DtlsDone) and session.done is None:
            session.done = result
            session.relay.update(self._keyed(owner))
            session.relay.counters.dtls_handshakes += 1
            done, rtcp = owner.done, owner.rtcp.done if owner.rtcp is not None else None
            if done is not None:  # RTP's keys first; RTCP's with them once known
                self._send_report(
                    DtlsKeyed(
                        owner.call_id,
                        owner.index,
                        owner.generation,
                        done.tx,
                        done.rx,
                        rtcp.tx if rtcp is not None else None,
                        rtcp.rx if rtcp is not None else None,
                    )
                )
        elif isinstance(result, DtlsFailure):
            self._fail(session, result.reason)

    def _keyed(self, session: _Session) -> StreamSpec:
        spec, done = session.spec, session.done
        if spec.wan_dtls is None:
            return spec
        if done is not None:
            spec = structs.replace(spec, wan_tx=done.tx, wan_rx=done.rx)
        rtcp = session.rtcp.done if session.rtcp is not None else None
        if rtcp is not None and not spec.wan_rtcp_mux:
            spec = structs.replace(spec, wan_rtcp_tx=rtcp.tx, wan_rtcp_rx=rtcp.rx)
        return spec

    def _transmit(self, session: _Session) -> None:
        endpoint = session.endpoint
        if endpoint is None:
            return
        spec = session.spec
        dest = session.peer or spec.provider_addr
        if session.parent is not None and session.peer is None:
            # The provider's RTCP address: its a=rtcp, or its RTP port + 1 (RFC 3605).
            rtp = spec.provider_addr
            dest = spec.provider_rtcp_addr or (None if rtp is None else (rtp[0], rtp[1] + 1))
        out = endpoint.datagrams_to_send()
        if dest is None:
            return
        for datagram in out:
            # Lost like on the network when it fails: the retransmission timer repeats it.
            with contextlib.suppress(OSError):
                session.sock.sendto(datagram, dest)

    def _fail(self, session: _Session, reason: str) -> None:
        session.timer = None
        if session.parent is not None:
            # Only RTCP is at stake: it stays dropped (fail closed), the call goes on.
            if not session.reported and self._warn is not None:
                self._warn(f"DTLS on a WAN RTCP port failed, its RTCP stays dropped: {reason}")
            session.reported = True
            return
        if not session.reported:
            session.reported = True
            self._send_report(DtlsFailed(session.call_id, session.index, reason))
