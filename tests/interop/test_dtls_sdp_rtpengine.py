"""DTLS-SRTP offer/answer between the gateway's SDP layer and a real rtpengine (RFC 5763 §5,
RFC 8842), for each keying order a trunk may have. Signalling only: the handshake and the
packets are test_dtls.py's.

rtpengine (its ng socket on 127.0.116.1) stands for the provider's media edge: the gateway's
offer goes to it as the provider's ``offer`` with a plain party behind it, the plain party's
answer comes back through rtpengine's ``answer``, and that SDP is what the gateway's
``answer_from_wan`` must take, with the role the answer leaves it. The other way, rtpengine's
own DTLS offer goes through ``offer_from_wan``/``answer_from_lan`` and rtpengine must accept
the gateway's answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.media.ports import PortAllocator
from gateway.sdp.negotiation import CallMedia, MediaPolicy
from tests.interop.conftest import ProcessSet
from tests.interop.peers import Rtpengine

INTERFACE = "127.0.116.1"
PARTY = "127.0.116.5"
OUR_FP = ("sha-256", ":".join(secrets.token_hex(1).upper() for _ in range(32)))

PLAIN = (
    "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


@pytest.fixture
def rtpengine(
    need: Callable[..., dict[str, str]], procs: ProcessSet, tmp_path: Path
) -> Iterator[Rtpengine]:
    need("rtpengine")
    yield procs.start(Rtpengine(tmp_path / "rtpe", interface=INTERFACE, port_range=(31600, 31699)))


def call(keying: tuple[str, ...]) -> CallMedia:
    policy = MediaPolicy(
        lan_address="127.0.116.20",
        wan_address="127.0.116.21",
        keying=keying,
        dtls_fingerprint=lambda: OUR_FP,
    )
    return CallMedia("c", policy, PortAllocator(40000, 40099), PortAllocator(41000, 41099))


def sdp(reply: dict[str, Any]) -> bytes:
    assert reply.get("result") == "ok", reply
    body = reply["sdp"]
    return body if isinstance(body, bytes) else body.encode()


def attribute(body: bytes, name: str) -> list[str]:
    return re.findall(rf"^a={name}:(.*)\r$", body.decode(), re.M)


@pytest.mark.parametrize(
    ("keying", "flags", "role", "proto"),
    [
        (("dtls", "sdes"), {}, "server", "RTP/SAVP"),
        # The order is the gateway's preference when it chooses; on its offer rtpengine
        # chooses, and it favours DTLS.
        (("sdes", "dtls"), {}, "server", "RTP/SAVP"),
        (("dtls",), {}, "server", "UDP/TLS/RTP/SAVP"),
        (("dtls",), {"DTLS-reverse": "passive"}, "client", "UDP/TLS/RTP/SAVP"),
    ],
    ids=["dtls-sdes", "sdes-dtls", "dtls", "dtls-rtpengine-passive"],
)
def test_rtpengine_answers_our_offer_with_dtls_and_the_role_follows(
    rtpengine: Rtpengine,
    keying: tuple[str, ...],
    flags: dict[str, str],
    role: str,
    proto: str,
) -> None:
    media = call(keying)
    phone = PLAIN.format(host="127.0.116.30", port=4000).encode()
    offer = media.offer_from_lan(phone)
    cid = secrets.token_hex(4)
    common = {"call-id": cid, "from-tag": "gw", **flags}
    forwarded = sdp(
        rtpengine.ng(
            {"command": "offer", "sdp": offer.decode(), "transport-protocol": "RTP/AVP", **common}
        )
    )
    assert b"RTP/AVP" in forwarded and b"fingerprint" not in forwarded
    party = PLAIN.format(host=PARTY, port=5000)
    answer = sdp(rtpengine.ng({"command": "answer", "sdp": party, "to-tag": "far", **common}))
    assert f" {proto} ".encode() in answer
    to_phone = media.answer_from_wan(answer)
    assert b"RTP/AVP" in to_phone and b"fingerprint" not in to_phone
    [spec] = media.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.role == role
    [(function, digest)] = spec.wan_dtls.fingerprints
    assert function == "sha-256" and attribute(answer, "fingerprint") == [f"sha-256 {digest}"]
    assert spec.wan_tx is None and spec.wan_rx is None and not spec.wan_plaintext
    rtpengine.ng({"command": "delete", **common})


@pytest.mark.parametrize("keying", [("dtls",), ("dtls", "sdes")])
def test_rtpengine_accepts_our_answer_to_its_dtls_offer(
    rtpengine: Rtpengine, keying: tuple[str, ...]
) -> None:
    cid = secrets.token_hex(4)
    common = {"call-id": cid, "from-tag": "far"}
    party = PLAIN.format(host=PARTY, port=5000)
    offer = sdp(
        rtpengine.ng(
            {"command": "offer", "sdp": party, "transport-protocol": "UDP/TLS/RTP/SAVP", **common}
        )
    )
    assert attribute(offer, "setup") == ["actpass"] and attribute(offer, "crypto")
    media = call(keying)
    media.offer_from_wan(offer)
    ours = media.answer_from_lan(PLAIN.format(host="127.0.116.30", port=4000).encode())
    assert attribute(ours, "setup") == ["active"] and not attribute(ours, "crypto")
    back = sdp(rtpengine.ng({"command": "answer", "sdp": ours.decode(), "to-tag": "gw", **common}))
    assert b"RTP/AVP" in back and b"fingerprint" not in back
    [spec] = media.streams()
    assert spec is not None and spec.wan_dtls is not None and spec.wan_dtls.role == "client"
    rtpengine.ng({"command": "delete", **common})


@pytest.mark.parametrize(("flags", "muxed"), [({}, False), ({"rtcp-mux": ["accept"]}, True)])
def test_rtpengine_takes_our_rtcp_mux_only_when_told(
    rtpengine: Rtpengine, flags: dict[str, list[str]], muxed: bool
) -> None:
    """rtpengine passes our a=rtcp-mux on to its plain party and, unless told to accept it,
    answers with RTCP on its own port: the stream is then not muxed, and its RTCP is not
    carried (gateway/media/dtls_streams.py: no association on the RTCP port)."""
    media = call(("dtls",))
    offer = media.offer_from_lan(PLAIN.format(host="127.0.116.30", port=4000).encode())
    assert b"a=rtcp-mux\r\n" in offer
    cid = secrets.token_hex(4)
    common = {"call-id": cid, "from-tag": "gw"}
    rtpengine.ng({"command": "offer", "sdp": offer.decode(), **common, **flags})
    party = PLAIN.format(host=PARTY, port=5000)
    answer = sdp(rtpengine.ng({"command": "answer", "sdp": party, "to-tag": "far", **common}))
    assert (b"a=rtcp-mux\r\n" in answer) is muxed, answer
    media.answer_from_wan(answer)
    [spec] = media.streams()
    assert spec is not None and spec.wan_dtls is not None and spec.wan_rtcp_mux is muxed
    rtpengine.ng({"command": "delete", **common})
