"""RTCP of a DTLS-keyed WAN side without rtcp-mux, keyed by its own association on the WAN RTCP
port (gateway/media/dtls_streams.py, RFC 5764 §4.1): SRTP keeps the RTP port's keys, SRTCP
both ways takes the RTCP port's; until that association completes RTCP stays dropped; a
crashed worker's successor carries both associations on from the keys DtlsKeyed reported.

The worker side runs in memory: fake sockets collect what the stream sends, and two
:class:`~gateway.media.dtls.DtlsEndpoint` objects stand for the provider's two ports.
"""

from __future__ import annotations

from typing import Any

import pytest
from msgspec import structs

from gateway.media.control import DtlsFailed, DtlsKeyed, DtlsKeying, StreamSpec
from gateway.media.dtls import DtlsDone, DtlsEndpoint
from gateway.media.dtls_identity import DtlsIdentity
from gateway.media.dtls_streams import DtlsStreams
from gateway.media.relay import LAN_RTCP, WAN_RTCP, WAN_RTP, RelayStream
from gateway.media.srtp import SrtpError, SrtpProtector, SrtpUnprotector

PHONE = ("127.0.70.10", 4000)
PHONE_RTCP = ("127.0.70.10", 4001)
PROVIDER = ("127.0.70.30", 40000)
PROVIDER_RTCP = ("127.0.70.30", 40001)
PROFILES = ("AES_CM_128_HMAC_SHA1_80",)
# A receiver report with one report block (RFC 3550 §6.4.2), sender SSRC 0x11223344.
RTCP_RR = bytes.fromhex("81c90007") + bytes.fromhex("11223344") + bytes(24)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, dest: Any) -> int:
        self.sent.append((data, dest))
        return len(data)


@pytest.fixture(scope="module")
def certs() -> tuple[DtlsIdentity, DtlsIdentity]:
    return DtlsIdentity(), DtlsIdentity()


class Call:
    """One DTLS-keyed stream without rtcp-mux: the gateway is the client on both ports."""

    def __init__(self, ours: DtlsIdentity, provider: DtlsIdentity, keyed: Any = None) -> None:
        self.reports: list[DtlsFailed | DtlsKeyed] = []
        self.warnings: list[str] = []
        self.streams = DtlsStreams(self.reports.append, self.warnings.append)
        self.streams.set_identity(ours.certificate_der, ours.key_pem)
        keying = DtlsKeying("client", (("sha-256", provider.fingerprint()),), PROFILES, 0)
        self.spec = StreamSpec(
            lan_port=10000,
            wan_port=20000,
            phone_addr=PHONE,
            provider_addr=PROVIDER,
            wan_dtls=keying,
        )
        opened = self.spec if keyed is None else structs.replace(self.spec, **keyed)
        self.relay = RelayStream(opened)
        self.rtp_sock, self.rtcp_sock = FakeSocket(), FakeSocket()
        open_stream: Any = self.streams.open  # the fake sockets stand for real ones
        self.handlers = open_stream("c/0", "c", 0, self.relay, self.rtp_sock, 0.0, self.rtcp_sock)

    def far_end(self, ours: DtlsIdentity, provider: DtlsIdentity) -> DtlsEndpoint:
        return DtlsEndpoint(
            role="server",
            certificate=provider.certificate_der,
            key=provider.key_pem,
            fingerprints=(("sha-256", ours.fingerprint()),),
            profiles=PROFILES,
            now=0.0,
        )

    def pump(self, sock: FakeSocket, far: DtlsEndpoint, dest: Any, which: int) -> None:
        """Move datagrams between one port's association and its far end until quiet."""
        for _ in range(10):
            out, sock.sent = sock.sent, []
            for data, to in out:
                assert to == dest
                far.receive(data, 0.0)
            back = far.datagrams_to_send()
            for data in back:
                assert self.handlers[which](data, dest, 0.0) is None  # never to the relay
            self.streams.step(0.0)
            if not out and not back:
                return

    def phone_rtcp(self, now: float) -> Any:
        return self.handlers[LAN_RTCP](RTCP_RR, PHONE_RTCP, now)


def test_srtcp_is_keyed_by_the_rtcp_ports_association(
    certs: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, provider = certs
    call = Call(ours, provider)
    far_rtp, far_rtcp = call.far_end(ours, provider), call.far_end(ours, provider)
    call.pump(call.rtp_sock, far_rtp, PROVIDER, WAN_RTP)
    assert isinstance(far_rtp.result, DtlsDone)
    (first,) = call.reports
    assert isinstance(first, DtlsKeyed) and first.rtcp_tx is None  # the RTP port's keys first
    # RTP keyed, the RTCP port's association not yet: RTCP stays dropped both ways.
    assert call.phone_rtcp(1.0) is None and call.phone_rtcp(2.0) is None
    rtcp_from_provider = SrtpProtector(far_rtp.result.tx).protect_rtcp(RTCP_RR)
    assert call.handlers[WAN_RTCP](rtcp_from_provider, PROVIDER_RTCP, 2.0) is None
    assert call.relay.counters.drop_rtcp_unkeyed == 3

    call.pump(call.rtcp_sock, far_rtcp, PROVIDER_RTCP, WAN_RTCP)
    done = far_rtcp.result
    assert isinstance(done, DtlsDone)
    assert done.tx.master != far_rtp.result.tx.master  # two associations, two key sets
    last = call.reports[-1]
    assert isinstance(last, DtlsKeyed) and len(call.reports) == 2
    assert (last.tx, last.rx) == (far_rtp.result.rx, far_rtp.result.tx)
    assert (last.rtcp_tx, last.rtcp_rx) == (done.rx, done.tx)
    assert call.relay.counters.dtls_handshakes == 2

    # The phone's RTCP leaves as SRTCP on the WAN RTCP port, under the RTCP port's keys only.
    call.phone_rtcp(3.0)  # a new SSRC's first packet is on probation
    forward = call.phone_rtcp(4.0)
    assert forward is not None
    out, dest, via = forward
    assert (dest, via) == (PROVIDER_RTCP, WAN_RTCP)
    with pytest.raises(SrtpError):
        SrtpUnprotector(far_rtp.result.rx).unprotect_rtcp(out)
    assert SrtpUnprotector(done.rx).unprotect_rtcp(out) == RTCP_RR
    # The provider's SRTCP under the RTCP port's keys reaches the phone; under the RTP
    # port's it does not authenticate.
    assert call.handlers[WAN_RTCP](rtcp_from_provider, PROVIDER_RTCP, 5.0) is None
    srtcp = SrtpProtector(done.tx).protect_rtcp(RTCP_RR)
    forward = call.handlers[WAN_RTCP](srtcp, PROVIDER_RTCP, 5.0)
    assert forward is not None and forward[0] == RTCP_RR and forward[1] == PHONE_RTCP
    assert call.relay.counters.drop_rtcp_unkeyed == 3
    assert call.relay.counters.drop_auth == 1

    # A crashed worker's successor opens the stream with every key DtlsKeyed carried:
    # no handshake on either port, SRTCP carries on under the RTCP port's keys.
    keys = {
        "wan_tx": last.tx,
        "wan_rx": last.rx,
        "wan_rtcp_tx": last.rtcp_tx,
        "wan_rtcp_rx": last.rtcp_rx,
    }
    successor = Call(ours, provider, keys)
    assert successor.rtp_sock.sent == [] and successor.rtcp_sock.sent == []
    # Its signalling updates carry no keys: the associations' keys stand.
    successor.relay.update(successor.streams.update("c/0", successor.spec, 6.0))
    srtcp = SrtpProtector(done.tx).protect_rtcp(RTCP_RR[:8] + b"\x01" + RTCP_RR[9:])
    forward = successor.handlers[WAN_RTCP](srtcp, PROVIDER_RTCP, 6.0)
    assert forward is not None and forward[1] == PHONE_RTCP
    assert successor.reports == []


def test_rtcp_dtls_only_from_the_providers_ip(certs: tuple[DtlsIdentity, DtlsIdentity]) -> None:
    ours, provider = certs
    call = Call(ours, provider)
    stranger = call.far_end(ours, provider)
    for data, _ in call.rtcp_sock.sent:
        stranger.receive(data, 0.0)
    for data in stranger.datagrams_to_send():
        call.handlers[WAN_RTCP](data, ("127.0.70.99", 40001), 0.0)
    call.streams.step(0.0)
    assert call.relay.counters.dtls_wrong_source > 0
    assert call.reports == [] and call.relay.counters.dtls_handshakes == 0


def test_a_failed_rtcp_association_leaves_rtcp_dropped_and_the_call_on(
    certs: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, provider = certs
    call = Call(ours, provider)
    far_rtp = call.far_end(ours, provider)
    call.pump(call.rtp_sock, far_rtp, PROVIDER, WAN_RTP)
    # The RTCP port's far end presents another certificate than the SDP's fingerprint.
    impostor = DtlsIdentity()
    call.pump(call.rtcp_sock, call.far_end(ours, impostor), PROVIDER_RTCP, WAN_RTCP)
    assert [type(r) for r in call.reports] == [DtlsKeyed]  # no DtlsFailed: the call goes on
    assert any("RTCP" in w and "fingerprint" in w for w in call.warnings)
    assert call.phone_rtcp(1.0) is None and call.phone_rtcp(2.0) is None
    assert call.relay.counters.drop_rtcp_unkeyed == 2


def test_rtcp_mux_runs_no_second_association(certs: tuple[DtlsIdentity, DtlsIdentity]) -> None:
    ours, provider = certs
    call = Call(ours, provider, {"wan_rtcp_mux": True})
    assert call.rtp_sock.sent and call.rtcp_sock.sent == []


def test_rtcp_keys_travel_sealed_and_come_back_apart_from_the_signalled_spec() -> None:
    """HA export (gateway/state/calls.py) and the controller's record: the RTCP port's keys
    go with the RTP port's, sealed, never in clear."""
    import secrets

    from gateway.media.control import SrtpKeying
    from gateway.media.controller import _Record
    from gateway.state.calls import decode_call, encode_call
    from gateway.state.seal import Sealer
    from tests.unit.test_dtls_takeover import dtls_call, with_handshake_keys

    suite = PROFILES[0]
    tx, rx, rtcp_tx, rtcp_rx = (SrtpKeying(suite, secrets.token_bytes(30)) for _ in range(4))
    keys = DtlsKeyed("c1", 0, 0, tx, rx, rtcp_tx, rtcp_rx)
    record = with_handshake_keys(dtls_call()[0], keys)
    [stream] = record.streams
    assert (stream.spec.wan_rtcp_tx, stream.spec.wan_rtcp_rx) == (rtcp_tx, rtcp_rx)
    key = secrets.token_bytes(32)
    data = encode_call(record, Sealer(key, "site-a"), "site-a")
    assert data is not None
    for keying in (tx, rx, rtcp_tx, rtcp_rx):
        assert keying.master not in data and keying.master.hex().encode() not in data
    decoded = decode_call(data, Sealer(key, "site-a"))
    assert decoded == record
    carried = _Record.carried(record.key, 0, decoded.streams[0].spec)
    assert carried.spec.wan_rtcp_tx is None and carried.spec.wan_tx is None
    assert carried.dtls_keys is not None
    assert (carried.dtls_keys.rtcp_tx, carried.dtls_keys.rtcp_rx) == (rtcp_tx, rtcp_rx)
    assert carried.carried_spec() == decoded.streams[0].spec
