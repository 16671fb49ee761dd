"""rtpengine (Debian's rtpengine-daemon, userspace) as a system under test.

Driven through its ng control protocol exactly as a SIP proxy would: ``offer`` with the phone's
plain RTP/AVP SDP and ``transport-protocol: RTP/SAVP`` (rtpengine adds its own SDES key toward
the provider), then ``answer`` with the provider's RTP/SAVP SDP and key; ``delete`` at the end.
SDES is restricted to the benchmark's suite with ``no-<suite>`` flags (10.5 ignores
``only-<suite>``), so it does the same RTP → SRTP conversion with the same suite as the gateway.
"""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
from pathlib import Path

from gateway.bench.loadgen import PHONE_ADDRESS, PROVIDER_ADDRESS, CallLeg
from gateway.bench.targets import new_key, pin
from gateway.media.suites import SrtpSuite
from tests.interop.peers import Rtpengine

ADDRESS = "127.0.0.140"
_CRYPTO = re.compile(r"a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)")
_PORT = re.compile(r"m=audio (\d+) ")
_HOST = re.compile(r"c=IN IP4 (\S+)")


def _b64(text: str) -> bytes:
    # rtpengine sends unpadded base64 (allowed by RFC 4568); pad before decoding.
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _sdp(address: str, port: int, proto: str, crypto: str | None, tag: str = "1") -> str:
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=bench",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {proto} 0",
        "a=rtpmap:0 PCMU/8000",
        "a=ptime:20",
        "a=sendrecv",
    ]
    if crypto:
        lines.append(f"a=crypto:{tag} {crypto}")
    return "\r\n".join(lines) + "\r\n"


class RtpengineTarget:
    """rtpengine pinned to the media core, one ng offer/answer per call."""

    name = "rtpengine"
    direct = False

    def __init__(
        self,
        suite: SrtpSuite,
        phone_port: int,
        provider_port: int,
        *,
        media_cpu: int | None = 0,
        realtime: bool = True,
        threads: int = 1,
        fifo: int = 0,
    ) -> None:
        self._suite = suite
        self._phone_port = phone_port
        self._provider_port = provider_port
        self._media_cpu = media_cpu
        self._realtime = realtime
        self._fifo = fifo
        self._dir = Path(tempfile.mkdtemp(prefix="bench-rtpengine-"))
        # One worker thread: the media path gets one core, as the gateway's worker does.
        self._process = Rtpengine(
            self._dir,
            interface=ADDRESS,
            port_range=(30000, 49999),
            # Ports of deleted calls are held back 30 s by default; the sweep reuses them.
            extra_args=[f"--num-threads={threads}", "--log-level=3", "--delete-delay=0"],
        )
        self._calls: list[str] = []
        self._round = 0

    async def start(self) -> None:
        self._process.start()
        pin(self._process.pid, self._media_cpu, realtime=self._realtime, fifo=self._fifo)

    async def open_calls(self, n: int) -> list[CallLeg]:
        self._round += 1
        excluded = [f"no-{s.value}" for s in SrtpSuite if s != self._suite]
        # rtpengine also offers NULL (no encryption) and AES-192/256 counter-mode suites.
        excluded += [
            f"no-{name}_HMAC_SHA1_{tag_bits}"
            for name in ("NULL", "AES_192_CM", "AES_256_CM", "F8_128")
            for tag_bits in (80, 32)
        ]
        legs: list[CallLeg] = []
        for i in range(n):
            call_id = f"bench-{self._round}-{i}"
            offer = self._process.ng(
                {
                    "command": "offer",
                    "call-id": call_id,
                    "from-tag": "phone",
                    "sdp": _sdp(PHONE_ADDRESS, self._phone_port, "RTP/AVP", None),
                    "transport-protocol": "RTP/SAVP",
                    "DTLS": "off",
                    "ICE": "remove",
                    "SDES": excluded,
                    "flags": ["pad-crypto"],
                }
            )
            if offer.get("result") != "ok":
                raise RuntimeError(f"rtpengine refused the offer: {offer.get('error-reason')}")
            sdp = str(offer["sdp"])
            wan_port = int(_PORT.search(sdp).group(1))  # type: ignore[union-attr]
            wan_host = _HOST.search(sdp).group(1)  # type: ignore[union-attr]
            # The answer must name the tag of the line it accepts (RFC 4568 §5.1.2).
            tag, gateway_tx = next(
                (m.group(1), _b64(m.group(3)))
                for m in _CRYPTO.finditer(sdp)
                if m.group(2) == self._suite.value
            )
            provider_tx = new_key(self._suite)
            key = base64.b64encode(provider_tx).decode()
            answer = self._process.ng(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": "phone",
                    "to-tag": "provider",
                    "sdp": _sdp(
                        PROVIDER_ADDRESS,
                        self._provider_port,
                        "RTP/SAVP",
                        f"{self._suite.value} inline:{key}",
                        tag,
                    ),
                }
            )
            sdp = str(answer["sdp"])
            lan_port = int(_PORT.search(sdp).group(1))  # type: ignore[union-attr]
            lan_host = _HOST.search(sdp).group(1)  # type: ignore[union-attr]
            self._calls.append(call_id)
            legs.append(
                CallLeg((lan_host, lan_port), (wan_host, wan_port), provider_tx, gateway_tx)
            )
        pin(self._process.pid, self._media_cpu, realtime=self._realtime, fifo=self._fifo)
        return legs

    async def close_calls(self) -> None:
        for call_id in self._calls:
            self._process.ng({"command": "delete", "call-id": call_id, "from-tag": "phone"})
        self._calls.clear()

    async def stop(self) -> None:
        self._process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def watched(self) -> dict[str, int]:
        return {"rtpengine": self._process.pid}
