"""Where the targets' seeds come from: test data files and the unit tests' own messages.

SIP: the RFC 4475 torture messages (tests/data/rfc4475), the messages the unit tests build
(tests/unit/test_b2bua.py, tests/unit/test_sip_quirks.py, by importing their helpers and reading
their parametrised cases), and the messages of whole calls run through the B2BUA core with
the unit tests' harness (so the gateway's own INVITEs, answers, ACKs and BYEs are seeds too).
SDP: bodies captured from interop runs (tests/fuzz/seeds/sdp, README.md there), the unit
tests' offers and answers, and the bodies of those calls. RTP/SRTP: tests/data/rtp_corpus.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.testdata import DATA_DIR, RFC4475_DIR

SEED_DIR = Path(__file__).resolve().parent / "seeds"
RTP_CORPUS_DIR = DATA_DIR / "rtp_corpus"


def _strings_in(value: Any) -> Iterable[str | bytes]:
    if isinstance(value, str | bytes):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings_in(item)
    elif hasattr(value, "values") and isinstance(getattr(value, "values", None), tuple):
        yield from _strings_in(value.values)  # pytest.param


def _module_strings(module: ModuleType) -> list[bytes]:
    """Module constants and parametrised test arguments that are strings or bytes."""
    found: list[bytes] = []
    for value in vars(module).values():
        candidates: Iterable[Any] = [value]
        for mark in getattr(value, "pytestmark", ()):
            if mark.name == "parametrize":
                candidates = [*candidates, *mark.args[1:]]
        for candidate in candidates:
            for text in _strings_in(candidate):
                found.append(text.encode() if isinstance(text, str) else text)
    return found


def _crlf(text: bytes) -> bytes:
    """Test messages written with bare LF, as the unit tests' helpers turn them into CRLF."""
    if b"\r\n" in text:
        return text
    return text.replace(b"\n", b"\r\n")


@functools.cache
def _call_flows() -> tuple[list[bytes], list[bytes]]:
    """Messages and SDP bodies of calls run through the core with the unit tests' harness."""
    from gateway.sip.message import SipRequest, SipResponse
    from tests.unit import test_b2bua as tb

    messages: list[bytes] = []
    bodies: list[bytes] = []
    h = tb.Harness()
    tb.register(h)
    for message in h.take_wan():
        messages.append(bytes(message))
        if isinstance(message, SipRequest):
            h.from_provider(tb.respond(message, 200))
    invite, ok = tb.establish_outbound(h)
    messages += [bytes(invite), bytes(ok), invite.body, ok.body]
    bodies += [invite.body, ok.body]
    h.from_phone(tb.phone_request("ACK", cseq=1, to_tag=ok.to.tag))
    h.from_phone(tb.phone_request("BYE", cseq=2, to_tag=ok.to.tag))
    for message in [*h.take_wan(), *h.take_lan()]:
        messages.append(bytes(message))
        if isinstance(message, SipResponse | SipRequest) and message.body:
            bodies.append(message.body)
    return messages, bodies


def sip_messages() -> list[bytes]:
    """Every SIP message seed, each once."""
    from tests.unit import test_b2bua as tb
    from tests.unit import test_sip_quirks as tq

    seeds = [path.read_bytes() for path in sorted(RFC4475_DIR.glob("*.dat"))]
    for method in ("INVITE", "REGISTER", "OPTIONS", "BYE", "CANCEL", "ACK", "INFO", "REFER"):
        body = tb.phone_sdp() if method == "INVITE" else ""
        seeds.append(
            tb.phone_request(method, body=body, to_tag="t1" if method == "BYE" else None).encode()
        )
    seeds.append(
        tq.invite_with_sdp(
            "INVITE sip:2001@127.0.4.20 SIP/2.0\nVia: SIP/2.0/UDP 127.0.4.14:5060;branch=z9hG4bK.a\n"
            "From: <sip:1001@127.0.4.20>;tag=a\nTo: <sip:2001@127.0.4.20>\nCall-ID: a@x\n"
            "CSeq: 1 INVITE\nContact: <sip:1001@127.0.4.14>\nContent-Type: application/sdp\n"
            "Content-Length: @LENGTH@\n",
            "127.0.4.14",
        )
        .replace("\n", "\r\n")
        .encode()
    )
    for module in (tb, tq):
        for text in _module_strings(module):
            if b"SIP/2.0" in text:
                seeds.append(_crlf(text))
    seeds += [m for m in _call_flows()[0] if b"SIP/2.0" in m]
    return list(dict.fromkeys(seeds))


def sdp_bodies() -> list[bytes]:
    """Every SDP seed, each once."""
    from tests.unit import test_b2bua as tb
    from tests.unit import test_sdp_negotiation as tn
    from tests.unit import test_sip_quirks as tq

    seeds = [path.read_bytes() for path in sorted((SEED_DIR / "sdp").glob("*.sdp"))]
    seeds.append(tb.phone_sdp().encode())
    seeds.append(tq.SDP.format(ip="127.0.4.14").encode())
    seeds.append(tn.PHONE_OFFER)
    for suite in tn.SrtpSuite:
        seeds.append(tn.provider_answer(suite=suite, tag=1 + list(tn.SrtpSuite).index(suite)))
    seeds.append(tn.provider_answer(proto="RTP/AVP", mux=False, direction="sendonly"))
    seeds.append(tn.expected_wan_offer())
    for text in _module_strings(tn):
        if text.startswith(b"v=0"):
            seeds.append(text)
    seeds += _call_flows()[1]
    return list(dict.fromkeys(s for s in seeds if s))


def rtp_packets() -> dict[str, list[bytes]]:
    """tests/data/rtp_corpus by file name: one datagram per .bin, the framed list of a .seq."""
    out: dict[str, list[bytes]] = {}
    for path in sorted(RTP_CORPUS_DIR.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".bin":
            out[path.stem] = [data]
        elif path.suffix == ".seq":
            packets: list[bytes] = []
            offset = 0
            while offset + 2 <= len(data):
                length = int.from_bytes(data[offset : offset + 2], "big")
                packets.append(data[offset + 2 : offset + 2 + length])
                offset += 2 + length
            out[path.stem] = packets
    return out


def corpus_key(suite_name: str) -> bytes:
    """The rtp_corpus README's fixed test key: byte i = (0x5A + 7 i) mod 256."""
    from gateway.media.suites import SrtpSuite

    length = SrtpSuite(suite_name).master_length
    return bytes((0x5A + 7 * i) % 256 for i in range(length))


#: rtp_corpus file infixes and the suite they were protected with.
CORPUS_SUITES = {
    "aes80": "AES_CM_128_HMAC_SHA1_80",
    "aes32": "AES_CM_128_HMAC_SHA1_32",
    "gcm128": "AEAD_AES_128_GCM",
    "gcm256": "AEAD_AES_256_GCM",
}
