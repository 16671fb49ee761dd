"""SRTCP toward the provider across a media worker killed with SIGKILL (RFC 3711 §3.4, §9.1).

The gateway's SRTCP index is its own per-SSRC counter: a successor keyed with the same master
key that started it at 1 again would reuse keystream and see its RTCP dropped as replays. A real
controller and worker processes on loopback (127.0.71.0/24); the provider's SRTCP session is an
independent libsrtp context that lives through the crash and records every index: they must
strictly increase across the kill, with RTCP sent after the last checkpoint (the lag the margin
covers), for an SDES stream (RTCP on its own port), a DTLS-SRTP stream with rtcp-mux, and one
whose RTCP port has its own DTLS association; and across a takeover by another gateway's
workers from the replicated record (HA). Waits are socket timeouts or bounded polls of the
controller, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from collections.abc import Callable

import msgspec
import pylibsrtp
import pytest

from gateway.media.control import DtlsKeying, SrtpKeying, StreamCheckpoint, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.dtls_identity import DtlsIdentity
from gateway.media.srtp import SRTCP_MARGIN
from gateway.media.suites import SrtpSuite
from gateway.media.worker import fastpath_enabled
from gateway.state.calls import ReplicatedStream
from tests.integration.test_dtls_worker import FarEnd, port_pair

LAN = "127.0.71.1"
WAN = "127.0.71.2"
PHONE_IP = "127.0.71.10"
PROVIDER_IP = "127.0.71.30"
TIMEOUT = 5.0
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PHONE_SSRC = 0xCAFEBABE


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, PHONE_SSRC) + b"\xd5" * 160


def report(note: int) -> bytes:
    """The phone's RTCP receiver report (RFC 3550 §6.4.2); ``note`` tells them apart."""
    block = struct.pack("!IIIIII", 0x1234, note, 1000, 7, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, PHONE_SSRC) + block


def srtcp_index(packet: bytes) -> int:
    """The E flag word before the 80-bit tag (RFC 3711 §3.4)."""
    word = int.from_bytes(packet[-14:-10], "big")
    assert word & 0x80000000
    return word & 0x7FFFFFFF


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


class Provider:
    """Where the gateway's SRTCP arrives and the session that checks it."""

    def __init__(self, sock: socket.socket, session: pylibsrtp.Session) -> None:
        self.sock, self.session = sock, session
        self.indexes: list[int] = []

    def receive(self, note: int) -> None:
        """The next RTCP packet (RTP on a muxed port is skipped): authenticated, not a replay,
        the phone's report; its index recorded."""
        while True:
            data, _ = self.sock.recvfrom(4096)
            if 64 <= data[1] & 0x7F <= 95:  # RTCP (RFC 5761 §4)
                break
        assert self.session.unprotect_rtcp(data) == report(note)
        self.indexes.append(srtcp_index(data))


async def until(condition: Callable[[], object], what: str) -> None:
    async with asyncio.timeout(TIMEOUT * 2):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def inbound(k: SrtpKeying) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=k.master,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=SUITE.libsrtp_profile,
    )
    return pylibsrtp.Session(policy)


@pytest.mark.parametrize(
    ("kind", "fastpath"),
    [("sdes", "1"), ("sdes", "0"), ("dtls-mux", "1"), ("dtls-rtcp-port", "1")],
)
async def test_srtcp_indexes_strictly_increase_across_a_killed_worker(
    kind: str, fastpath: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RTCP is always the Python path's; RTP (whose first packet after the restart re-creates
    # the SSRC's libsrtp stream) runs on the C fast path or on Python.
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", fastpath)
    if fastpath == "1" and not fastpath_enabled():
        pytest.skip("the C fast path is not built")
    identity, far_identity = DtlsIdentity(), DtlsIdentity()
    phone, phone_rtcp = udp(PHONE_IP), udp(PHONE_IP)
    far_rtp = FarEnd(far_identity, "client", source_ip=PROVIDER_IP)
    far_rtcp = FarEnd(far_identity, "client", source_ip=PROVIDER_IP)
    socks = [phone, phone_rtcp, far_rtp.sock, far_rtcp.sock]
    lost: list[list[str]] = []
    spec = StreamSpec(
        lan_port=port_pair(LAN),
        wan_port=port_pair(WAN),
        phone_addr=phone.getsockname(),
        phone_rtcp_addr=phone_rtcp.getsockname(),
        provider_addr=far_rtp.address,
        provider_rtcp_addr=far_rtcp.address,
        wan_rtcp_mux=kind == "dtls-mux",
    )
    to_provider = SrtpKeying(SUITE.value, os.urandom(SUITE.master_length))
    if kind == "sdes":
        from_provider = SrtpKeying(SUITE.value, os.urandom(SUITE.master_length))
        spec = msgspec.structs.replace(spec, wan_tx=to_provider, wan_rx=from_provider)
    else:
        dtls = DtlsKeying("server", (("sha-256", far_identity.fingerprint()),), (SUITE.value,), 1)
        spec = msgspec.structs.replace(spec, wan_dtls=dtls)
    wan_rtp, wan_rtcp = (WAN, spec.wan_port), (WAN, spec.wan_port + 1)
    lan_rtp, lan_rtcp = (LAN, spec.lan_port), (LAN, spec.lan_port + 1)
    async with MediaController(
        lan_address=LAN,
        wan_address=WAN,
        workers=1,
        dtls_identity=identity,
        on_worker_lost=lost.append,
    ) as controller:
        try:
            await controller.open_stream("srtcp", 0, spec)
            if kind == "sdes":
                provider = Provider(far_rtcp.sock, inbound(to_provider))
            else:
                await asyncio.to_thread(far_rtp.handshake, wan_rtp)
                if kind == "dtls-mux":
                    provider = Provider(far_rtp.sock, far_rtp.srtp()[1])
                else:
                    await asyncio.to_thread(far_rtcp.handshake, wan_rtcp)
                    provider = Provider(far_rtcp.sock, far_rtcp.srtp()[1])

                def keyed() -> bool:  # the controller holds the keys a successor needs
                    ((_, carried, _),) = controller.stream_records("srtcp")
                    rtcp = kind == "dtls-mux" or carried.wan_rtcp_tx is not None
                    return carried.wan_tx is not None and rtcp

                await until(keyed, "DTLS keys reported")
            phone.sendto(rtp(1), lan_rtp)  # on probation (RFC 3550 A.1): the SSRC is new
            phone.sendto(rtp(2), lan_rtp)
            for note in range(5):
                phone_rtcp.sendto(report(note), lan_rtcp)
                await asyncio.to_thread(provider.receive, note)

            def checkpointed() -> bool:
                cp: StreamCheckpoint | None = controller.checkpoint("srtcp", 0)
                if cp is None:
                    return False
                named = cp.rtcp_srtcp if kind == "dtls-rtcp-port" else cp.srtcp
                return named == ((PHONE_SSRC, 5),)

            await until(checkpointed, "SRTCP index 5 checkpointed")
            # Sent after the checkpoint the successor gets: what the margin must cover.
            for note in range(5, 8):
                phone_rtcp.sendto(report(note), lan_rtcp)
                await asyncio.to_thread(provider.receive, note)
            (pid,) = controller.worker_pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: controller.worker_states()[0]["restarts"] == 1, "restarted")
            await controller.wait_running(TIMEOUT)
            assert controller.worker_pids()[0] not in (None, pid)
            # The phone's RTCP first (no RTP yet on the new worker), then RTP, then RTCP again.
            for note in range(8, 10):
                phone_rtcp.sendto(report(note), lan_rtcp)
                await asyncio.to_thread(provider.receive, note)
            phone.sendto(rtp(40), lan_rtp)
            # Relayed before the next RTCP is sent: its SSRC's libsrtp stream is re-created.
            while True:
                data, _ = await asyncio.to_thread(far_rtp.sock.recvfrom, 4096)
                if data[1] & 0x7F == 0 and data[2:4] == (40).to_bytes(2, "big"):
                    break
            for note in range(10, 12):
                phone_rtcp.sendto(report(note), lan_rtcp)
                await asyncio.to_thread(provider.receive, note)
            before, after = provider.indexes[:8], provider.indexes[8:]
            assert before == list(range(1, 9))
            # Past the checkpoint the successor got (5, or 8 when one more came before the
            # kill) plus the margin, then one by one.
            assert after[0] - SRTCP_MARGIN - 1 in (5, 8)
            assert after == list(range(after[0], after[0] + 4))
            stats = (await controller.stats())["srtcp/0"]
            assert stats.drop_rtcp_unkeyed == stats.drop_malformed == 0
            assert stats.dtls_handshakes == 0  # carried on with the association's keys
            assert lost == []
        finally:
            for sock in socks:
                sock.close()


async def test_srtcp_indexes_strictly_increase_across_a_takeover_by_another_gateway() -> None:
    """HA: the standby's workers restore the stream from the replicated record (its
    checkpoint encoded and decoded as a call record carries it), the active's worker is
    killed and not restarted; RTCP sent after the record was taken is what the margin covers."""
    phone, phone_rtcp = udp(PHONE_IP), udp(PHONE_IP)
    provider_rtp, provider_rtcp = udp(PROVIDER_IP), udp(PROVIDER_IP)
    to_provider = SrtpKeying(SUITE.value, os.urandom(SUITE.master_length))
    spec = StreamSpec(
        lan_port=port_pair(LAN),
        wan_port=port_pair(WAN),
        phone_addr=phone.getsockname(),
        phone_rtcp_addr=phone_rtcp.getsockname(),
        provider_addr=provider_rtp.getsockname(),
        provider_rtcp_addr=provider_rtcp.getsockname(),
        wan_tx=to_provider,
        wan_rx=SrtpKeying(SUITE.value, os.urandom(SUITE.master_length)),
    )
    provider = Provider(provider_rtcp, inbound(to_provider))
    lan_rtp, lan_rtcp = (LAN, spec.lan_port), (LAN, spec.lan_port + 1)
    active = MediaController(lan_address=LAN, wan_address=WAN, workers=1, restart_limit=1)
    standby = MediaController(lan_address=LAN, wan_address=WAN, workers=1)
    await active.start()
    await standby.start()
    try:
        await active.open_stream("srtcp-ha", 0, spec)
        phone.sendto(rtp(1), lan_rtp)  # on probation: the SSRC is new
        phone.sendto(rtp(2), lan_rtp)
        for note in range(5):
            phone_rtcp.sendto(report(note), lan_rtcp)
            await asyncio.to_thread(provider.receive, note)

        def checkpointed() -> bool:
            cp = active.checkpoint("srtcp-ha", 0)
            return cp is not None and cp.srtcp == ((PHONE_SSRC, 5),)

        await until(checkpointed, "SRTCP index 5 checkpointed")
        records = [ReplicatedStream(i, s, c) for i, s, c in active.stream_records("srtcp-ha")]
        wire = msgspec.msgpack.encode(records)
        for note in range(5, 8):  # after the replicated record: the takeover's lag
            phone_rtcp.sendto(report(note), lan_rtcp)
            await asyncio.to_thread(provider.receive, note)
        (pid,) = active.worker_pids()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: active.worker_states()[0]["state"] == "failed", "active worker gone")
        replicated = msgspec.msgpack.decode(wire, type=list[ReplicatedStream])
        assert await standby.restore_streams("srtcp-ha", replicated)
        for note in range(8, 11):
            phone_rtcp.sendto(report(note), lan_rtcp)
            await asyncio.to_thread(provider.receive, note)
        assert provider.indexes[:8] == list(range(1, 9))
        assert provider.indexes[8:] == list(range(5 + SRTCP_MARGIN + 1, 5 + SRTCP_MARGIN + 4))
        stats = (await standby.stats())["srtcp-ha/0"]
        assert stats.drop_rtcp_unkeyed == stats.drop_malformed == 0
    finally:
        for sock in (phone, phone_rtcp, provider_rtp, provider_rtcp):
            sock.close()
        await standby.stop()
        await active.stop()
