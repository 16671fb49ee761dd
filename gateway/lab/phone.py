"""The demo's legacy phone: plain SIP over UDP and plain RTP/AVP G.711 µ-law, nothing more.

It behaves like the desk phones the gateway exists for: it registers with its outbound proxy
(the gateway's LAN side), places a call with a PCMU offer, ACKs, plays a 440 Hz tone at 20 ms
pacing while recording what comes back, and hangs up. Each sequence number's send and arrival
time is logged for the latency figures (:mod:`gateway.lab.rtp`).

Only what a call needs is implemented (RFC 3261 §8.1 UAC, §13.2 INVITE client, §17.1.2 request
retransmission over UDP, §15.1.1 BYE, answering the gateway's in-dialog BYE and retransmitted
2xx). Digest credentials are sent when the provider challenges and a password is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

from gateway.lab import digest
from gateway.lab.rtp import (
    PCMU,
    DatagramEndpoint,
    MediaLog,
    TonePlayer,
    open_endpoint,
    open_rtp_pair,
    parse_rtp,
)
from gateway.sdp.errors import SdpError
from gateway.sdp.model import SessionDescription
from gateway.sip.errors import SipError
from gateway.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from gateway.sip.uri import parse_uri

#: RFC 3261 §17.1.1.1 defaults; Timer B/F (64*T1) bounds every transaction.
T1 = 0.5
T2 = 4.0


class PhoneError(Exception):
    """The phone could not do what was asked (no answer, bad answer)."""


@dataclass
class _Transaction:
    request: SipRequest
    final: asyncio.Future[SipResponse]
    provisional: list[SipResponse] = field(default_factory=list)


@dataclass
class CallState:
    """The phone's dialog and media for its one call."""

    call_id: str
    local_tag: str
    remote_tag: str | None = None
    remote_target: str | None = None
    #: The To header of the 2xx (the remote identity and tag), for in-dialog requests.
    remote_to: str | None = None
    cseq: int = 1
    remote_media: tuple[str, int] | None = None
    status: int | None = None
    warning: str | None = None
    ended_by_peer: bool = False


class LabPhone:
    """A UDP SIP user agent with one line: register, call, tone, hang up."""

    def __init__(
        self,
        *,
        address: str,
        proxy: tuple[str, int],
        user: str = "100",
        tone_hz: float = 440.0,
        password: str | None = None,
        timeout: float = 64 * T1,
        user_agent: str = "gateway-lab-phone",
    ) -> None:
        self.address = address
        #: Sent in every request (the gateway's phone inventory reads it).
        self.user_agent = user_agent
        #: Longest wait for a final response (Timer B/F, §17.1.1.2).
        self.timeout = timeout
        self.proxy = proxy
        self.user = user
        self.tone_hz = tone_hz
        self.password = password
        self._sip: DatagramEndpoint | None = None
        self._rtp: DatagramEndpoint | None = None
        self._rtcp: DatagramEndpoint | None = None
        self._transactions: dict[str, _Transaction] = {}
        self._register_call_id = new_call_id()
        self._register_tag = new_tag()
        self._register_cseq = 0
        self.call: CallState | None = None
        #: What the phone sent (send times) and received (arrivals, payloads).
        self.sent = MediaLog()
        self.received = MediaLog()
        #: Datagrams on the RTP/RTCP ports that were not RTP (e.g. RTCP from the gateway).
        self.other_media = 0
        self._player: TonePlayer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._sip = await open_endpoint(self.address, 0, self._on_sip)
        self._rtp, self._rtcp = await open_rtp_pair(self.address, self._on_media)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for transaction in self._transactions.values():
            if not transaction.final.done():
                transaction.final.cancel()
        for endpoint in (self._sip, self._rtp, self._rtcp):
            if endpoint is not None:
                endpoint.close()

    @property
    def sip_address(self) -> tuple[str, int]:
        assert self._sip is not None
        return self._sip.local

    @property
    def media_port(self) -> int:
        assert self._rtp is not None
        return self._rtp.local[1]

    # ------------------------------------------------------------ actions

    async def register(self, expires: int = 300) -> SipResponse:
        """REGISTER with the proxy; answers one digest challenge when a password is set."""
        response = await self._register_once(expires, None)
        if response.status in (401, 407) and self.password is not None:
            response = await self._register_once(expires, response)
        return response

    async def _register_once(self, expires: int, challenge: SipResponse | None) -> SipResponse:
        self._register_cseq += 1
        host, port = self.proxy
        request = self._request(
            "REGISTER",
            f"sip:{host}:{port}",
            to=f"<sip:{self.user}@{host}>",
            from_tag=self._register_tag,
            call_id=self._register_call_id,
            cseq=self._register_cseq,
        )
        request.add("Expires", str(expires))
        self._authorize(request, challenge)
        return await self._transact(request)

    async def dial(self, number: str, timeout: float = 10.0) -> CallState:
        """INVITE ``number`` with a plain PCMU offer; returns the call with its final status.

        A 2xx is ACKed and the provider's media address taken from the answer; a failure is
        ACKed by the transaction (§17.1.1.3) and its Warning kept for the report.
        """
        host, port = self.proxy
        call = CallState(call_id=new_call_id(), local_tag=new_tag())
        self.call = call
        ruri = f"sip:{number}@{host}:{port}"
        invite = self._request(
            "INVITE",
            ruri,
            to=f"<sip:{number}@{host}>",
            from_tag=call.local_tag,
            call_id=call.call_id,
            cseq=call.cseq,
        )
        invite.set("Content-Type", "application/sdp")
        invite.body = self._offer()
        response = await asyncio.wait_for(self._transact(invite), timeout)
        call.status = response.status
        call.warning = response.get("Warning")
        if 200 <= response.status < 300:
            call.remote_tag = response.to.tag
            contacts = response.contacts
            call.remote_target = str(contacts[0].uri) if contacts else ruri
            call.remote_to = response.get("To")
            self._ack(response)
            call.remote_media = _media_address(response.body)
        return call

    async def play(self, seconds: float) -> None:
        """Play the tone to the answer's media address for ``seconds``."""
        call = self.call
        if call is None or call.remote_media is None or self._rtp is None:
            raise PhoneError("no answered call to send audio on")
        rtp, destination = self._rtp, call.remote_media
        self._player = TonePlayer(
            lambda data: rtp.sendto(data, destination), self.tone_hz, self.sent
        )
        await self._player.play(seconds)

    async def hang_up(self, timeout: float = 5.0) -> SipResponse | None:
        """BYE the call (None when the far end already ended it)."""
        call = self.call
        if call is None or call.remote_target is None or call.remote_to is None:
            return None
        if call.ended_by_peer:
            return None
        call.cseq += 1
        bye = self._request(
            "BYE",
            call.remote_target,
            to=call.remote_to,
            from_tag=call.local_tag,
            call_id=call.call_id,
            cseq=call.cseq,
            contact=False,
        )
        return await asyncio.wait_for(self._transact(bye), timeout)

    # ------------------------------------------------------------ building

    def _request(
        self,
        method: str,
        ruri: str,
        *,
        to: str,
        from_tag: str,
        call_id: str,
        cseq: int,
        contact: bool = True,
        branch: str | None = None,
    ) -> SipRequest:
        host, port = self.sip_address
        request = SipRequest(method, parse_uri(ruri))
        request.add("Via", f"SIP/2.0/UDP {host}:{port};branch={branch or new_branch()};rport")
        request.add("Max-Forwards", "70")
        request.add("From", f"<sip:{self.user}@{self.proxy[0]}>;tag={from_tag}")
        request.add("To", to)
        request.add("Call-ID", call_id)
        request.add("CSeq", f"{cseq} {method}")
        if contact:
            request.add("Contact", f"<sip:{self.user}@{host}:{port}>")
        request.add("User-Agent", self.user_agent)
        return request

    def _offer(self) -> bytes:
        session = secrets.randbelow(10**9)
        lines = [
            "v=0",
            f"o=phone {session} {session} IN IP4 {self.address}",
            "s=lab phone",
            f"c=IN IP4 {self.address}",
            "t=0 0",
            f"m=audio {self.media_port} RTP/AVP {PCMU}",
            f"a=rtpmap:{PCMU} PCMU/8000",
            "a=ptime:20",
            "a=sendrecv",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _authorize(self, request: SipRequest, challenge: SipResponse | None) -> None:
        if challenge is None or self.password is None:
            return
        header, answer = (
            ("WWW-Authenticate", "Authorization")
            if challenge.status == 401
            else ("Proxy-Authenticate", "Proxy-Authorization")
        )
        value = challenge.get(header)
        if value:
            request.add(
                answer,
                digest.authorization(
                    value,
                    user=self.user,
                    password=self.password,
                    method=request.method,
                    uri=str(request.uri),
                ),
            )

    def _ack(self, response: SipResponse) -> None:
        """ACK a 2xx: a new transaction to the remote target (§13.2.2.4)."""
        call = self.call
        assert call is not None and call.remote_target is not None
        ack = self._request(
            "ACK",
            call.remote_target,
            to=str(response.to),
            from_tag=call.local_tag,
            call_id=call.call_id,
            cseq=response.cseq.seq,
            contact=False,
        )
        self._send(ack)

    # ------------------------------------------------------------ transport

    def _send(self, message: SipRequest | SipResponse) -> None:
        assert self._sip is not None
        self._sip.sendto(bytes(message), self.proxy)

    async def _transact(self, request: SipRequest) -> SipResponse:
        """Send and wait for the final response, retransmitting as §17.1.1.2/§17.1.2.2 say."""
        branch = request.top_via.branch
        assert branch is not None
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        transaction = _Transaction(request, future)
        self._transactions[branch] = transaction
        data = bytes(request)
        interval = T1
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    assert self._sip is not None
                    self._sip.sendto(data, self.proxy)
                    try:
                        return await asyncio.wait_for(asyncio.shield(future), interval)
                    except TimeoutError:
                        pass
                    if transaction.provisional and request.method == "INVITE":
                        return await future  # a provisional stops INVITE retransmission
                    interval = min(interval * 2, T2)
        except TimeoutError:
            raise PhoneError(f"no final response to {request.method}") from None
        finally:
            self._transactions.pop(branch, None)

    def _on_sip(self, data: bytes, addr: tuple[str, int], at: float) -> None:
        if not data.strip(b"\r\n"):
            return
        try:
            message = parse_message(data)
        except SipError:
            return
        if isinstance(message, SipResponse):
            self._on_response(message)
        else:
            self._on_request(message, addr)

    def _on_response(self, response: SipResponse) -> None:
        try:
            branch = response.top_via.branch
            method = response.cseq.method
        except SipError:
            return
        transaction = self._transactions.get(branch or "")
        if transaction is None:
            # A retransmitted 2xx after our ACK went out (§13.2.2.4): ACK it again.
            call = self.call
            if (
                method == "INVITE"
                and 200 <= response.status < 300
                and call is not None
                and call.remote_target is not None
                and response.call_id == call.call_id
            ):
                self._ack(response)
            return
        if response.status < 200:
            transaction.provisional.append(response)
            return
        if method == "INVITE" and response.status >= 300:
            # §17.1.1.3: the transaction ACKs a failure itself, same branch, To with the tag.
            invite = transaction.request
            ack = SipRequest("ACK", invite.uri.copy())
            for name in ("Via", "Max-Forwards", "From", "Call-ID"):
                value = invite.get(name)
                if value is not None:
                    ack.add(name, value)
            ack.add("To", response.get("To") or "")
            ack.add("CSeq", f"{invite.cseq.seq} ACK")
            self._send(ack)
        if not transaction.final.done():
            transaction.final.set_result(response)

    def _on_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        if request.method == "ACK":
            return
        call = self.call
        if request.method == "BYE" and call is not None and request.call_id == call.call_id:
            call.ended_by_peer = True
            status = 200
        elif request.method == "OPTIONS":
            status = 200
        elif request.method == "BYE":
            status = 481
        else:
            status = 501
        try:
            response = make_response(request, status, to_tag=new_tag())
        except SipError:
            return
        assert self._sip is not None
        self._sip.sendto(bytes(response), addr)

    def _on_media(self, data: bytes, addr: tuple[str, int], at: float) -> None:
        packet = parse_rtp(data)
        if packet is None or packet.payload_type != PCMU:
            self.other_media += 1
            return
        self.received.record_arrival(packet, at)


def _media_address(body: bytes) -> tuple[str, int] | None:
    """The first audio stream's address and port from an SDP answer."""
    try:
        sdp = SessionDescription.parse(body)
    except SdpError:
        return None
    for media in sdp.media:
        connection = media.effective_connection
        if media.media == "audio" and media.port and connection is not None:
            return connection.host, media.port
    return None
