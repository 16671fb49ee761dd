"""``gateway demo`` end to end in-process, and the lab peers' pieces it relies on.

The two end-to-end tests run the real gateway (with its media worker process), the built-in
TLS/SRTP provider and the built-in phone on loopback; each takes a couple of seconds.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import os
import tempfile
from pathlib import Path

from gateway.demo import demo_call, run_demo
from gateway.lab import digest
from gateway.lab.audio import analyse_ulaw, tone_frames, ulaw_decode, ulaw_encode
from gateway.lab.provider import Accepted, LabProvider, Refused, answer_offer
from gateway.lab.rtp import PCMU, build_rtp, parse_rtp, transit
from gateway.media.control import SrtpKeying
from gateway.media.srtp import SrtpProtector
from gateway.media.suites import SrtpSuite
from gateway.sdp.crypto import new_crypto


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("gateway-demo-*"))


# --------------------------------------------------------------------------- end to end


async def test_demo_passes_and_says_why() -> None:
    before = _demo_dirs()
    out = io.StringIO()
    status = await run_demo(seconds=1, out=out)
    text = out.getvalue()
    assert status == 0, text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert (
        "TLS 1." in lines["signalling"] and "provider certificate verified" in lines["signalling"]
    )
    assert "(provider.lab)" in lines["signalling"]
    assert "SRTP AES_CM_128_HMAC_SHA1_80 both ways" in lines["media"]
    assert lines["plaintext"].split()[1] == "0"
    assert "440 Hz" in lines["audio"] and "1000 Hz" in lines["audio"]
    assert "added p50" in lines["latency"] and "jitter" in lines["latency"]
    for topic in ("signalling", "media", "plaintext", "audio", "latency"):
        assert lines[topic].rstrip().endswith("ok"), lines[topic]
    assert "PASS" in lines["verdict"]
    # Everything it started is gone: temp folder, tasks.
    assert _demo_dirs() == before
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_provider_without_crypto_fails_closed() -> None:
    report = await demo_call(seconds=1, provider_crypto=False)
    assert report.exit_status != 0
    assert report.call_status == 488
    assert report.plaintext == 0
    by_topic = {line.topic: line for line in report.lines}
    assert not by_topic["media"].ok and "488" in by_topic["media"].text
    assert by_topic["plaintext"].ok
    assert "FAIL" in report.render().splitlines()[-1]
    out = io.StringIO()
    assert await run_demo(seconds=0.2, provider_crypto=False, out=out) != 0
    assert "plaintext   0 RTP packets" in out.getvalue()


async def test_digest_challenge_passes_through_the_gateway() -> None:
    report = await demo_call(seconds=0.5, digest_password="correct horse battery")
    assert report.registered
    assert report.call_status == 200
    assert report.plaintext == 0


def test_no_worker_process_is_left_behind() -> None:
    # Runs after the end-to-end tests in this module: their gateways' media workers are our
    # children; every one must have been waited for (none left, not even a zombie).
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    assert pid == 0 and not _children(), "a child process outlived the demo"


def _children() -> list[str]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return path.read_text().split() if path.exists() else []


# --------------------------------------------------------------------------- provider


def _offer(
    proto: str = "RTP/SAVP", suites: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)
) -> bytes:
    lines = [
        "v=0",
        "o=gw 1 1 IN IP4 127.0.0.21",
        "s=-",
        "c=IN IP4 127.0.0.21",
        "t=0 0",
        f"m=audio 40000 {proto} 0",
        "a=rtpmap:0 PCMU/8000",
        "a=rtcp-mux",
    ]
    for tag, name in enumerate(suites, start=1):
        lines.append(f"a=crypto:{new_crypto(tag, SrtpSuite(name)).format()}")
    return ("\r\n".join(lines) + "\r\n").encode()


def test_provider_takes_the_first_supported_suite_and_answers_with_its_own_key() -> None:
    offer = _offer(suites=("AEAD_AES_256_GCM", "AES_CM_128_HMAC_SHA1_80"))
    decision = answer_offer(
        offer, address="127.0.0.30", port=50000, suites=(SrtpSuite.AES_CM_128_HMAC_SHA1_80,)
    )
    assert isinstance(decision, Accepted)
    assert decision.suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert decision.remote == ("127.0.0.21", 40000)
    assert decision.rx is not None and decision.tx is not None
    assert decision.rx.master != decision.tx.master
    answer = decision.answer.decode()
    assert "m=audio 50000 RTP/SAVP 0" in answer
    assert "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:" in answer
    assert "a=rtcp-mux" in answer


def test_provider_refuses_plain_rtp_and_offers_without_crypto() -> None:
    plain = answer_offer(_offer("RTP/AVP", ()), address="127.0.0.30", port=50000)
    assert isinstance(plain, Refused) and plain.status == 488
    keyless = answer_offer(_offer(suites=()), address="127.0.0.30", port=50000)
    assert isinstance(keyless, Refused) and "a=crypto" in keyless.reason
    misbehaving = answer_offer(_offer(), address="127.0.0.30", port=5, answer_without_crypto=True)
    assert isinstance(misbehaving, Accepted)
    assert "RTP/AVP" in misbehaving.answer.decode()
    assert "a=crypto" not in misbehaving.answer.decode()


def test_provider_counts_plain_rtp_but_not_srtp() -> None:
    provider = LabProvider(
        address="127.0.0.30",
        certificate=Path("unused.pem"),
        private_key=Path("unused.key"),
        known_plaintext=set(itertools.islice(tone_frames(440.0), 50)),
    )
    frame = next(tone_frames(440.0))
    rtp = build_rtp(PCMU, 1, 160, 1234, frame)
    keying = SrtpKeying(
        "AES_CM_128_HMAC_SHA1_80", new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80).master
    )
    srtp = SrtpProtector(keying).protect(rtp)
    assert provider._is_plaintext(rtp, rtcp=False)
    assert not provider._is_plaintext(srtp, rtcp=False)
    # Plain RTCP (a receiver report with no blocks) is plaintext too.
    assert provider._is_plaintext(bytes([0x80, 201, 0, 1, 0, 0, 0, 1]), rtcp=True)


# --------------------------------------------------------------------------- measurements


def test_ulaw_round_trip_and_tone_detection() -> None:
    samples = [0, 1000, -1000, 32000, -32000]
    decoded = ulaw_decode(ulaw_encode(samples))
    for original, back in zip(samples, decoded, strict=True):
        assert abs(original - back) <= max(16, abs(original) // 16)
    audio = b"".join(itertools.islice(tone_frames(1000.0), 25))
    result = analyse_ulaw(audio)
    assert result.is_tone(1000.0) and not result.is_tone(440.0)
    assert analyse_ulaw(b"\xff" * 4000).freq == 0.0  # µ-law silence


def test_rtp_parse_and_transit_jitter() -> None:
    packet = parse_rtp(build_rtp(PCMU, 7, 160, 99, b"\x01\x02", marker=True))
    assert (
        packet is not None and packet.seq == 7 and packet.marker and packet.payload == b"\x01\x02"
    )
    assert parse_rtp(b"\x00" * 20) is None
    sent = {n: n * 0.020 for n in range(100)}
    steady = transit(sent, {n: t + 0.001 for n, t in sent.items()})
    assert math.isclose(steady.quantile(0.5), 0.001) and steady.jitter < 1e-9
    wobbly = transit(sent, {n: t + (0.001 if n % 2 else 0.003) for n, t in sent.items()})
    assert 0.0015 < wobbly.jitter < 0.0021  # converges to the 2 ms step (RFC 3550 A.8)


def test_digest_answer_is_accepted_once_challenged() -> None:
    nonce, challenge = digest.new_challenge("provider.lab")
    value = digest.authorization(
        challenge, user="100", password="s3cret", method="REGISTER", uri="sip:provider.lab"
    )
    accepted = digest.check(
        value, method="REGISTER", password="s3cret", realm="provider.lab", nonces={nonce}
    )
    assert accepted == "100"
    assert (
        digest.check(
            value, method="REGISTER", password="wrong", realm="provider.lab", nonces={nonce}
        )
        is None
    )
