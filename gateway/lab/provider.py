"""The demo's provider: a small SIP-over-TLS registrar and UAS that insists on SRTP.

It stands in for a hosted PBX or SIP trunk, built from the project's own SIP, SDP and SRTP
modules so the demo needs nothing installed:

- SIP only over TLS (its one listener is a TLS server; with ``client_ca`` it also demands the
  gateway's certificate, mutual TLS). Every connection's TLS version, cipher and client
  certificate are recorded for the report.
- REGISTER is accepted (optionally behind a digest challenge, RFC 3261 §22.4).
- An INVITE is answered only when its offer is RTP/SAVP with an ``a=crypto`` line in a suite
  it supports: the first such line wins (the offerer's order is its preference, RFC 4568 §7.1.1)
  and the answer carries the provider's own fresh key. Anything else gets 488 with a Warning.
  ``answer_without_crypto`` makes it misbehave (a plain RTP/AVP answer) for negative tests.
- Media ends here, nothing is relayed: every datagram reaching its media ports is counted and
  classified (SRTP that authenticates, SRTP that fails, and packets that are plain RTP/RTCP:
  the "plaintext seen on the WAN side" figure), the decrypted audio recorded, and its own tone
  sent back as SRTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.certs.material import build_server_context, load_identity
from gateway.lab import digest
from gateway.lab.rtp import (
    PCMU,
    DatagramEndpoint,
    MediaLog,
    TonePlayer,
    open_rtp_pair,
    parse_rtp,
)
from gateway.media.control import SrtpKeying
from gateway.media.relay import is_plain_rtcp
from gateway.media.srtp import SrtpError, SrtpProtector, SrtpUnprotector
from gateway.media.suites import SrtpSuite
from gateway.sdp.crypto import CryptoAttribute, new_crypto
from gateway.sdp.errors import SdpError
from gateway.sdp.model import SessionDescription
from gateway.sip.errors import SipError, SipParseError
from gateway.sip.message import SipRequest, SipResponse, make_response, new_tag
from gateway.transport.stream import SipStreamConnection

_SECURE = {"RTP/SAVP", "RTP/SAVPF"}


# --------------------------------------------------------------------------- offer/answer


@dataclass(frozen=True)
class Accepted:
    """An acceptable offer: the answer to send and the keys of both directions."""

    answer: bytes
    #: Where the offerer wants its media (the gateway's WAN port).
    remote: tuple[str, int]
    suite: SrtpSuite | None
    #: Keying of what we receive (the offerer's key) and what we send (our fresh key).
    rx: SrtpKeying | None
    tx: SrtpKeying | None


@dataclass(frozen=True)
class Refused:
    """An offer the provider will not take: 488 with this Warning text."""

    reason: str
    status: int = 488


def answer_offer(
    offer: bytes,
    *,
    address: str,
    port: int,
    suites: Iterable[SrtpSuite] = tuple(SrtpSuite),
    answer_without_crypto: bool = False,
) -> Accepted | Refused:
    """Decide on an SDP offer (RFC 3264 §6, RFC 4568 §7.1.2), sans IO.

    Only the first audio stream is taken; PCMU must be among its formats. Without
    ``answer_without_crypto`` the stream must be RTP/SAVP(F) with a supported suite.
    """
    try:
        sdp = SessionDescription.parse(offer)
    except SdpError as exc:
        return Refused(f"unreadable SDP offer: {exc}", 400)
    audio = next((m for m in sdp.media if m.media == "audio" and m.port != 0), None)
    if audio is None:
        return Refused("no audio stream in the offer")
    connection = audio.effective_connection
    if connection is None:
        return Refused("no connection address for the audio stream")
    if str(PCMU) not in audio.formats:
        return Refused("PCMU is the only codec this provider speaks")
    remote = (connection.host, audio.port)
    rtcp_mux = audio.rtcp_mux
    if answer_without_crypto:
        return Accepted(
            _answer_sdp(address, port, "RTP/AVP", None, rtcp_mux), remote, None, None, None
        )
    if audio.proto not in _SECURE:
        return Refused(f"{audio.proto} refused: this provider takes only SRTP (RTP/SAVP)")
    allowed = set(suites)
    chosen: CryptoAttribute | None = None
    for value in audio.get_attributes("crypto"):
        if value is None:
            continue
        try:
            crypto = CryptoAttribute.parse(value)
        except SdpError:
            continue  # a line we cannot use does not spoil the others (RFC 4568 §7.1.2)
        if crypto.suite in allowed and crypto.mki is None:
            chosen = crypto
            break
    if chosen is None:
        return Refused("no acceptable a=crypto line (SDES, RFC 4568) in the offer")
    ours = new_crypto(chosen.tag, chosen.suite)
    answer = _answer_sdp(address, port, audio.proto, ours, rtcp_mux)
    return Accepted(
        answer,
        remote,
        chosen.suite,
        SrtpKeying(chosen.suite.value, chosen.master),
        SrtpKeying(ours.suite.value, ours.master),
    )


def _answer_sdp(
    address: str, port: int, proto: str, crypto: CryptoAttribute | None, rtcp_mux: bool
) -> bytes:
    session = secrets.randbelow(10**9)
    lines = [
        "v=0",
        f"o=provider {session} {session} IN IP4 {address}",
        "s=lab provider",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {proto} {PCMU}",
        f"a=rtpmap:{PCMU} PCMU/8000",
        "a=ptime:20",
        "a=sendrecv",
    ]
    if rtcp_mux:
        lines.append("a=rtcp-mux")
    if crypto is not None:
        lines.append(f"a=crypto:{crypto.format()}")
    return ("\r\n".join(lines) + "\r\n").encode()


# --------------------------------------------------------------------------- media


@dataclass
class WanMediaCounters:
    """Everything that reached the provider's media ports, classified."""

    #: Every datagram, whatever it was: the raw listener's count.
    received: int = 0
    #: SRTP/SRTCP that authenticated and decrypted under the agreed key.
    srtp_ok: int = 0
    #: Datagrams that did not authenticate (wrong key, tampered, or not SRTP at all).
    auth_failed: int = 0
    #: Datagrams that are plain RTP or RTCP: audio anyone on the path could hear.
    plaintext: int = 0


@dataclass
class ProviderCall:
    """One call the provider answered (or refused)."""

    call_id: str
    to_tag: str
    status: int = 0
    reason: str = ""
    suite: SrtpSuite | None = None
    remote: tuple[str, int] | None = None
    #: What the provider received (decrypted) and what it sent.
    received: MediaLog = field(default_factory=MediaLog)
    sent: MediaLog = field(default_factory=MediaLog)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    answer: bytes = b""
    player: asyncio.Task[None] | None = None
    rx: SrtpUnprotector | None = None
    tx: SrtpProtector | None = None
    rtp: DatagramEndpoint | None = None
    rtcp: DatagramEndpoint | None = None


@dataclass(frozen=True)
class TlsSession:
    """One accepted connection: how it was protected and who the client proved to be."""

    peer: tuple[str, int]
    version: str | None
    cipher: str | None
    #: Common name of the verified client certificate (None without mutual TLS).
    client_subject: str | None


class LabProvider:
    """A SIP/TLS registrar and UAS on ``address`` that answers only SRTP calls."""

    def __init__(
        self,
        *,
        address: str,
        certificate: Path,
        private_key: Path,
        client_ca: Path | None = None,
        port: int = 0,
        suites: Iterable[SrtpSuite] = tuple(SrtpSuite),
        answer_without_crypto: bool = False,
        tone_hz: float = 1000.0,
        tone_seconds: float | None = None,
        realm: str | None = None,
        password: str | None = None,
        known_plaintext: Iterable[bytes] = (),
    ) -> None:
        self.address = address
        self._requested_port = port
        self._certificate = certificate
        self._private_key = private_key
        self._client_ca = client_ca
        self.suites = tuple(suites)
        self.answer_without_crypto = answer_without_crypto
        self.tone_hz = tone_hz
        #: How long to play after the ACK; None plays until the BYE.
        self.tone_seconds = tone_seconds
        self.realm = realm
        self.password = password
        #: Payloads that, seen in a WAN datagram, prove plaintext audio (the phone's tone).
        self.known_plaintext = frozenset(known_plaintext)
        self.media = WanMediaCounters()
        self.registrations: dict[str, str] = {}
        self.calls: dict[str, ProviderCall] = {}
        self.tls_sessions: list[TlsSession] = []
        self.requests: list[str] = []
        self._nonces: set[str] = set()
        self._server: asyncio.Server | None = None
        self._connections: set[SipStreamConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        identity = load_identity(self._certificate, self._private_key)
        context = build_server_context(
            identity, str(self._client_ca) if self._client_ca is not None else None
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            self.address,
            self._requested_port,
            ssl=context,
            ssl_handshake_timeout=5.0,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for call in self.calls.values():
            if call.player is not None:
                call.player.cancel()
        tasks = [t for t in self._tasks] + [
            c.player for c in self.calls.values() if c.player is not None
        ]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for call in self.calls.values():
            for endpoint in (call.rtp, call.rtcp):
                if endpoint is not None:
                    endpoint.close()
        for connection in list(self._connections):
            connection.close("provider stopping")
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def only_call(self) -> ProviderCall | None:
        """The most recent call (the demo places one)."""
        return next(reversed(self.calls.values()), None)

    # ------------------------------------------------------------ signalling

    def _new_connection(self) -> SipStreamConnection:
        connection = SipStreamConnection(
            on_message=self._on_message,
            on_error=self._on_error,
            on_close=self._on_close,
        )
        self._connections.add(connection)
        return connection

    def _on_close(self, connection: SipStreamConnection, reason: str) -> None:
        self._connections.discard(connection)

    def _on_error(self, connection: SipStreamConnection, error: SipParseError) -> None:
        partial = error.partial
        if isinstance(partial, SipRequest) and partial.method != "ACK":
            with contextlib.suppress(SipError):
                connection.write(bytes(make_response(partial, error.status_hint)))

    def refresh_tls_sessions(self) -> list[TlsSession]:
        """Record every open connection's TLS facts (they are otherwise recorded on its first
        message) and return all sessions seen."""
        for connection in list(self._connections):
            self._record_tls(connection)
        return self.tls_sessions

    def _record_tls(self, connection: SipStreamConnection) -> None:
        if any(s.peer == connection.peer for s in self.tls_sessions):
            return
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if not isinstance(ssl_object, ssl.SSLObject):
            return
        cipher = ssl_object.cipher()
        self.tls_sessions.append(
            TlsSession(
                connection.peer,
                ssl_object.version(),
                cipher[0] if cipher else None,
                _common_name(ssl_object.getpeercert()),
            )
        )

    def _on_message(
        self, connection: SipStreamConnection, message: SipRequest | SipResponse
    ) -> None:
        self._record_tls(connection)
        if isinstance(message, SipResponse):
            return  # the provider sends no requests of its own
        self.requests.append(message.method)
        try:
            self._on_request(connection, message)
        except (SipError, SdpError) as exc:
            if message.method != "ACK":
                with contextlib.suppress(SipError):
                    connection.write(bytes(make_response(message, exc.status_hint)))

    def _reply(
        self,
        connection: SipStreamConnection,
        request: SipRequest,
        status: int,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        response = make_response(request, status, to_tag=to_tag, headers=headers)
        if body:
            response.set("Content-Type", "application/sdp")
            response.body = body
        connection.write(bytes(response))

    def _contact(self) -> str:
        return f"<sip:provider@{self.address}:{self.port};transport=tls>"

    def _on_request(self, connection: SipStreamConnection, request: SipRequest) -> None:
        method = request.method
        if method == "REGISTER":
            self._on_register(connection, request)
        elif method == "INVITE":
            existing = self.calls.get(request.call_id)
            if existing is not None and request.to.tag:
                # A re-INVITE (refresh, hold): keep the agreement, repeat the answer.
                self._reply(
                    connection,
                    request,
                    200,
                    to_tag=existing.to_tag,
                    headers=[("Contact", self._contact())],
                    body=existing.answer,
                )
                return
            task = asyncio.get_running_loop().create_task(self._on_invite(connection, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif method == "ACK":
            call = self.calls.get(request.call_id)
            if call is not None and call.status == 200 and not call.confirmed.is_set():
                call.confirmed.set()
                call.player = asyncio.get_running_loop().create_task(self._play(call))
        elif method == "BYE":
            call = self.calls.get(request.call_id)
            if call is None:
                self._reply(connection, request, 481)
                return
            self._end(call)
            self._reply(connection, request, 200)
        elif method == "CANCEL":
            self._reply(connection, request, 200)
        elif method == "OPTIONS":
            self._reply(connection, request, 200, to_tag=new_tag())
        else:
            self._reply(connection, request, 501)

    def _on_register(self, connection: SipStreamConnection, request: SipRequest) -> None:
        if self.password is not None and self.realm is not None:
            authorization = request.get("Authorization")
            user = (
                digest.check(
                    authorization,
                    method="REGISTER",
                    password=self.password,
                    realm=self.realm,
                    nonces=self._nonces,
                )
                if authorization
                else None
            )
            if user is None:
                nonce, challenge = digest.new_challenge(self.realm)
                self._nonces.add(nonce)
                self._reply(
                    connection,
                    request,
                    401,
                    to_tag=new_tag(),
                    headers=[("WWW-Authenticate", challenge)],
                )
                return
        aor = str(request.to.uri)
        expires = request.expires if request.expires is not None else 3600
        contacts = request.contacts
        headers: list[tuple[str, str]] = []
        if contacts:
            contact = contacts[0]
            granted = int(contact.param("expires") or expires)
            if granted == 0:
                self.registrations.pop(aor, None)
            else:
                self.registrations[aor] = str(contact.uri)
                headers.append(("Contact", f"<{contact.uri}>;expires={granted}"))
        self._reply(connection, request, 200, to_tag=new_tag(), headers=headers)

    async def _on_invite(self, connection: SipStreamConnection, request: SipRequest) -> None:
        call = ProviderCall(request.call_id, new_tag())
        self.calls[request.call_id] = call
        self._reply(connection, request, 100)
        try:
            call.rtp, call.rtcp = await open_rtp_pair(
                self.address, lambda data, addr, at: self._on_media(call, data, at)
            )
        except OSError as exc:
            call.status, call.reason = 503, f"no media port: {exc}"
            self._reply(connection, request, 503, to_tag=call.to_tag)
            return
        decision = answer_offer(
            request.body,
            address=self.address,
            port=call.rtp.local[1],
            suites=self.suites,
            answer_without_crypto=self.answer_without_crypto,
        )
        if isinstance(decision, Refused):
            call.status, call.reason = decision.status, decision.reason
            self._reply(
                connection,
                request,
                decision.status,
                to_tag=call.to_tag,
                headers=[("Warning", f'399 provider.lab "{decision.reason}"')],
            )
            return
        call.status, call.suite, call.remote = 200, decision.suite, decision.remote
        call.answer = decision.answer
        call.rx = SrtpUnprotector(decision.rx) if decision.rx is not None else None
        call.tx = SrtpProtector(decision.tx) if decision.tx is not None else None
        self._reply(connection, request, 180, to_tag=call.to_tag)
        self._reply(
            connection,
            request,
            200,
            to_tag=call.to_tag,
            headers=[("Contact", self._contact())],
            body=decision.answer,
        )

    def _end(self, call: ProviderCall) -> None:
        if call.player is not None:
            call.player.cancel()
        call.ended.set()

    # ------------------------------------------------------------ media

    async def _play(self, call: ProviderCall) -> None:
        rtp, remote = call.rtp, call.remote
        assert rtp is not None and remote is not None
        protect = call.tx.protect if call.tx is not None else None
        player = TonePlayer(
            lambda data: rtp.sendto(data, remote), self.tone_hz, call.sent, protect=protect
        )
        await player.play(self.tone_seconds if self.tone_seconds is not None else 3600.0)

    def _on_media(self, call: ProviderCall, data: bytes, at: float) -> None:
        counters = self.media
        counters.received += 1
        rtcp = len(data) > 1 and 192 <= data[1] <= 223  # RFC 5761 §4 demultiplexing
        if call.rx is not None:
            try:
                plain = call.rx.unprotect_rtcp(data) if rtcp else call.rx.unprotect(data)
            except SrtpError:
                counters.auth_failed += 1
            else:
                counters.srtp_ok += 1
                if not rtcp:
                    packet = parse_rtp(plain)
                    if packet is not None:
                        call.received.record_arrival(packet, at)
                return
        if self._is_plaintext(data, rtcp):
            counters.plaintext += 1
        elif call.rx is None:
            # No key agreed (a refused or plain call): whatever came is not protected media.
            counters.auth_failed += 1
            packet = parse_rtp(data)
            if packet is not None:
                call.received.record_arrival(packet, at)

    def _is_plaintext(self, data: bytes, rtcp: bool) -> bool:
        """Plain RTP or RTCP, judged only on packets that failed SRTP (or had no key).

        RTCP: its length fields add up to the datagram, which SRTCP's trailer prevents. RTP:
        its payload is one the phone is known to send in clear, or a whole number of 10 ms
        G.711 frames, which leaves no room for an SRTP authentication tag.
        """
        if rtcp:
            return is_plain_rtcp(data)
        packet = parse_rtp(data)
        if packet is None:
            return False
        if packet.payload in self.known_plaintext:
            return True
        return packet.payload_type == PCMU and len(packet.payload) % 80 == 0


def _common_name(cert: object) -> str | None:
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
