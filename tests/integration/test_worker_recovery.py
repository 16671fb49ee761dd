"""A media worker killed with SIGKILL: its successor carries the calls on (issue 14, item 1).

A real controller and worker processes on loopback (127.0.32.0/24), a phone socket and a
provider socket whose SRTP sessions are independent pylibsrtp contexts that live through the
crash: after it, packets both ways must still authenticate at the far end (right ROC, no
replay), including on a stream whose sequence numbers wrapped around the checkpoint. Both
packet loops (C fast path and Python). Waits are socket timeouts or bounded polls of the
controller's state, never fixed sleeps.
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

LAN = "127.0.32.20"
WAN = "127.0.32.21"
PHONE_IP = "127.0.32.10"
PROVIDER_IP = "127.0.32.30"
TIMEOUT = 5.0
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PHONE_SSRC = 0xCAFEBABE
PROVIDER_SSRC = 0x0BADF00D


def rtp(seq: int, ssrc: int) -> bytes:
    payload = seq.to_bytes(4, "big") * 40
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + payload


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


def free_port_pair(address: str) -> int:
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


def session(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    profile = SrtpSuite.from_name(k.suite).libsrtp_profile
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=profile)
    )


def keying() -> SrtpKeying:
    return SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))


class Call:
    """A phone and a provider around one gateway stream; the provider's SRTP contexts are
    its own (they survive the worker's crash, as a real provider's do)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phone, self.provider = udp(PHONE_IP), udp(PROVIDER_IP)
        self.to_provider, self.from_provider = keying(), keying()
        self.provider_rx = session(self.to_provider, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.provider_tx = session(self.from_provider, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.spec = StreamSpec(
            lan_port=free_port_pair(LAN),
            wan_port=free_port_pair(WAN),
            phone_addr=self.phone.getsockname(),
            provider_addr=self.provider.getsockname(),
            wan_tx=self.to_provider,
            wan_rx=self.from_provider,
        )

    def prime(self, seq: int) -> None:
        """The phone's packet before ``seq``: a new SSRC's first packet is on probation
        (RFC 3550 A.1) and dropped; the next one in sequence is relayed."""
        self.phone.sendto(rtp(seq - 1, PHONE_SSRC), (LAN, self.spec.lan_port))

    def exchange(self, seq: int) -> None:
        """One packet each way with sequence number ``seq`` (the far ends check it all)."""
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
    """Poll the controller's state (bounded) until ``condition`` holds."""
    async with asyncio.timeout(TIMEOUT * 2):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def worker_restarted(controller: MediaController, restarts: int) -> None:
    await until(lambda: controller.worker_states()[0]["restarts"] == restarts, "restarted")
    await controller.wait_running(TIMEOUT)


@pytest.mark.parametrize("fastpath", ["1", "0"])
async def test_calls_survive_a_killed_worker_across_a_sequence_wrap(
    fastpath: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", fastpath)
    if fastpath == "1" and not fastpath_enabled():
        pytest.skip("the C fast path is not built")
    lost: list[list[str]] = []
    calls = [Call("wraps"), Call("steady")]
    starts = {"wraps": 65500, "steady": 1000}
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, on_worker_lost=lost.append
    ) as controller:
        try:
            for call in calls:
                await controller.open_stream(call.name, 0, call.spec)
                call.prime(starts[call.name])
            for call in calls:
                for seq in range(starts[call.name], starts[call.name] + 30):
                    await asyncio.to_thread(call.exchange, seq)
            # A checkpoint taken before the wrap (65529), then the sequence wraps before the
            # crash: the new worker must bump the ROC itself (RFC 3711 §3.3.1).
            for call in calls:
                last = (starts[call.name] + 29) & 0xFFFF

                def seen(name: str = call.name, last: int = last) -> bool:
                    cp = controller.checkpoint(name, 0)
                    return cp is not None and [i.seq for i in cp.tx + cp.rx] == [last, last]

                await until(seen, f"checkpoint of {call.name}")
            for call in calls:
                for seq in range(starts[call.name] + 30, starts[call.name] + 60):
                    await asyncio.to_thread(call.exchange, seq)
            (pid,) = controller.worker_pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await worker_restarted(controller, 1)
            assert controller.worker_pids()[0] not in (None, pid)
            # The phones kept sending while the worker was down: their sequence numbers moved
            # on (those packets were lost with the dead worker's sockets).
            for call in calls:
                for seq in range(starts[call.name] + 80, starts[call.name] + 130):
                    await asyncio.to_thread(call.exchange, seq)
            stats = await controller.stats()
            assert set(stats) == {"wraps/0", "steady/0"}
            for counters in stats.values():
                assert counters.drop_auth == counters.drop_replay == 0
                assert counters.drop_malformed == counters.drop_ssrc == 0
                assert counters.lan_out_packets == counters.wan_out_packets == 50
            assert lost == []
            # The restored contexts checkpoint on: past the wrap, ROC 1 both ways.
            cp = controller.checkpoint("wraps", 0)
            assert cp is not None and [i.roc for i in cp.tx + cp.rx] in ([0, 0], [1, 1])

            def wrapped() -> bool:
                cp = controller.checkpoint("wraps", 0)
                return cp is not None and [i.roc for i in cp.tx + cp.rx] == [1, 1]

            await until(wrapped, "ROC 1 checkpointed")
            # BYE: the call ends on the new worker, its ports are free for a new call.
            await controller.close_call("wraps")
            fresh = Call("fresh")
            calls.append(fresh)
            await controller.open_stream("fresh", 0, fresh.spec)
            fresh.prime(1)
            for seq in range(1, 10):
                await asyncio.to_thread(fresh.exchange, seq)
        finally:
            for call in calls:
                call.close()


async def test_a_worker_in_a_crash_loop_is_not_restarted_forever() -> None:
    lost: asyncio.Queue[list[str]] = asyncio.Queue()
    async with MediaController(
        lan_address=LAN,
        wan_address=WAN,
        workers=1,
        on_worker_lost=lost.put_nowait,
        restart_limit=2,
        restart_window=60.0,
    ) as controller:
        call = Call("looping")
        try:
            await controller.open_stream("looping", 0, call.spec)
            call.prime(1)
            await asyncio.to_thread(call.exchange, 1)
            (pid,) = controller.worker_pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await worker_restarted(controller, 1)
            assert lost.empty()  # the first death: restored, not lost
            (pid,) = controller.worker_pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert await asyncio.wait_for(lost.get(), TIMEOUT) == ["looping"]
            (state,) = controller.worker_states()
            assert state["failed"] and state["pid"] is None and state["restarts"] == 1
            assert controller.worker_pids() == [None]
        finally:
            call.close()
