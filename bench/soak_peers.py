"""The soak's peers: phones that also cancel, a provider that answers by number, and one media
pump that plays every call's RTP (phone side, plain) and SRTP (provider side) at 20 ms.

- :class:`SoakPhone` is the lab phone (:mod:`gateway.lab.phone`) with its SDP pointing at the
  pump's phone socket and a CANCEL of its pending INVITE (RFC 3261 §9.1: same Request-URI,
  Call-ID, From, To, CSeq number and top Via as the INVITE).
- :class:`SoakProvider` is the lab provider (:mod:`gateway.lab.provider`, SIP over TLS, SDES
  RFC 4568) whose answer names the pump's provider socket; the dialled user decides the answer:
  :data:`CANCEL_ME` rings (180) until the CANCEL and then answers 487 (§9.2), :data:`BUSY`
  gets 486, anything else 200 with SDP. It forgets calls once they end, so an hour of churn
  does not grow the soak's own memory.
- :class:`MediaPump` sends one packet per call and direction every 20 ms from two sockets
  (the gateway latches nothing else: the SDP of every call names these sockets) and counts
  what the gateway relays back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider, ProviderCall, Refused, answer_offer
from gateway.media.srtp import SrtpError, SrtpProtector
from gateway.sip.errors import SipError
from gateway.sip.message import SipRequest, SipResponse, new_tag
from gateway.transport.stream import SipStreamConnection

__all__ = ["BUSY", "CANCEL_ME", "MediaPump", "SoakPhone", "SoakProvider"]

#: Dialled users with a scripted answer at the provider.
CANCEL_ME = "300"
BUSY = "486"
#: How long the provider rings a CANCEL_ME call at most before giving up with 480.
RING_LIMIT = 15.0


class SoakPhone(LabPhone):
    """A lab phone with no media sockets of its own (the pump plays) that can CANCEL."""

    def __init__(self, *, media_port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pump_port = media_port
        self.cancel_responses: list[int] = []
        #: Call-IDs of this phone's INVITEs that drew any response (100 Trying at least): the
        #: gateway saw them. The soak's account tells a call the gateway saw and did not record
        #: from one whose INVITE never reached it (a datagram the kernel dropped).
        self.heard: set[str] = set()

    async def start(self) -> None:
        from gateway.lab.rtp import open_endpoint

        self._sip = await open_endpoint(self.address, 0, self._on_sip)

    @property
    def media_port(self) -> int:
        return self._pump_port

    def ringing(self) -> bool:
        """Whether the pending INVITE has had a 180 (or any provisional above 100)."""
        return any(
            r.status > 100
            for t in self._transactions.values()
            if t.request.method == "INVITE"
            for r in t.provisional
        )

    def invite_pending(self) -> bool:
        return any(
            t.request.method == "INVITE" and not t.final.done() for t in self._transactions.values()
        )

    async def cancel(self) -> None:
        """CANCEL the pending INVITE; retransmitted over UDP until the INVITE is final."""
        invite = next(
            (t.request for t in self._transactions.values() if t.request.method == "INVITE"),
            None,
        )
        if invite is None:
            return
        cancel = SipRequest("CANCEL", invite.uri.copy())
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            value = invite.get(name)
            if value is not None:
                cancel.add(name, value)
        cancel.add("CSeq", f"{invite.cseq.seq} CANCEL")
        data = bytes(cancel)
        interval = 0.5
        for _ in range(6):
            assert self._sip is not None
            self._sip.sendto(data, self.proxy)
            if self.cancel_responses or not self.invite_pending():
                return
            await asyncio.sleep(interval)
            interval = min(interval * 2, 4.0)

    def _on_response(self, response: SipResponse) -> None:
        try:
            method = response.cseq.method
        except SipError:
            return
        if method == "CANCEL":
            # Shares the INVITE's branch: must not complete the INVITE's transaction.
            self.cancel_responses.append(response.status)
            return
        if method == "INVITE":
            with contextlib.suppress(SipError):
                self.heard.add(response.call_id)
        super()._on_response(response)


@dataclass
class Agreed:
    """What the provider agreed for one call: where the gateway wants SRTP and the key."""

    wan: tuple[str, int]
    protector: SrtpProtector


class SoakProvider(LabProvider):
    """The lab provider; answers by dialled user and sends media from the pump's socket."""

    def __init__(self, *, media: tuple[str, int], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.media_target = media
        #: Calling user (the phone's extension, kept in the WAN leg's From) -> agreement.
        self.agreed: dict[str, Agreed] = {}
        self._ringing: dict[str, tuple[SipStreamConnection, SipRequest, asyncio.Event]] = {}
        self.drops = 0

    def drop_connections(self) -> int:
        """Close every TLS connection from the gateway (a provider-side reconnect)."""
        connections = list(self._connections)
        for connection in connections:
            connection.close("soak: provider drops the connection")
        self.drops += 1
        return len(connections)

    @property
    def connected(self) -> int:
        return len(self._connections)

    def _on_request(self, connection: SipStreamConnection, request: SipRequest) -> None:
        if request.method == "CANCEL":
            self._reply(connection, request, 200)
            pending = self._ringing.get(request.call_id)
            if pending is not None:
                pending[2].set()
            return
        if request.method == "BYE":
            self.calls.pop(request.call_id, None)
            self._reply(connection, request, 200)
            return
        if request.method == "ACK":
            call = self.calls.get(request.call_id)
            if call is not None and call.status >= 300:
                self.calls.pop(request.call_id, None)
            return  # the pump plays; nothing to start here
        super()._on_request(connection, request)

    async def _on_invite(self, connection: SipStreamConnection, request: SipRequest) -> None:
        call = ProviderCall(request.call_id, new_tag())
        self.calls[request.call_id] = call
        user = getattr(request.uri, "user", None) or ""
        if user == BUSY:
            call.status = 486
            self._reply(connection, request, 486, to_tag=call.to_tag)
            return
        if user == CANCEL_ME:
            cancelled = asyncio.Event()
            self._ringing[request.call_id] = (connection, request, cancelled)
            self._reply(connection, request, 180, to_tag=call.to_tag)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancelled.wait(), RING_LIMIT)
            finally:
                self._ringing.pop(request.call_id, None)
            call.status = 487 if cancelled.is_set() else 480
            self._reply(connection, request, call.status, to_tag=call.to_tag)
            return
        decision = answer_offer(
            request.body,
            address=self.media_target[0],
            port=self.media_target[1],
            suites=self.suites,
        )
        if isinstance(decision, Refused) or decision.tx is None:
            call.status = 488
            self._reply(connection, request, 488, to_tag=call.to_tag)
            return
        call.status = 200
        call.answer = decision.answer
        caller = getattr(request.from_.uri, "user", None) or ""
        self.agreed[caller] = Agreed(decision.remote, SrtpProtector(decision.tx))
        self._reply(
            connection,
            request,
            200,
            to_tag=call.to_tag,
            headers=[("Contact", self._contact())],
            body=decision.answer,
        )


@dataclass
class _Stream:
    lan: tuple[str, int]
    wan: tuple[str, int]
    protector: SrtpProtector
    ssrc_phone: int
    ssrc_provider: int
    seq: int = 0
    ts: int = 0


@dataclass
class PumpCounters:
    phone_sent: int = 0
    provider_sent: int = 0
    #: Datagrams the gateway relayed to the phone socket (plain RTP/RTCP).
    phone_received: int = 0
    #: Datagrams the gateway relayed to the provider socket (SRTP/SRTCP).
    provider_received: int = 0
    send_errors: int = 0
    #: Ticks that ran more than one interval late (the host was busy).
    late_ticks: int = 0


class MediaPump:
    """Two sockets; every 20 ms one G.711-sized packet per call each way."""

    PAYLOAD = b"\xff" * 160

    def __init__(self, phone_address: str, provider_address: str, ptime: float = 0.02) -> None:
        self.ptime = ptime
        self.counters = PumpCounters()
        self._streams: dict[str, _Stream] = {}
        self.phone = self._socket(phone_address)
        self.provider = self._socket(provider_address)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _socket(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((address, 0))
        sock.setblocking(False)
        return sock

    @property
    def phone_port(self) -> int:
        return int(self.phone.getsockname()[1])

    @property
    def provider_port(self) -> int:
        return int(self.provider.getsockname()[1])

    @property
    def address_of_provider(self) -> tuple[str, int]:
        host, port = self.provider.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.phone.fileno(), self._drain, self.phone, "phone_received")
        loop.add_reader(self.provider.fileno(), self._drain, self.provider, "provider_received")
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sock in (self.phone, self.provider):
            loop.remove_reader(sock.fileno())
            sock.close()

    def add(
        self, key: str, lan: tuple[str, int], wan: tuple[str, int], protector: SrtpProtector
    ) -> None:
        self._streams[key] = _Stream(
            lan, wan, protector, secrets.randbits(32), secrets.randbits(32)
        )

    def remove(self, key: str) -> None:
        self._streams.pop(key, None)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def _drain(self, sock: socket.socket, counter: str) -> None:
        n = 0
        while True:
            try:
                sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # ICMP errors of a closed port come back here
            n += 1
        setattr(self.counters, counter, getattr(self.counters, counter) + n)

    async def _run(self) -> None:
        next_at = time.monotonic()
        c = self.counters
        while True:
            for s in list(self._streams.values()):
                s.seq = (s.seq + 1) & 0xFFFF
                s.ts = (s.ts + 160) & 0xFFFFFFFF
                rtp = struct.pack("!BBHII", 0x80, 0, s.seq, s.ts, s.ssrc_phone) + self.PAYLOAD
                wan = struct.pack("!BBHII", 0x80, 0, s.seq, s.ts, s.ssrc_provider) + self.PAYLOAD
                try:
                    self.phone.sendto(rtp, s.lan)
                    c.phone_sent += 1
                    self.provider.sendto(s.protector.protect(wan), s.wan)
                    c.provider_sent += 1
                except (OSError, SrtpError):
                    c.send_errors += 1
            next_at += self.ptime
            delay = next_at - time.monotonic()
            if delay < -self.ptime:
                c.late_ticks += 1
                next_at = time.monotonic()  # catch up without a burst
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))
