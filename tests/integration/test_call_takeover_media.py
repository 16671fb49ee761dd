"""A call's media taken over by another gateway's media workers (issue 14).

Two media controllers, each with its own worker processes, stand for the active and the
standby gateway on one host (loopback 127.0.61.0/24). A call's stream runs SRTP on the first
across a sequence-number wrap; its ``stream_records()`` (spec and checkpoint) are taken, the
first controller's worker is killed with SIGKILL (by PID) and not restarted, and the second
controller's ``restore_streams`` opens the stream on the same ports with the same keys. The
far ends keep their own pylibsrtp contexts throughout, as a real phone and provider do: every
packet after the takeover must authenticate at the provider (right ROC, no replay) and reach
the phone. Both packet loops (C fast path and Python). Waits are socket timeouts or bounded
polls of the controllers' state, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from collections.abc import Callable

import pylibsrtp
import pytest

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.suites import SrtpSuite
from gateway.media.worker import fastpath_enabled

LAN = "127.0.61.20"
WAN = "127.0.61.21"
PHONE_IP = "127.0.61.10"
PROVIDER_IP = "127.0.61.30"
TIMEOUT = 5.0
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PHONE_SSRC = 0x1234ABCD
PROVIDER_SSRC = 0x0FEDCBA9


def rtp(seq: int, ssrc: int) -> bytes:
    payload = seq.to_bytes(4, "big") * 40
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + payload


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


def port_pair(address: str) -> int:
    """An even port whose odd neighbour is free as well (RTP and RTCP)."""
    for _ in range(100):
        with udp(address) as first:
            port = first.getsockname()[1]
            if port >= 65534 or port % 2:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((address, port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


def keying() -> SrtpKeying:
    return SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))


def srtp_session(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    profile = SrtpSuite.from_name(k.suite).libsrtp_profile
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=profile)
    )


class FarEnds:
    """The phone and the provider of one stream; the provider's SRTP contexts are its own
    and outlive the gateway that dies."""

    def __init__(self) -> None:
        self.phone, self.provider = udp(PHONE_IP), udp(PROVIDER_IP)
        to_provider, from_provider = keying(), keying()
        self.provider_rx = srtp_session(to_provider, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.provider_tx = srtp_session(from_provider, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.spec = StreamSpec(
            lan_port=port_pair(LAN),
            wan_port=port_pair(WAN),
            phone_addr=self.phone.getsockname(),
            provider_addr=self.provider.getsockname(),
            wan_tx=to_provider,
            wan_rx=from_provider,
        )

    def prime(self, seq: int) -> None:
        """A new SSRC's first packet is on probation (RFC 3550 A.1): send the one before."""
        self.phone.sendto(rtp(seq - 1, PHONE_SSRC), (LAN, self.spec.lan_port))

    def exchange(self, seq: int) -> None:
        """One packet each way with sequence number ``seq``, checked at both far ends."""
        self.phone.sendto(rtp(seq, PHONE_SSRC), (LAN, self.spec.lan_port))
        data, _ = self.provider.recvfrom(2048)
        assert self.provider_rx.unprotect(data) == rtp(seq, PHONE_SSRC)  # auth, ROC, replay
        self.provider.sendto(
            self.provider_tx.protect(rtp(seq, PROVIDER_SSRC)), (WAN, self.spec.wan_port)
        )
        data, _ = self.phone.recvfrom(2048)
        assert data == rtp(seq, PROVIDER_SSRC)

    def close(self) -> None:
        self.phone.close()
        self.provider.close()


async def until(condition: Callable[[], object], what: str) -> None:
    async with asyncio.timeout(TIMEOUT * 2):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


@pytest.mark.parametrize("fastpath", ["1", "0"])
async def test_a_call_taken_over_by_other_workers_keeps_its_srtp_across_a_wrap(
    fastpath: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", fastpath)
    if fastpath == "1" and not fastpath_enabled():
        pytest.skip("the C fast path is not built")
    ends = FarEnds()
    lost: list[list[str]] = []
    start = 65500
    # restart_limit=1: the first death is final, as when the whole active gateway dies.
    active = MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, on_worker_lost=lost.append, restart_limit=1
    )
    standby = MediaController(lan_address=LAN, wan_address=WAN, workers=2)
    await active.start()
    await standby.start()
    try:
        await active.open_stream("c7", 0, ends.spec)
        ends.prime(start)
        for seq in range(start, start + 30):
            await asyncio.to_thread(ends.exchange, seq)
        last = (start + 29) & 0xFFFF

        def checkpointed() -> bool:
            cp = active.checkpoint("c7", 0)
            return cp is not None and [i.seq for i in cp.tx + cp.rx] == [last, last]

        await until(checkpointed, "checkpoint before the wrap")
        # The sequence wraps after the checkpoint: the new worker must bump the ROC itself.
        for seq in range(start + 30, start + 60):
            await asyncio.to_thread(ends.exchange, seq)
        [(index, spec, checkpoint)] = active.stream_records("c7")
        assert index == 0 and spec == ends.spec and checkpoint is not None
        assert active.stream_records("no-such-call") == []
        (pid,) = active.worker_pids()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: active.worker_states()[0]["state"] == "failed", "active worker gone")
        assert lost == [["c7"]]

        assert await standby.restore_streams("c7", [(index, spec, checkpoint)])
        # A second restore of the same call is refused, never doubled.
        assert not await standby.restore_streams("c7", [(index, spec, checkpoint)])
        # The phone kept sending while nothing relayed: its sequence numbers moved on.
        for seq in range(start + 80, start + 130):
            await asyncio.to_thread(ends.exchange, seq)
        stats = await standby.stats()
        assert set(stats) == {"c7/0"}
        counters = stats["c7/0"]
        assert counters.drop_auth == counters.drop_replay == counters.drop_ssrc == 0
        assert counters.lan_out_packets == counters.wan_out_packets == 50

        def rolled_over() -> bool:
            cp = standby.checkpoint("c7", 0)
            return cp is not None and [i.roc for i in cp.tx + cp.rx] == [1, 1]

        await until(rolled_over, "ROC 1 checkpointed on the standby")
        [(_, kept, _)] = standby.stream_records("c7")
        assert kept == spec
        # The call ends on the standby: its ports are free again.
        await standby.close_call("c7")
        assert standby.stream_records("c7") == []
    finally:
        ends.close()
        await standby.stop()
        await active.stop()


async def test_a_stream_that_cannot_be_opened_makes_the_restore_fail_and_closes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", "0")
    ends = FarEnds()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken = port_pair(WAN)
    blocker.bind((WAN, taken))
    broken = StreamSpec(
        lan_port=port_pair(LAN),
        wan_port=taken,
        phone_addr=ends.spec.phone_addr,
        provider_addr=ends.spec.provider_addr,
        wan_tx=keying(),
        wan_rx=keying(),
    )
    standby = MediaController(lan_address=LAN, wan_address=WAN, workers=1)
    await standby.start()
    try:
        assert not await standby.restore_streams("c9", [(0, ends.spec, None), (1, broken, None)])
        assert standby.stream_records("c9") == []
        # Stream 0 was closed again: its ports open for a new call at once.
        await standby.open_stream("c10", 0, ends.spec)
        ends.prime(10)
        for seq in range(10, 15):
            await asyncio.to_thread(ends.exchange, seq)
    finally:
        blocker.close()
        ends.close()
        await standby.stop()
