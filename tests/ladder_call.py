"""One outbound call's SIP messages on both legs, as the gateway would see them, for the ladder
tests; and a stand-in status view that serves a ladder fed with them to the admin app.

The call: phone 127.0.1.10 -> gateway LAN 127.0.1.20 | WAN 127.0.1.21 -> provider 127.0.1.30.
The provider challenges the relayed INVITE (407), the phone answers the challenge, the
provider answers with SDES keys, the phone hangs up. The messages carry a digest response,
a nonce and SDES master keys that must never come out of the ladder.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.ladder import CallLadder
from gateway.media.control import StreamCounters
from gateway.operations import (
    CallLadderView,
    CallRecordStats,
    CallStatus,
    LadderCall,
    MediaLoop,
    MediaReading,
    ProviderStatus,
    RegistrationStatus,
    TlsStatus,
    TrunkStatus,
)
from gateway.sip.call_events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
)

PHONE = ("127.0.1.10", 5062)
PROVIDER = ("127.0.1.30", 5061)
LAN_CALL_ID = "a84b4c76e66710@127.0.1.10"
WAN_CALL_ID = "gw-7f3c2a9e01d4"
PAIR = "p-0001"
#: Secrets the messages carry (each one distinctive, so a leak is found by substring).
OFFER_KEY = base64.b64encode(b"GATEWAY-OFFER-MASTER-KEY-AND-SALT-30").decode()
ANSWER_KEY = base64.b64encode(b"PROVIDER-ANSWER-MASTER-KEY-SALT-30b").decode()
DIGEST_RESPONSE = "6629fae49393a05397450978507c4ef1"
NONCE = "84f1c1ae6cbe5ua9c8e88dfa3ecm3459"
CNONCE = "0a4f113b"
SECRETS = (OFFER_KEY, ANSWER_KEY, DIGEST_RESPONSE, NONCE, CNONCE)


@dataclass(frozen=True)
class Hop:
    """A message as the gateway's glue meets it: side, direction, peer, bytes."""

    side: str
    transport: str
    address: tuple[str, int]


LAN = Hop("lan", "udp", PHONE)
WAN = Hop("wan", "tls", PROVIDER)


def _message(first: str, headers: list[str], body: str = "") -> bytes:
    head = [first, *headers]
    if body:
        head.append("Content-Type: application/sdp")
    head.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _sdp(address: str, port: int, profile: str, crypto: str | None) -> str:
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {profile} 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
    ]
    if crypto is not None:
        lines.append(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{crypto}|2^31")
    return "\r\n".join(lines) + "\r\n"


def _lan(method: str, cseq: int, body: str = "", extra: tuple[str, ...] = ()) -> bytes:
    return _message(
        f"{method} sip:200@127.0.1.20 SIP/2.0",
        [
            "Via: SIP/2.0/UDP 127.0.1.10:5062;branch=z9hG4bK-phone-" + str(cseq) + method,
            "From: <sip:100@127.0.1.20>;tag=ph1",
            "To: <sip:200@127.0.1.20>" + (";tag=gw2" if method == "BYE" else ""),
            f"Call-ID: {LAN_CALL_ID}",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:100@127.0.1.10:5062>",
            "User-Agent: LegacyPhone/1.0",
            "Max-Forwards: 70",
            *extra,
        ],
        body,
    )


def _wan(method: str, cseq: int, body: str = "", extra: tuple[str, ...] = ()) -> bytes:
    return _message(
        f"{method} sip:200@provider.lab SIP/2.0",
        [
            "Via: SIP/2.0/TLS 127.0.1.21:5061;branch=z9hG4bK-gw-" + str(cseq) + method,
            "From: <sip:100@provider.lab>;tag=gw1",
            "To: <sip:200@provider.lab>" + (";tag=pv1" if method == "BYE" else ""),
            f"Call-ID: {WAN_CALL_ID}",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:gw@127.0.1.21:5061;transport=tls>",
            *extra,
        ],
        body,
    )


def _response(
    status: str, call_id: str, cseq: str, via: str, to_tag: str, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        f"SIP/2.0 {status}",
        f"Via: {via}",
        "From: <sip:100@x>;tag=1",
        f"To: <sip:200@x>;tag={to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
        *extra,
    ]


def _reply(status: str, call_id: str, cseq: str, via: str, tag: str, *extra: str) -> bytes:
    return _message(*_split(_response(status, call_id, cseq, via, tag, extra)))


def _split(lines: list[str]) -> tuple[str, list[str]]:
    return lines[0], lines[1:]


CHALLENGE = f'Proxy-Authenticate: Digest realm="provider.lab", nonce="{NONCE}", qop="auth"'
CREDENTIALS = (
    'Proxy-Authorization: Digest username="100", realm="provider.lab", '
    f'nonce="{NONCE}", uri="sip:200@provider.lab", response="{DIGEST_RESPONSE}", '
    f"qop=auth, nc=00000001, cnonce={CNONCE!r}".replace("'", '"')
)
LAN_VIA = "SIP/2.0/UDP 127.0.1.10:5062;branch=z9hG4bK-phone"
WAN_VIA = "SIP/2.0/TLS 127.0.1.21:5061;branch=z9hG4bK-gw"

#: (hop, direction, bytes) or a call event, in the order the composition root meets them.
Step = tuple[Hop, str, bytes] | CallEvent


def call_steps() -> list[Step]:
    """The whole call, both legs, with the events where the core emits them."""
    lan_offer = _sdp("127.0.1.10", 4000, "RTP/AVP", None)
    wan_offer = _sdp("127.0.1.21", 41000, "RTP/SAVP", OFFER_KEY)
    wan_answer = _sdp("127.0.1.30", 30000, "RTP/SAVP", ANSWER_KEY)
    lan_answer = _sdp("127.0.1.20", 40000, "RTP/AVP", None)
    return [
        (LAN, "in", _lan("INVITE", 1, lan_offer)),
        (LAN, "out", _reply("100 Trying", LAN_CALL_ID, "1 INVITE", LAN_VIA, "")),
        (WAN, "out", _wan("INVITE", 1, wan_offer)),
        CallStarted(LAN_CALL_ID, PAIR, "INVITE", "lan", "100", "200", WAN_CALL_ID),
        (
            WAN,
            "in",
            _reply(
                "407 Proxy Authentication Required",
                WAN_CALL_ID,
                "1 INVITE",
                WAN_VIA,
                "pv0",
                CHALLENGE,
            ),
        ),
        (WAN, "out", _wan("ACK", 1)),
        (
            LAN,
            "out",
            _reply(
                "407 Proxy Authentication Required",
                LAN_CALL_ID,
                "1 INVITE",
                LAN_VIA,
                "gw0",
                CHALLENGE,
            ),
        ),
        (LAN, "in", _lan("ACK", 1)),
        (LAN, "in", _lan("INVITE", 2, lan_offer, (CREDENTIALS,))),
        (WAN, "out", _wan("INVITE", 2, wan_offer, (CREDENTIALS,))),
        (WAN, "in", _reply("180 Ringing", WAN_CALL_ID, "2 INVITE", WAN_VIA, "pv1")),
        (LAN, "out", _reply("180 Ringing", LAN_CALL_ID, "2 INVITE", LAN_VIA, "gw2")),
        (
            WAN,
            "in",
            _message(
                *_split(
                    _response(
                        "200 OK",
                        WAN_CALL_ID,
                        "2 INVITE",
                        WAN_VIA,
                        "pv1",
                        ("Content-Type: application/sdp",),
                    )
                )
            )
            + wan_answer.encode(),
        ),
        (WAN, "out", _wan("ACK", 2)),
        CallAnswered(LAN_CALL_ID, PAIR, "AES_CM_128_HMAC_SHA1_80", False),
        (
            LAN,
            "out",
            _message(
                *_split(
                    _response(
                        "200 OK",
                        LAN_CALL_ID,
                        "2 INVITE",
                        LAN_VIA,
                        "gw2",
                        ("Content-Type: application/sdp",),
                    )
                )
            )
            + lan_answer.encode(),
        ),
        (LAN, "in", _lan("ACK", 2)),
        (LAN, "in", _lan("BYE", 3)),
        (WAN, "out", _wan("BYE", 3)),
        CallEnded(LAN_CALL_ID, PAIR, "BYE from lan", 12.5),
        (LAN, "out", _reply("200 OK", LAN_CALL_ID, "3 BYE", LAN_VIA, "gw2")),
        (WAN, "in", _reply("200 OK", WAN_CALL_ID, "3 BYE", WAN_VIA, "pv1")),
    ]


def feed_call(ladder: CallLadder, start: float = 100.0, *, until: int | None = None) -> float:
    """Feed the call's steps (the first ``until`` of them) a tenth of a second apart; the
    time after the last one."""
    now = start
    for step in call_steps()[:until]:
        if isinstance(step, tuple):
            hop, direction, data = step
            if direction == "in":
                ladder.received(hop, data, now)
            else:
                ladder.sent(hop, data, now)
        else:
            ladder.event(step)
        now += 0.1
    return now


# --------------------------------------------------------------------------- a status view


class LadderStatusView:
    """A :class:`~gateway.operations.StatusView` of a quiet gateway with one active call
    (the golden call, fed up to its answer) and the ladders of ``ladder``."""

    def __init__(self, ladder: CallLadder, *, clock: Callable[[], float]) -> None:
        self.ladder = ladder
        self._clock = clock
        self._started = time.time()

    def _offset(self) -> float:
        return time.time() - self._clock()

    @property
    def started_at(self) -> float:
        return self._started

    def accepting_calls(self) -> bool:
        return True

    def calls(self) -> list[CallStatus]:
        return [
            CallStatus(
                call_id=LAN_CALL_ID,
                pair=PAIR,
                state="confirmed",
                caller_side="lan",
                caller="100",
                callee="200",
                phone="{}:{}".format(*PHONE),
                provider="{}:{}".format(*PROVIDER),
                started=self._started,
                answered=self._started,
                suite="AES_CM_128_HMAC_SHA1_80",
                plaintext_downgrade=False,
            )
        ]

    def registrations(self) -> list[RegistrationStatus]:
        return []

    def phones(self) -> list[Any]:
        return []

    def bans(self) -> list[Any]:
        return []

    def spike_locked(self) -> bool:
        return False

    def provider(self) -> ProviderStatus:
        return ProviderStatus(
            True,
            "connected",
            "provider.lab",
            5061,
            "TLSv1.3",
            "TLS_AES_128_GCM_SHA256",
            "provider.lab",
            1,
            False,
        )

    def trunks(self) -> list[TrunkStatus]:
        return [TrunkStatus("provider", "provider.lab", 5061, True, "connected", 1)]

    def tls(self) -> TlsStatus:
        return TlsStatus((), False, False, 0, None)

    def media_workers(self) -> list[int | None]:
        return []

    def media_loop(self) -> MediaLoop:
        return MediaLoop("c", "fast path built", "libsrtp 2")

    async def media_streams(self) -> MediaReading:
        return MediaReading({})

    def on_media_closed(
        self, listener: Callable[[str, Mapping[str, StreamCounters]], None]
    ) -> None:
        pass

    def sip_counters(self) -> dict[str, int]:
        return {}

    def policy_counters(self) -> dict[str, int]:
        return {}

    def call_record_stats(self) -> CallRecordStats:
        return CallRecordStats(0, 0, 0, None)

    def call_records(
        self, *, limit: int, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        return []

    def recent_call_events(self) -> Sequence[CallEvent]:
        return ()

    def call_ladder(self, ref: str) -> CallLadderView | None:
        return self.ladder.view(ref, self._offset())

    def ladder_calls(self) -> list[LadderCall]:
        return self.ladder.calls(self._offset())


class NoOperations:
    """Operations that a read-only test never calls."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"operation {name} called")
