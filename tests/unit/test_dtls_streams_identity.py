"""Which certificate a worker's DTLS-SRTP handshake presents (gateway/media/dtls_streams.py):
the one the stream's SDP named (``DtlsKeying.local_fingerprint``), even when a renewal handed
the worker a newer one between the offer and the answer; one no longer held fails closed.

The worker side runs in memory: a fake socket collects what the stream sends, and a
:class:`~gateway.media.dtls.DtlsEndpoint` stands for the provider, checking our certificate
against the fingerprint the SDP carried.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.media.control import DtlsFailed, DtlsKeyed, DtlsKeying, StreamSpec
from gateway.media.dtls import DtlsDone, DtlsEndpoint, DtlsFailure
from gateway.media.dtls_identity import DtlsIdentity
from gateway.media.dtls_streams import DtlsStreams
from gateway.media.relay import WAN_RTP, RelayStream

PROVIDER = ("127.0.67.30", 40000)
PROFILES = ("AES_CM_128_HMAC_SHA1_80",)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, dest: Any) -> int:
        self.sent.append((data, dest))
        return len(data)


@pytest.fixture(scope="module")
def certs() -> tuple[DtlsIdentity, DtlsIdentity, DtlsIdentity]:
    return DtlsIdentity(), DtlsIdentity(), DtlsIdentity()


def spec(provider: DtlsIdentity, ours: DtlsIdentity | None) -> StreamSpec:
    keying = DtlsKeying(
        "client",
        (("sha-256", provider.fingerprint()),),
        PROFILES,
        0,
        None if ours is None else ("sha-256", ours.fingerprint()),
    )
    return StreamSpec(lan_port=10000, wan_port=20000, provider_addr=PROVIDER, wan_dtls=keying)


def handshake(streams: DtlsStreams, sock: FakeSocket, handler: Any, far: DtlsEndpoint) -> None:
    """Move datagrams between the stream (client) and the far end until both are quiet."""
    now = 0.0
    for _ in range(10):
        out, sock.sent = sock.sent, []
        for data, dest in out:
            assert dest == PROVIDER
            far.receive(data, now)
        back = far.datagrams_to_send()
        for data in back:
            assert handler(data, PROVIDER, now) is None  # DTLS never reaches the relay
        streams.step(now)
        if not out and not back:
            return


def run(
    ours_named: DtlsIdentity | None,
    held: list[DtlsIdentity],
    provider: DtlsIdentity,
    expected: DtlsIdentity,
) -> tuple[list[DtlsFailed | DtlsKeyed], DtlsEndpoint]:
    reports: list[DtlsFailed | DtlsKeyed] = []
    streams = DtlsStreams(reports.append)
    for identity in held:  # in order: the last one is current
        streams.set_identity(identity.certificate_der, identity.key_pem)
    stream_spec = spec(provider, ours_named)
    sock = FakeSocket()
    handler = streams.open("c/0", "c", 0, RelayStream(stream_spec), sock, 0.0)[WAN_RTP]  # type: ignore[arg-type]
    far = DtlsEndpoint(
        role="server",
        certificate=provider.certificate_der,
        key=provider.key_pem,
        fingerprints=(("sha-256", expected.fingerprint()),),
        profiles=PROFILES,
        now=0.0,
    )
    handshake(streams, sock, handler, far)
    return reports, far


def test_the_certificate_the_offer_named_is_presented_after_a_renewal(
    certs: tuple[DtlsIdentity, DtlsIdentity, DtlsIdentity],
) -> None:
    old, new, provider = certs
    reports, far = run(old, [old, new], provider, expected=old)
    assert isinstance(far.result, DtlsDone), far.result
    assert far.result.peer_fingerprint == old.fingerprint()
    [keyed] = reports
    assert isinstance(keyed, DtlsKeyed) and keyed.tx == far.result.rx


def test_without_a_named_certificate_the_current_one_is_presented(
    certs: tuple[DtlsIdentity, DtlsIdentity, DtlsIdentity],
) -> None:
    old, new, provider = certs
    reports, far = run(None, [old, new], provider, expected=new)
    assert isinstance(far.result, DtlsDone) and far.result.peer_fingerprint == new.fingerprint()
    assert [type(r) for r in reports] == [DtlsKeyed]


def test_a_named_certificate_no_longer_held_fails_closed(
    certs: tuple[DtlsIdentity, DtlsIdentity, DtlsIdentity],
) -> None:
    """Two renewals: the first certificate is gone; the stream never presents another one."""
    old, new, provider = certs
    newest = DtlsIdentity()
    reports, far = run(old, [old, new, newest], provider, expected=old)
    [failed] = reports
    assert isinstance(failed, DtlsFailed) and "no longer held" in failed.reason
    assert far.result is None or isinstance(far.result, DtlsFailure)


def test_a_certificate_an_open_stream_names_is_kept_through_renewals(
    certs: tuple[DtlsIdentity, DtlsIdentity, DtlsIdentity],
) -> None:
    """A stream pinned to the first certificate keeps it held; a new generation of its
    association (a re-INVITE) handshakes with it again."""
    old, new, provider = certs
    reports: list[DtlsFailed | DtlsKeyed] = []
    streams = DtlsStreams(reports.append)
    streams.set_identity(old.certificate_der, old.key_pem)
    first = spec(provider, old)
    sock = FakeSocket()
    handler = streams.open("c/0", "c", 0, RelayStream(first), sock, 0.0)[WAN_RTP]  # type: ignore[arg-type]
    for identity in (new, DtlsIdentity(), DtlsIdentity()):
        streams.set_identity(identity.certificate_der, identity.key_pem)
    assert first.wan_dtls is not None
    again = StreamSpec(
        lan_port=10000,
        wan_port=20000,
        provider_addr=PROVIDER,
        wan_dtls=DtlsKeying(
            "client", first.wan_dtls.fingerprints, PROFILES, 1, first.wan_dtls.local_fingerprint
        ),
    )
    sock.sent.clear()
    streams.update("c/0", again, 0.0)
    far = DtlsEndpoint(
        role="server",
        certificate=provider.certificate_der,
        key=provider.key_pem,
        fingerprints=(("sha-256", old.fingerprint()),),
        profiles=PROFILES,
        now=0.0,
    )
    handshake(streams, sock, handler, far)
    assert isinstance(far.result, DtlsDone), far.result
    assert [type(r) for r in reports] == [DtlsKeyed]
