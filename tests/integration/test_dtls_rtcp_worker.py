"""A real media worker keying RTCP by its own DTLS association without rtcp-mux (RFC 5764 §4.1).

The far end is test_dtls_worker's pyOpenSSL far end (its own handshake loop and key split),
twice: on the provider's RTP port and on its RTCP port, each handshaking with the gateway's
port of the same component. SRTP keeps the RTP port's keys; SRTCP both ways decrypts only under
the RTCP port's; before that association completes no RTCP crosses. A killed worker's
successor carries both on without a handshake. Addresses: 127.0.70.0/24; waits are socket
timeouts, DTLS's own timer or controller round trips, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct

import pylibsrtp
import pytest

from gateway.media.control import DtlsKeying, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.dtls_identity import DtlsIdentity
from tests.integration.test_dtls_worker import (
    TIMEOUT,
    FarEnd,
    closing,
    counters,
    port_pair,
    rtp,
    udp,
    until,
)

LAN = "127.0.70.1"
WAN = "127.0.70.2"
PHONE_IP = "127.0.70.10"
PROVIDER_IP = "127.0.70.30"
PROFILES = ("AES_CM_128_HMAC_SHA1_80",)


def receiver_report(ssrc: int, lost: int) -> bytes:
    """An RTCP RR with one report block (RFC 3550 §6.4.2)."""
    block = struct.pack("!IIIIII", 0x1234, lost, 1000, 7, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block


def test_rtcp_without_mux_is_keyed_by_the_rtcp_ports_association() -> None:
    async def scenario() -> None:
        identity, far_identity = DtlsIdentity(), DtlsIdentity()
        far_rtp = FarEnd(far_identity, "client", source_ip=PROVIDER_IP)
        far_rtcp = FarEnd(far_identity, "client", source_ip=PROVIDER_IP)
        phone, phone_rtcp = udp(PHONE_IP), udp(PHONE_IP)
        failures: list[tuple[str, str]] = []
        lost: list[list[str]] = []
        async with MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            dtls_identity=identity,
            on_dtls_failed=lambda call, reason: failures.append((call, reason)),
            on_worker_lost=lost.append,
        ) as controller:
            with closing(far_rtp.sock, far_rtcp.sock, phone, phone_rtcp):
                spec = StreamSpec(
                    lan_port=port_pair(LAN),
                    wan_port=port_pair(WAN),
                    phone_addr=phone.getsockname(),
                    phone_rtcp_addr=phone_rtcp.getsockname(),
                    provider_addr=far_rtp.address,
                    provider_rtcp_addr=far_rtcp.address,
                    wan_rtcp_mux=False,
                    wan_dtls=DtlsKeying(
                        "server", (("sha-256", far_identity.fingerprint()),), PROFILES, 1
                    ),
                )
                wan_rtp, wan_rtcp = (WAN, spec.wan_port), (WAN, spec.wan_port + 1)
                lan_rtp, lan_rtcp = (LAN, spec.lan_port), (LAN, spec.lan_port + 1)
                await controller.open_stream("rtcp-1", 0, spec)
                await asyncio.to_thread(far_rtp.handshake, wan_rtp)
                await until(controller, "rtcp-1", lambda c: c.dtls_handshakes == 1)
                tx, rx = far_rtp.srtp()
                # RTP keyed, RTCP's association not yet: the phone's RTCP goes nowhere.
                for n in range(2):
                    phone_rtcp.sendto(receiver_report(0xCAFEBABE, n), lan_rtcp)
                await until(controller, "rtcp-1", lambda c: c.drop_rtcp_unkeyed >= 2)
                assert far_rtcp.nothing_queued()

                await asyncio.to_thread(far_rtcp.handshake, wan_rtcp)
                assert far_rtcp.peer_certificate == identity.certificate_der
                await until(controller, "rtcp-1", lambda c: c.dtls_handshakes == 2)
                rtcp_tx, rtcp_rx = far_rtcp.srtp()

                # SRTP on the RTP port under the RTP port's keys, as before.
                phone.sendto(rtp(1), lan_rtp)  # on probation: the phone's SSRC is new
                phone.sendto(rtp(2), lan_rtp)
                data, source = await asyncio.to_thread(far_rtp.sock.recvfrom, 4096)
                assert source == wan_rtp and rx.unprotect(data) == rtp(2)
                # Phone -> provider RTCP: SRTCP on the RTCP port, the RTCP association's keys.
                report = receiver_report(0xCAFEBABE, 5)
                phone_rtcp.sendto(report, lan_rtcp)
                data, source = await asyncio.to_thread(far_rtcp.sock.recvfrom, 4096)
                assert source == wan_rtcp and data[0] & 0xC0 == 0x80  # SRTCP, not DTLS
                with pytest.raises(pylibsrtp.Error):
                    rx.unprotect_rtcp(data)
                assert rtcp_rx.unprotect_rtcp(data) == report
                # Provider -> phone RTCP, under the RTCP association's keys.
                sent = receiver_report(0x1234, 9)
                far_rtcp.sock.sendto(rtcp_tx.protect_rtcp(sent), wan_rtcp)
                data, source = await asyncio.to_thread(phone_rtcp.recvfrom, 4096)
                assert (data, source) == (sent, lan_rtcp)
                # Under the RTP association's keys it does not authenticate (its first SRTCP
                # index repeats the one just accepted: refused as a replay before any check).
                for n in range(2):
                    far_rtcp.sock.sendto(tx.protect_rtcp(receiver_report(0x1234, n)), wan_rtcp)
                found = await until(controller, "rtcp-1", lambda c: c.drop_auth >= 1)
                assert found.drop_rtcp_unkeyed == 2 and found.dtls_wrong_source == 0
                assert found.provider_reported_lost == 9  # the provider's report was read

                # A killed worker: its successor carries both associations on, no handshake.
                for _ in range(500):
                    cp = controller.checkpoint("rtcp-1", 0)
                    if cp is not None and cp.tx:
                        break
                    await asyncio.sleep(0.01)
                (pid,) = controller.worker_pids()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                for _ in range(1000):
                    if controller.worker_states()[0]["restarts"] == 1:
                        break
                    await asyncio.sleep(0.01)
                await controller.wait_running(TIMEOUT)
                sent = receiver_report(0x1234, 11)
                far_rtcp.sock.sendto(rtcp_tx.protect_rtcp(sent), wan_rtcp)
                data, source = await asyncio.to_thread(phone_rtcp.recvfrom, 4096)
                assert (data, source) == (sent, lan_rtcp)
                found = await counters(controller, "rtcp-1")
                assert found.dtls_handshakes == 0 and found.drop_rtcp_unkeyed == 0
        assert failures == [] and lost == []

    asyncio.run(scenario())
