"""Fuzz target 3: the B2BUA core driven by random sequences from both sides (RFC 3261 §8,
§12-§17, RFC 3264, RFC 4568).

An input is a sequence of operations (engine.frame_ops). Raw operations hand the core a
datagram from the phone or a message from the provider as bytes (mutated from valid flows:
INVITE, REGISTER, OPTIONS, garbage ...). Built operations answer or continue what the core
sent: the provider's or the phone's response to the k-th request the core sent it (status,
SDP answer with or without crypto, RTP/AVP), the phone's ACK/BYE/re-INVITE/INFO/CANCEL in a
dialog the core answered, the provider's requests in its dialogs; since the core's branches,
tags and Call-IDs are random, they are read from what it sent. Other operations advance the
fake clock through the core's timers, report a media problem for a call, take the trunk's
link down or up, and hang up everything.

Invariants, after every operation: no exception leaves the core (it answers or drops); every
SIP message to the WAN goes to the trunk's peer over TLS and parses; every LAN message parses;
no OpenStream/UpdateStream has a plaintext WAN side unless ``allow_plaintext`` (set by the
first operation, as with the SDP target). At the end, calls still up get the media worker's
inactivity report (as in production), the link comes up and the clock runs past every timer:
then no call, dialog pair, relay or trunk wait may be left, and every call whose media was
opened got a CloseCall.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from gateway.media.control import CloseCall, OpenStream, UpdateStream
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.actions import MediaCommand, SendMessage
from gateway.sip.b2bua import B2bua, EdgeSettings, PairState
from gateway.sip.errors import SipParseError
from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings
from tests.fuzz.engine import Violation, frame_ops, parse_ops

FRAMED = True
#: Findings reported to the core's owner and not fixed yet: the CI slice tolerates them.
KNOWN_FINDINGS: tuple[str, ...] = ()
TOKENS = [
    t.encode()
    for t in (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "PRACK",
        "UPDATE",
        "REFER",
        "SUBSCRIBE",
        "NOTIFY",
        "INFO",
        "MESSAGE",
        ";tag=",
        ";branch=z9hG4bK",
        "Require: 100rel\r\n",
        "Replaces: ",
        "Refer-To: ",
        "Expires: 0\r\n",
        "Contact: *\r\n",
        "Max-Forwards: 0\r\n",
        "Route: <sip:127.0.7.20;lr>\r\n",
        "Session-Expires: 90\r\n",
        "RSeq: 1\r\n",
    )
]

LAN_IP, WAN_IP, PHONE_IP, PROVIDER_IP = "127.0.7.20", "127.0.7.21", "127.0.7.10", "127.0.7.30"
PHONE = Peer(Side.LAN, "udp", (PHONE_IP, 5062))
PROVIDER = Peer(Side.WAN, "tls", (PROVIDER_IP, 5061))
WALL = datetime(2026, 11, 25, 10, 0)

(
    PHONE_RAW,
    WAN_RAW,
    ADVANCE,
    WAN_RESPOND,
    LAN_RESPOND,
    PHONE_IN_DIALOG,
    WAN_IN_DIALOG,
    MEDIA_PROBLEM,
    LINK,
    HANG_UP_ALL,
    POLICY,
) = range(11)

STATUSES = (
    100,
    180,
    183,
    200,
    202,
    302,
    401,
    403,
    404,
    407,
    408,
    480,
    486,
    487,
    488,
    500,
    503,
    603,
)
METHODS = ("ACK", "BYE", "INVITE", "INFO", "CANCEL", "UPDATE", "OPTIONS", "REFER", "PRACK")


def phone_sdp(port: int = 8000) -> bytes:
    return (
        f"v=0\r\no=phone 1 1 IN IP4 {PHONE_IP}\r\ns=call\r\nc=IN IP4 {PHONE_IP}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def provider_sdp(offer: bytes, flags: int) -> bytes:
    """The provider's answer to our offer (or its own offer when ``offer`` is empty)."""
    crypto = ""
    if not flags & 2:
        line = next(
            (x for x in offer.decode(errors="replace").split("\r\n") if x.startswith("a=crypto:")),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 x",
        )
        tag, suite = line[9:].split()[:2]
        key = base64.b64encode(hashlib.sha256(offer).digest()[:30]).decode()
        if suite.startswith("AEAD_AES_256"):
            key = base64.b64encode(hashlib.sha512(offer).digest()[:44]).decode()
        elif suite.startswith("AEAD_AES_128"):
            key = base64.b64encode(hashlib.sha256(offer).digest()[:28]).decode()
        crypto = f"a=crypto:{tag} {suite} inline:{key}\r\n"
    proto = "RTP/AVP" if flags & 4 else "RTP/SAVP"
    return (
        f"v=0\r\no=prov 5 5 IN IP4 {PROVIDER_IP}\r\ns=-\r\nc=IN IP4 {PROVIDER_IP}\r\nt=0 0\r\n"
        f"m=audio 30000 {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\n{crypto}"
    ).encode()


def phone_request(
    method: str,
    cseq: int,
    branch: str,
    *,
    body: bytes = b"",
    call_id: str = "c1@phone",
    to_tag: str | None = None,
    ruri: str = "sip:+15551234567@127.0.7.20",
) -> bytes:
    to = "<sip:+15551234567@127.0.7.20>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_IP}:5062;branch={branch};rport\r\n"
        f'Max-Forwards: 70\r\nFrom: "Desk" <sip:1001@{LAN_IP}>;tag=ph1\r\nTo: {to}\r\n'
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:1001@{PHONE_IP}:5062>\r\n"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("utf-8", "surrogateescape") + body


REGISTER = (
    f"REGISTER sip:{LAN_IP} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_IP}:5062;branch=z9hG4bKreg1;rport\r\n"
    f"Max-Forwards: 70\r\nFrom: <sip:1001@{LAN_IP}>;tag=r1\r\nTo: <sip:1001@{LAN_IP}>\r\n"
    f"Call-ID: reg-1@phone\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{PHONE_IP}:5062>\r\n"
    "Expires: 120\r\nContent-Length: 0\r\n\r\n"
).encode()


def provider_invite(body: bytes) -> bytes:
    return (
        f"INVITE sip:1001@{WAN_IP}:5061;transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {PROVIDER_IP}:5061;branch=z9hG4bKpin1\r\nMax-Forwards: 70\r\n"
        "From: <sip:+4420123@provider.example>;tag=pf1\r\nTo: <sip:1001@provider.example>\r\n"
        "Call-ID: inbound-1@provider\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:pbx@{PROVIDER_IP}:5061;transport=tls>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _status(index: int, flags: int) -> bytes:
    return bytes([0, index, flags])


def seeds() -> list[bytes]:
    invite = phone_request("INVITE", 1, "z9hG4bKi1", body=phone_sdp())
    ok = STATUSES.index(200)
    outbound = [
        (PHONE_RAW, invite),
        (WAN_RESPOND, _status(STATUSES.index(180), 0)),
        (WAN_RESPOND, _status(ok, 1)),
        (PHONE_IN_DIALOG, bytes([0, 0, 1])),
        (ADVANCE, b"\x08"),
        (PHONE_IN_DIALOG, bytes([0, 1, 2])),
        (WAN_RESPOND, _status(ok, 0)),
    ]
    inbound = [
        (PHONE_RAW, REGISTER),
        (WAN_RESPOND, _status(ok, 0)),
        (WAN_RAW, provider_invite(provider_sdp(b"", 0))),
        (LAN_RESPOND, _status(STATUSES.index(180), 0)),
        (LAN_RESPOND, _status(ok, 1)),
        (WAN_IN_DIALOG, bytes([0x80, 0, 1])),
        (ADVANCE, b"\x04"),
        (WAN_IN_DIALOG, bytes([0x80, 1, 2])),
        (LAN_RESPOND, _status(ok, 0)),
    ]
    cancel = [
        (PHONE_RAW, invite),
        (WAN_RESPOND, _status(STATUSES.index(180), 0)),
        (PHONE_IN_DIALOG, bytes([0x80, 4, 1])),
        (WAN_RESPOND, _status(ok, 0)),
        (WAN_RESPOND, bytes([1, STATUSES.index(487), 0])),
        (ADVANCE, b"\x40"),
    ]
    challenge = [
        (PHONE_RAW, REGISTER),
        (WAN_RESPOND, _status(STATUSES.index(401), 0)),
        (PHONE_RAW, REGISTER.replace(b"reg1", b"reg2").replace(b"1 REGISTER", b"2 REGISTER")),
        (WAN_RESPOND, _status(ok, 0)),
        (LINK, b"\x00"),
        (LINK, b"\x01"),
    ]
    reinvite = [
        *outbound[:5],
        (PHONE_IN_DIALOG, bytes([0, 2, 2])),
        (WAN_RESPOND, _status(ok, 1)),
        (PHONE_IN_DIALOG, bytes([0, 0, 2])),
        (WAN_IN_DIALOG, bytes([0, 1, 1])),
        (MEDIA_PROBLEM, b"\x00"),
    ]
    refused = [
        (POLICY, b"\x00"),
        (PHONE_RAW, invite),
        (WAN_RESPOND, _status(ok, 2)),
        (WAN_RESPOND, _status(ok, 4)),
        (ADVANCE, b"\xff"),
    ]
    garbage = [
        (PHONE_RAW, b"\x00\xff" * 50),
        (WAN_RAW, b"SIP/2.0 200\r\n\r\n"),
        (PHONE_RAW, b"INVITE\r\n\r\n"),
        (HANG_UP_ALL, b""),
    ]
    flows = [outbound, inbound, cancel, challenge, reinvite, refused, garbage]
    out = [frame_ops(flow) for flow in flows]
    out.append(frame_ops([(POLICY, b"\x01"), *outbound[1:]]))
    out.append(
        frame_ops(
            [
                (POLICY, b"\x01"),
                (PHONE_RAW, invite),
                (WAN_RESPOND, _status(ok, 6)),
                (PHONE_IN_DIALOG, bytes([0, 0, 1])),
            ]
        )
    )
    return out


class Run:
    """One input's core, clock and the messages it sent."""

    def __init__(self, allow_plaintext: bool) -> None:
        self.allow_plaintext = allow_plaintext
        self.core = B2bua(
            EdgeSettings(
                lan_address=LAN_IP,
                lan_port=5060,
                wan_address=WAN_IP,
                wan_port=5061,
                provider=PROVIDER,
                domain="provider.example",
                media=MediaPolicy(
                    lan_address=LAN_IP, wan_address=WAN_IP, allow_plaintext=allow_plaintext
                ),
                lan_media_ports=(40000, 40099),
                wan_media_ports=(41000, 41099),
                timers=TimerSettings(t1=0.5, t2=4.0, t4=5.0),
            )
        )
        self.now = 0.0
        self.wan_requests: list[SipRequest] = []
        self.wan_responses: list[SipResponse] = []
        self.lan_requests: list[SipRequest] = []
        self.lan_responses: list[SipResponse] = []
        self.phone_sent: list[SipRequest] = []
        self.opened: set[str] = set()
        self.closed: set[str] = set()
        self.counter = 0
        self.core.wan_connection_state(True, "TLSv1.3 verified", self.now, WALL)
        self.collect()

    def collect(self) -> None:
        for action in self.core.actions():
            if isinstance(action, SendMessage):
                self._sent(action)
            elif isinstance(action, MediaCommand):
                command = action.command
                if isinstance(command, OpenStream | UpdateStream):
                    spec = command.spec
                    if spec.wan_plaintext and not self.allow_plaintext:
                        raise Violation(f"plaintext WAN stream opened: {command}")
                    if isinstance(command, OpenStream):
                        self.opened.add(command.call_id)
                elif isinstance(command, CloseCall):
                    self.closed.add(command.call_id)

    def _sent(self, action: SendMessage) -> None:
        peer = action.peer
        if not action.data.strip(b"\r\n"):
            return  # a keep-alive
        try:
            message = parse_message(action.data)
        except SipParseError as error:
            if action.data.startswith(b"SIP/2.0 "):
                # A response to a malformed request copies its headers as received
                # (§8.2.6.2): it need not parse. Requests are the core's own: they must.
                return
            raise Violation(f"the core sent an unparseable request: {error.reason}") from error
        if peer.side == Side.WAN:
            if peer.transport != "tls" or peer.address != PROVIDER.address:
                raise Violation(f"SIP to the WAN other than over the trunk's TLS: {peer}")
            bucket: list = (
                self.wan_requests if isinstance(message, SipRequest) else self.wan_responses
            )
        else:
            bucket = self.lan_requests if isinstance(message, SipRequest) else self.lan_responses
        if len(bucket) < 64:
            bucket.append(message)

    def branch(self) -> str:
        self.counter += 1
        return f"z9hG4bKfz{self.counter}"

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        for _ in range(100_000):
            deadline = self.core.get_timer()
            if deadline is None or deadline > target:
                self.now = target
                return
            if deadline < self.now - 1e-9:
                raise Violation(f"timer deadline {deadline} is in the past ({self.now})")
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now, WALL)
            self.collect()
        raise Violation("timers keep firing without time passing")

    # -- operations ------------------------------------------------------------------------

    def from_phone(self, data: bytes) -> None:
        try:
            message = parse_message(data)
            if isinstance(message, SipRequest) and len(self.phone_sent) < 64:
                self.phone_sent.append(message)
        except SipParseError:
            pass
        self.core.receive_datagram(PHONE, data, self.now, WALL)

    def from_provider(self, data: bytes) -> None:
        try:
            message = parse_message(data)
        except SipParseError as error:
            self.core.receive_invalid(PROVIDER, error, self.now)
            return
        self.core.receive_message(PROVIDER, message, self.now, WALL)

    def respond(self, requests: list[SipRequest], payload: bytes, side: Side) -> None:
        if not requests or len(payload) < 3:
            return
        request = requests[-1 - payload[0] % len(requests)]
        status = STATUSES[payload[1] % len(STATUSES)]
        flags = payload[2]
        if request.method == "ACK":
            return
        tag = ("provtag" if side == Side.WAN else "phtag") + str(flags >> 4 & 1)
        response = make_response(request, status, to_tag=tag if status > 100 else None)
        if 100 < status < 300:
            contact = (
                f"<sip:pbx@{PROVIDER_IP}:5061;transport=tls>"
                if side == Side.WAN
                else f"<sip:1001@{PHONE_IP}:5062>"
            )
            response.add("Contact", contact)
        if status in (401, 407):
            name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            response.add(name, 'Digest realm="provider.example", nonce="n1", algorithm=MD5')
        if status == 302:
            response.add("Contact", "<sip:+15550000000@provider.example>")
        if request.method == "INVITE" and status in (183, 200) and flags & 1:
            body = provider_sdp(request.body, flags) if side == Side.WAN else phone_sdp()
            response.add("Content-Type", "application/sdp")
            response.body = body
        if side == Side.WAN:
            self.core.receive_message(PROVIDER, parse_message(bytes(response)), self.now, WALL)
        else:
            self.core.receive_datagram(PHONE, bytes(response), self.now, WALL)

    def phone_in_dialog(self, payload: bytes) -> None:
        if len(payload) < 3:
            return
        method = METHODS[payload[1] % len(METHODS)]
        if payload[0] & 0x80:
            # Requests about a request the phone sent (CANCEL, a retransmission).
            invites = [r for r in self.phone_sent if r.method == "INVITE"]
            if not invites:
                return
            request = invites[-1 - payload[0] % len(invites)].copy()
            if method == "CANCEL":
                cancel = SipRequest(
                    "CANCEL",
                    request.uri,
                    [
                        (n, v)
                        for n, v in request.headers
                        if n in ("Via", "From", "To", "Call-ID", "Max-Forwards")
                    ],
                )
                cancel.add("CSeq", f"{request.cseq.seq} CANCEL")
                cancel.add("Content-Length", "0")
                self.core.receive_datagram(PHONE, bytes(cancel), self.now, WALL)
            else:
                self.core.receive_datagram(PHONE, bytes(request), self.now, WALL)
            return
        responses = [r for r in self.lan_responses if r.status > 100 and r.to.tag]
        if not responses:
            return
        response = responses[-1 - payload[0] % len(responses)]
        cseq = response.cseq.seq if method in ("ACK", "CANCEL") else response.cseq.seq + payload[2]
        body = phone_sdp(8000 + 2 * payload[2]) if method == "INVITE" else b""
        data = phone_request(
            method, cseq, self.branch(), body=body, call_id=response.call_id, to_tag=response.to.tag
        )
        self.core.receive_datagram(PHONE, data, self.now, WALL)

    def wan_in_dialog(self, payload: bytes) -> None:
        if len(payload) < 3:
            return
        method = METHODS[payload[1] % len(METHODS)]
        if payload[0] & 0x80:
            # The provider called: its dialog is in the responses the core sent it.
            found = [r for r in self.wan_responses if r.status > 100 and r.to.tag]
            if not found:
                return
            response = found[-1 - payload[0] % len(found)]
            local, remote = response.get("From"), response.get("To")
            cseq = response.cseq.seq + (0 if method == "ACK" else payload[2])
            contacts = response.contacts
        else:
            # The core called the provider (which answered with its tag).
            requests = [r for r in self.wan_requests if r.method == "INVITE"]
            if not requests:
                return
            request = requests[-1 - payload[0] % len(requests)]
            local = f"{request.get('To')};tag=provtag{payload[2] >> 4 & 1}"
            remote = request.get("From")
            cseq = 1 + payload[2]
            contacts = request.contacts
        uri = str(contacts[0].uri) if contacts else f"sip:gw@{WAN_IP}:5061;transport=tls"
        body = provider_sdp(b"", payload[2]) if method == "INVITE" else b""
        data = (
            f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {PROVIDER_IP}:5061;branch={self.branch()}"
            f"\r\nMax-Forwards: 70\r\nFrom: {local}\r\nTo: {remote}\r\n"
            f"Call-ID: {response.call_id if payload[0] & 0x80 else request.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:pbx@{PROVIDER_IP}:5061;transport=tls>\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("utf-8", "surrogateescape") + body
        self.from_provider(data)

    def media_problem(self, payload: bytes) -> None:
        pairs = self.core._index.pairs()
        if pairs:
            pair = pairs[(payload[0] if payload else 0) % len(pairs)]
            self.core.media_problem(pair.key, "fuzz: worker lost", self.now, WALL)

    def apply(self, kind: int, payload: bytes) -> None:
        if kind == PHONE_RAW:
            self.from_phone(payload)
        elif kind == WAN_RAW:
            self.from_provider(payload)
        elif kind == ADVANCE:
            self.advance((payload[0] if payload else 1) * 0.25)
        elif kind == WAN_RESPOND:
            self.respond(self.wan_requests, payload, Side.WAN)
        elif kind == LAN_RESPOND:
            self.respond(self.lan_requests, payload, Side.LAN)
        elif kind == PHONE_IN_DIALOG:
            self.phone_in_dialog(payload)
        elif kind == WAN_IN_DIALOG:
            self.wan_in_dialog(payload)
        elif kind == MEDIA_PROBLEM:
            self.media_problem(payload)
        elif kind == LINK:
            up = bool(payload[0] & 1) if payload else True
            self.core.wan_connection_state(up, "fuzz link change", self.now, WALL)
        elif kind == HANG_UP_ALL:
            self.core.hang_up_all(self.now, WALL, "fuzz: shutting down")
        self.collect()

    def finish(self) -> None:
        """Production's end of every call: the worker reports idle media, time runs on."""
        self.core.wan_connection_state(True, "TLSv1.3 verified", self.now, WALL)
        self.collect()
        for _ in range(3):
            for pair in list(self.core._index.pairs()):
                self.core.media_problem(pair.key, "fuzz: media idle", self.now, WALL)
                self.collect()
            self.advance(4000.0)
        left = []
        pairs = self.core._index.pairs()
        relays = list(self.core._out.relays)
        stuck_invites = all(p.state == PairState.CANCELLING for p in pairs) and all(
            key.endswith(" INVITE") for _side, key in relays
        )
        if relays and stuck_invites and not self.core._setup._waiting:
            # An INVITE client transaction in Proceeding has no timer (RFC 3261 §17.1.1):
            # when the callee never sends a final response, only the core can give it up.
            # The CANCEL case is fixed (§9.1, 64*T1); a re-INVITE that got only a 1xx
            # before its call ended is not yet (docs/robustness.md).
            raise Violation(
                f"INVITE never given up without a final response: {len(pairs)} pairs,"
                f" {len(relays)} relays"
            )
        if self.core.active_calls:
            left.append(f"{len(self.core.active_calls)} active calls")
        if self.core._index.pairs():
            left.append(f"{len(self.core._index.pairs())} dialog pairs")
        if self.core._out.relays:
            left.append(f"relays {list(self.core._out.relays)[:3]}")
        if self.core._setup._waiting:
            left.append("calls waiting for a trunk")
        unclosed = self.opened - self.closed
        if unclosed:
            left.append(f"media never closed for {sorted(unclosed)[:3]}")
        if left:
            raise Violation("left after every timer: " + "; ".join(left))


def check(data: bytes) -> None:
    ops = parse_ops(data)
    allow_plaintext = bool(ops and ops[0][0] == POLICY and ops[0][1] and ops[0][1][0] & 1)
    run = Run(allow_plaintext)
    for kind, payload in ops[:48]:
        run.apply(kind, payload)
    run.finish()
