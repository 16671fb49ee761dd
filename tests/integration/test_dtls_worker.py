"""A real media worker with a DTLS-SRTP keyed stream (RFC 5763, RFC 5764, RFC 7983).

The far end is pyOpenSSL over a UDP socket, written here without the gateway's DTLS code (its
own handshake loop and its own RFC 5764 §4.2 key split), in both roles. Addresses are this
test's own loopback range 127.0.66.0/24; waits are socket timeouts, DTLS's own retransmission
timer or controller round trips, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import Iterator

import pylibsrtp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from gateway.media.control import DtlsKeying, StreamCounters, StreamSpec, UpdateStream
from gateway.media.controller import MediaController
from gateway.media.dtls_identity import DtlsIdentity

LAN = "127.0.66.1"
WAN = "127.0.66.2"
PHONE_IP = "127.0.66.10"
PROVIDER_IP = "127.0.66.30"
STRANGER_IP = "127.0.66.99"
TIMEOUT = 5.0
PROFILES = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")


def rtp(seq: int, ssrc: int = 0xCAFEBABE) -> bytes:
    # A 440 Hz-ish pattern: what matters is that the payload arrives unchanged.
    payload = bytes((seq * 7 + i * 13) & 0xFF for i in range(160))
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


def port_pair(address: str) -> int:
    """An OS-picked port P with P+1 free too (the worker binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((address, 0))
            port = first.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((address, port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


class FarEnd:
    """The provider's DTLS-SRTP media edge: pyOpenSSL on a UDP socket, blocking."""

    def __init__(self, identity: DtlsIdentity, role: str, source_ip: str = PROVIDER_IP) -> None:
        self.identity = identity
        self.role = role
        self.sock = udp(source_ip)
        context = SSL.Context(SSL.DTLS_METHOD)
        context.use_certificate(x509.load_der_x509_certificate(identity.certificate_der))
        key = serialization.load_pem_private_key(identity.key_pem, password=None)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        self.conn = SSL.Connection(context, None)
        if role == "client":
            self.conn.set_connect_state()
        else:
            self.conn.set_accept_state()
        self.peer: tuple[str, int] | None = None
        self.peer_certificate: bytes | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def _flush(self, dest: tuple[str, int]) -> None:
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            self.sock.sendto(data, dest)

    def handshake(self, dest: tuple[str, int]) -> None:
        """Run the handshake with the gateway's WAN port ``dest``; raises SSL.Error."""
        self.peer = dest
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self._flush(dest)
            else:
                self._flush(dest)
                break
            wait = self.conn.DTLSv1_get_timeout()
            self.sock.settimeout(min(wait, TIMEOUT) if wait is not None else TIMEOUT)
            try:
                data, source = self.sock.recvfrom(4096)
            except TimeoutError:
                self.conn.DTLSv1_handle_timeout()  # our flight was lost: send it again
                self._flush(dest)
                continue
            assert source == dest
            self.conn.bio_write(data)
        self.sock.settimeout(TIMEOUT)
        cert = self.conn.get_peer_certificate()
        assert cert is not None
        self.peer_certificate = cert.to_cryptography().public_bytes(serialization.Encoding.DER)

    def srtp(self) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
        """(protect, unprotect) sessions from the exported keys (RFC 5764 §4.2 split)."""
        assert self.conn.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
        m = self.conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
        client = m[0:16] + m[32:46]
        server = m[16:32] + m[46:60]
        mine, theirs = (client, server) if self.role == "client" else (server, client)
        profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        tx = pylibsrtp.Session(pylibsrtp.Policy(mine, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, profile))
        rx = pylibsrtp.Session(pylibsrtp.Policy(theirs, pylibsrtp.Policy.SSRC_ANY_INBOUND, profile))
        return tx, rx

    def nothing_queued(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recvfrom(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        return False


@contextlib.contextmanager
def closing(*socks: socket.socket) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in socks:
            sock.close()


async def counters(controller: MediaController, call_id: str) -> StreamCounters:
    return (await controller.stats())[f"{call_id}/0"]


async def until(controller: MediaController, call_id: str, ready: object) -> StreamCounters:
    """Query the worker's counters until ``ready(counters)`` holds (a bounded number)."""
    assert callable(ready)
    for _ in range(500):
        found = await counters(controller, call_id)
        if ready(found):
            return found
    raise AssertionError(f"counters never became ready: {found}")


def gateway_spec(
    far: FarEnd, phone: socket.socket, gateway_role: str, fingerprint: str
) -> StreamSpec:
    return StreamSpec(
        lan_port=port_pair(LAN),
        wan_port=port_pair(WAN),
        phone_addr=phone.getsockname(),
        provider_addr=far.address,
        wan_rtcp_mux=True,
        wan_dtls=DtlsKeying(
            role=gateway_role,
            fingerprints=(("sha-256", fingerprint),),
            profiles=PROFILES,
            generation=1,
        ),
    )


@pytest.mark.parametrize("gateway_role", ["server", "client"])
def test_dtls_keyed_stream_carries_a_tone_both_ways(gateway_role: str) -> None:
    async def scenario() -> None:
        identity = DtlsIdentity()
        far_identity = DtlsIdentity()
        far = FarEnd(far_identity, "client" if gateway_role == "server" else "server")
        phone = udp(PHONE_IP)
        failures: list[tuple[str, str]] = []
        async with MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            dtls_identity=identity,
            on_dtls_failed=lambda call, reason: failures.append((call, reason)),
        ) as controller:
            with closing(far.sock, phone):
                spec = gateway_spec(far, phone, gateway_role, far_identity.fingerprint())
                wan = (WAN, spec.wan_port)
                await controller.open_stream("dtls-1", 0, spec)
                if gateway_role == "server":
                    # Before any handshake: the phone's media goes nowhere (fail closed).
                    for seq in range(3):
                        phone.sendto(rtp(seq), (LAN, spec.lan_port))
                    await until(controller, "dtls-1", lambda c: c.lan_in_packets >= 3)
                    assert far.nothing_queued()
                await asyncio.to_thread(far.handshake, wan)
                assert far.peer_certificate == identity.certificate_der
                # The far end may finish first (as server, it sends the last flight).
                await until(controller, "dtls-1", lambda c: c.dtls_handshakes == 1)
                tx, rx = far.srtp()
                # Phone -> provider: the first packet of a new SSRC is on probation.
                for seq in range(10, 14):
                    phone.sendto(rtp(seq), (LAN, spec.lan_port))
                got: list[bytes] = []
                while len(got) < 3:
                    data, source = await asyncio.to_thread(far.sock.recvfrom, 4096)
                    assert source == wan
                    assert data[0] & 0xC0 == 0x80  # SRTP, never DTLS or plain after this
                    got.append(rx.unprotect(data))
                assert got == [rtp(seq) for seq in range(11, 14)]
                # Provider -> phone.
                for seq in range(100, 103):
                    far.sock.sendto(tx.protect(rtp(seq, ssrc=0x1234)), wan)
                heard: list[bytes] = []
                while len(heard) < 3:
                    data, source = await asyncio.to_thread(phone.recvfrom, 4096)
                    assert source == (LAN, spec.lan_port)
                    heard.append(data)
                assert heard == [rtp(seq, ssrc=0x1234) for seq in range(100, 103)]
                # A re-INVITE with the same generation keeps the association and its keys.
                await controller.submit(UpdateStream("dtls-1", 0, spec))
                far.sock.sendto(tx.protect(rtp(103, ssrc=0x1234)), wan)
                data, _ = await asyncio.to_thread(phone.recvfrom, 4096)
                assert data == rtp(103, ssrc=0x1234)
                found = await counters(controller, "dtls-1")
                assert found.drop_auth == 0
                assert found.dtls_wrong_source == 0
                assert found.wan_out_packets == 3  # only what followed the handshake
                if gateway_role == "server":
                    # The phone's media before the keys: one on probation, two with no keys.
                    assert found.drop_no_peer == 2
        assert failures == []

    asyncio.run(scenario())


def test_a_strangers_client_hello_is_ignored_and_counted() -> None:
    async def scenario() -> None:
        identity = DtlsIdentity()
        far_identity = DtlsIdentity()
        far = FarEnd(far_identity, "client")
        stranger = FarEnd(far_identity, "client", source_ip=STRANGER_IP)
        phone = udp(PHONE_IP)
        async with MediaController(
            lan_address=LAN, wan_address=WAN, workers=1, dtls_identity=identity
        ) as controller:
            with closing(far.sock, phone, stranger.sock):
                spec = gateway_spec(far, phone, "server", far_identity.fingerprint())
                wan = (WAN, spec.wan_port)
                await controller.open_stream("dtls-2", 0, spec)
                with pytest.raises(SSL.WantReadError):
                    stranger.conn.do_handshake()
                stranger.sock.sendto(stranger.conn.bio_read(65536), wan)
                found = await until(controller, "dtls-2", lambda c: c.dtls_wrong_source >= 1)
                assert found.dtls_wrong_source == 1
                assert stranger.nothing_queued()  # no ServerHello for it
                # The signalled provider still gets its association.
                await asyncio.to_thread(far.handshake, wan)
                assert far.peer_certificate == identity.certificate_der

    asyncio.run(scenario())


def test_a_wrong_fingerprint_ends_with_a_failure_report() -> None:
    async def scenario() -> None:
        identity = DtlsIdentity()
        far = FarEnd(DtlsIdentity(), "client")
        phone = udp(PHONE_IP)
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[tuple[str, str]] = loop.create_future()
        async with MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            dtls_identity=identity,
            on_dtls_failed=lambda call, reason: failed.set_result((call, reason)),
        ) as controller:
            with closing(far.sock, phone):
                # The SDP named another certificate than the one the far end presents.
                spec = gateway_spec(far, phone, "server", DtlsIdentity().fingerprint())
                await controller.open_stream("dtls-3", 0, spec)
                with contextlib.suppress(SSL.Error, TimeoutError):
                    await asyncio.to_thread(far.handshake, (WAN, spec.wan_port))
                call, reason = await asyncio.wait_for(failed, TIMEOUT)
                assert call == "dtls-3"
                assert "fingerprint" in reason
                # Nothing the phone sends reaches the far end.
                phone.sendto(rtp(1), (LAN, spec.lan_port))
                phone.sendto(rtp(2), (LAN, spec.lan_port))
                await until(controller, "dtls-3", lambda c: c.lan_in_packets >= 2)
                far.sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        data, _ = far.sock.recvfrom(4096)
                        assert 20 <= data[0] <= 63  # only DTLS (the alert), never media

    asyncio.run(scenario())


def test_a_killed_worker_carries_a_dtls_call_on_without_a_new_handshake() -> None:
    async def scenario() -> None:
        identity = DtlsIdentity()
        far_identity = DtlsIdentity()
        far = FarEnd(far_identity, "client")
        phone = udp(PHONE_IP)
        lost: list[list[str]] = []
        async with MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            dtls_identity=identity,
            on_worker_lost=lost.append,
        ) as controller:
            with closing(far.sock, phone):
                spec = gateway_spec(far, phone, "server", far_identity.fingerprint())
                wan, lan = (WAN, spec.wan_port), (LAN, spec.lan_port)
                await controller.open_stream("dtls-4", 0, spec)
                await asyncio.to_thread(far.handshake, wan)
                tx, rx = far.srtp()

                async def both_ways(first: int) -> None:
                    for seq in range(first, first + 3):
                        phone.sendto(rtp(seq), lan)
                        data, _ = await asyncio.to_thread(far.sock.recvfrom, 4096)
                        assert rx.unprotect(data) == rtp(seq)
                        far.sock.sendto(tx.protect(rtp(seq, ssrc=0x1234)), wan)
                        data, _ = await asyncio.to_thread(phone.recvfrom, 4096)
                        assert data == rtp(seq, ssrc=0x1234)

                phone.sendto(rtp(9), lan)  # on probation: the phone's SSRC is new
                await both_ways(10)
                # The keys reached the controller before any packet was relayed under them
                # (one ordered channel): a checkpoint naming both SSRCs comes after.
                for _ in range(500):
                    cp = controller.checkpoint("dtls-4", 0)
                    if cp is not None and cp.tx and cp.rx:
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
                assert controller.worker_pids()[0] not in (None, pid)
                # The same association's keys on the successor: no handshake, media flows.
                await both_ways(20)
                found = await counters(controller, "dtls-4")
                assert found.dtls_handshakes == 0 and found.drop_auth == 0
        assert lost == []

    asyncio.run(scenario())
