"""A DTLS-SRTP call's media taken over by the other gateway's media workers (issue 14).

Two media controllers, each with its own worker and its own DTLS certificate, stand for the
active and the standby gateway of a pair (loopback 127.0.68.0/24). The provider's end is
pyOpenSSL (``tests.integration.test_dtls_worker.FarEnd``): it runs one handshake with the
active's worker and keeps its SRTP contexts throughout. The active's ``stream_records()``
carry the keys that handshake gave (the worker's DtlsKeyed); its worker is killed with SIGKILL
(by PID) and not restarted; the standby's ``restore_streams`` carries the association on with
those keys: media flows both ways with no new handshake and nothing failing authentication.
Waits are socket timeouts or controller round trips, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import msgspec
import pylibsrtp

from gateway.media.control import StreamSpec
from gateway.media.controller import MediaController
from gateway.media.dtls_identity import DtlsIdentity
from tests.integration import test_dtls_worker as dtls_worker
from tests.integration.test_dtls_worker import FarEnd, closing, counters, rtp

LAN = "127.0.68.1"
WAN = "127.0.68.2"
PHONE_IP = "127.0.68.10"
PROVIDER_IP = "127.0.68.30"
TIMEOUT = 5.0


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


async def both_ways(
    far: FarEnd,
    phone: socket.socket,
    spec: StreamSpec,
    sessions: tuple[pylibsrtp.Session, pylibsrtp.Session],
    first: int,
) -> None:
    """Three packets each way, checked at both ends with the provider's own contexts."""
    tx, rx = sessions
    wan, lan = (WAN, spec.wan_port), (LAN, spec.lan_port)
    for seq in range(first, first + 3):
        phone.sendto(rtp(seq), lan)
        data, source = await asyncio.to_thread(far.sock.recvfrom, 4096)
        assert source == wan and data[0] & 0xC0 == 0x80  # SRTP, no DTLS record
        assert rx.unprotect(data) == rtp(seq)
        far.sock.sendto(tx.protect(rtp(seq, ssrc=0x1234)), wan)
        data, _ = await asyncio.to_thread(phone.recvfrom, 4096)
        assert data == rtp(seq, ssrc=0x1234)


def test_the_standby_carries_a_dtls_call_on_with_the_handshakes_keys() -> None:
    async def scenario() -> None:
        far_identity = DtlsIdentity()
        far = FarEnd(far_identity, "client", source_ip=PROVIDER_IP)
        phone = udp(PHONE_IP)
        lost: list[list[str]] = []
        active = MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            dtls_identity=DtlsIdentity(),
            on_worker_lost=lost.append,
            restart_limit=1,  # the first death is final, as when the whole gateway dies
        )
        # The standby's own certificate: a carried-on association presents none.
        standby = MediaController(
            lan_address=LAN, wan_address=WAN, workers=1, dtls_identity=DtlsIdentity()
        )
        await active.start()
        await standby.start()
        try:
            with closing(far.sock, phone):
                spec = dtls_worker.gateway_spec(far, phone, "server", far_identity.fingerprint())
                spec = _on_this_range(spec)
                await active.open_stream("c3", 0, spec)
                [(_, before, _)] = active.stream_records("c3")
                assert before.wan_tx is None and before.wan_rx is None  # no handshake yet
                await asyncio.to_thread(far.handshake, (WAN, spec.wan_port))
                sessions = far.srtp()
                phone.sendto(rtp(9), (LAN, spec.lan_port))  # the phone's SSRC on probation
                await both_ways(far, phone, spec, sessions, 10)
                for _ in range(500):  # the checkpoint follows the keys on the channel
                    cp = active.checkpoint("c3", 0)
                    if cp is not None and cp.tx and cp.rx:
                        break
                    await asyncio.sleep(0.01)
                [(index, carried, checkpoint)] = active.stream_records("c3")
                assert carried.wan_dtls == spec.wan_dtls
                assert carried.wan_tx is not None and carried.wan_rx is not None
                assert checkpoint is not None and checkpoint.tx and checkpoint.rx
                (pid,) = active.worker_pids()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                for _ in range(1000):
                    if active.worker_states()[0]["state"] == "failed":
                        break
                    await asyncio.sleep(0.01)
                assert lost == [["c3"]]

                assert await standby.restore_streams("c3", [(index, carried, checkpoint)])
                await both_ways(far, phone, spec, sessions, 20)
                found = await counters(standby, "c3")
                assert found.dtls_handshakes == 0 and found.drop_auth == 0
                assert found.drop_replay == 0
                # The standby, now active, replicates the same keys in turn.
                [(_, again, _)] = standby.stream_records("c3")
                assert (again.wan_tx, again.wan_rx) == (carried.wan_tx, carried.wan_rx)
                await standby.close_call("c3")
                assert standby.stream_records("c3") == []
        finally:
            await standby.stop()
            await active.stop()

    asyncio.run(scenario())


def _on_this_range(spec: StreamSpec) -> StreamSpec:
    """``gateway_spec`` picks ports on its own range's addresses: pick them on ours."""
    return msgspec.structs.replace(
        spec, lan_port=dtls_worker.port_pair(LAN), wan_port=dtls_worker.port_pair(WAN)
    )
