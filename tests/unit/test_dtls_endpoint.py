"""The sans-IO DTLS-SRTP endpoint: two endpoints handshake in memory (RFC 5763, RFC 5764)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from gateway.media.dtls import DtlsDone, DtlsEndpoint, DtlsFailure, is_dtls
from gateway.media.dtls_identity import DtlsIdentity, certificate_fingerprint
from gateway.media.srtp import SrtpProtector, SrtpUnprotector

PROFILES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM")
RTP = bytes.fromhex("80000001000000100000abcd") + bytes(160)


def endpoint(
    role: str,
    own: DtlsIdentity,
    peer: DtlsIdentity,
    now: float = 0.0,
    profiles: tuple[str, ...] = PROFILES,
    mtu: int = 1200,
    fingerprint: str | None = None,
) -> DtlsEndpoint:
    return DtlsEndpoint(
        role=role,
        certificate=own.certificate_der,
        key=own.key_pem,
        fingerprints=(("sha-256", fingerprint or peer.fingerprint()),),
        profiles=profiles,
        now=now,
        mtu=mtu,
    )


def exchange(a: DtlsEndpoint, b: DtlsEndpoint, now: float = 0.0, rounds: int = 10) -> list[int]:
    """Move datagrams between the two until neither has any; returns their sizes."""
    sizes = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for datagram in src.datagrams_to_send():
                assert is_dtls(datagram)
                sizes.append(len(datagram))
                dst.receive(datagram, now)
                moved = True
        if not moved:
            break
    return sizes


@pytest.fixture(scope="module")
def identities() -> tuple[DtlsIdentity, DtlsIdentity]:
    return DtlsIdentity(), DtlsIdentity()


def test_identity_fingerprint_is_stable_and_matches_the_certificate() -> None:
    identity = DtlsIdentity()
    value = identity.fingerprint()
    assert value == identity.fingerprint()
    assert value == certificate_fingerprint(identity.certificate_der, "SHA-256")
    assert len(value.split(":")) == 32
    assert value == value.upper()
    assert "PRIVATE" not in repr(identity)
    assert identity.current() is False  # fresh: not replaced
    with pytest.raises(ValueError):
        identity.fingerprint("md5")


def test_identity_is_replaced_before_it_expires() -> None:
    import datetime

    clock = [datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)]
    identity = DtlsIdentity(clock=lambda: clock[0])
    first = identity.fingerprint()
    first_pair = (identity.certificate_der, identity.key_pem)
    assert identity.previous is None
    clock[0] += datetime.timedelta(days=22)
    assert identity.current() is False
    clock[0] += datetime.timedelta(days=2)
    assert identity.current() is True
    assert identity.fingerprint() != first
    # The replaced one is kept for calls whose SDP named it (handed to fresh workers too).
    assert identity.previous == first_pair


@pytest.mark.parametrize("client_first", [True, False])
def test_handshake_keys_agree(
    identities: tuple[DtlsIdentity, DtlsIdentity], client_first: bool
) -> None:
    ours, theirs = identities
    client = endpoint("client", ours, theirs)
    server = endpoint("server", theirs, ours)
    if client_first:
        exchange(client, server)
    else:
        exchange(server, client)
    assert isinstance(client.result, DtlsDone), client.result
    assert isinstance(server.result, DtlsDone), server.result
    assert client.result.suite == "AES_CM_128_HMAC_SHA1_80"  # the server's first choice
    assert client.result.tx == server.result.rx
    assert client.result.rx == server.result.tx
    assert client.result.tx.master != client.result.rx.master
    assert len(client.result.tx.master) == 30
    assert client.result.peer_fingerprint == theirs.fingerprint()
    # The exported keys make working SRTP contexts in both directions.
    packet = SrtpProtector(client.result.tx).protect(RTP)
    assert SrtpUnprotector(server.result.rx).unprotect(packet) == RTP
    assert client.get_timer(0.0) is None


def test_server_order_of_preference_decides(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    client = endpoint("client", ours, theirs, profiles=PROFILES)
    server = endpoint("server", theirs, ours, profiles=("AEAD_AES_128_GCM", PROFILES[0]))
    exchange(client, server)
    assert isinstance(client.result, DtlsDone)
    assert isinstance(server.result, DtlsDone)
    assert client.result.suite == "AEAD_AES_128_GCM"
    assert len(client.result.tx.master) == 28  # 16-byte key, 12-byte salt (RFC 7714)


def test_wrong_fingerprint_fails_both_sides(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    wrong = ":".join(["AB"] * 32)
    client = endpoint("client", ours, theirs, fingerprint=wrong)
    server = endpoint("server", theirs, ours)
    exchange(client, server)
    assert isinstance(client.result, DtlsFailure)
    assert "fingerprint" in client.result.reason
    assert not isinstance(server.result, DtlsDone)  # the alert stopped it (or it waits)


def test_server_refuses_a_client_certificate_it_was_not_told_of(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    client = endpoint("client", ours, theirs)
    server = endpoint("server", theirs, DtlsIdentity())  # expects someone else
    exchange(client, server)
    assert isinstance(server.result, DtlsFailure)
    assert not isinstance(client.result, DtlsDone)


def test_null_profiles_are_never_configured(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    with pytest.raises(ValueError, match="not allowed"):
        endpoint("client", ours, theirs, profiles=("NULL_HMAC_SHA1_80",))
    with pytest.raises(ValueError):
        endpoint("client", ours, theirs, profiles=())


def raw_client(identity: DtlsIdentity, profiles: bytes | None) -> SSL.Connection:
    """A pyOpenSSL DTLS client offering SRTP profiles of its own choice (or none)."""
    from cryptography import x509

    context = SSL.Context(SSL.DTLS_METHOD)
    context.use_certificate(x509.load_der_x509_certificate(identity.certificate_der))
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    context.use_privatekey(key)  # type: ignore[arg-type]
    if profiles is not None:
        context.set_tlsext_use_srtp(profiles)
    context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    conn = SSL.Connection(context, None)
    conn.set_connect_state()
    return conn


@pytest.mark.parametrize("offer", [b"SRTP_ARIA_128_CTR_HMAC_SHA1_80", None])
def test_a_peer_offering_no_profile_of_ours_gets_no_keys(
    identities: tuple[DtlsIdentity, DtlsIdentity], offer: bytes | None
) -> None:
    # OpenSSL knows no NULL profiles at all; a peer offering only profiles outside the
    # operator's list (or no use_srtp extension) must end the same way: no keys.
    ours, theirs = identities
    peer = raw_client(theirs, offer)
    server = endpoint("server", ours, theirs)
    for _ in range(6):
        with pytest.raises(SSL.Error):  # WantReadError until it ends one way or another
            peer.do_handshake()
        data = peer.bio_read(65536)
        server.receive(data, 0.0)
        for datagram in server.datagrams_to_send():
            peer.bio_write(datagram)
        if server.result is not None:
            break
    assert isinstance(server.result, DtlsFailure)
    assert "profile" in server.result.reason


def test_small_mtu_fragments_the_flights(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    client = endpoint("client", ours, theirs, mtu=300)
    server = endpoint("server", theirs, ours, mtu=300)
    sizes = exchange(client, server, rounds=20)
    assert isinstance(client.result, DtlsDone)
    assert isinstance(server.result, DtlsDone)
    assert client.result.tx == server.result.rx
    assert max(sizes) <= 300
    # The certificate flight alone is larger than 300 bytes: it was split.
    assert len(sizes) > 6


def wait_for_timer(ep: DtlsEndpoint) -> list[bytes]:
    """Handle the endpoint's timer when it falls due (OpenSSL's clock is the real one)."""
    give_up = time.monotonic() + 10.0
    while time.monotonic() < give_up:
        due = ep.get_timer(time.monotonic())
        assert due is not None
        time.sleep(max(0.0, due - time.monotonic()))  # the retransmission timer itself
        ep.handle_timer(time.monotonic())
        out = ep.datagrams_to_send()
        if out:
            return out
    raise AssertionError("no retransmission")


def test_a_lost_flight_is_retransmitted(identities: tuple[DtlsIdentity, DtlsIdentity]) -> None:
    ours, theirs = identities
    start = time.monotonic()
    client = endpoint("client", ours, theirs, now=start)
    server = endpoint("server", theirs, ours, now=start)
    lost = client.datagrams_to_send()  # the ClientHello never arrives
    assert lost
    again = wait_for_timer(client)
    assert again[0][0] == 22  # a handshake record again
    for datagram in again:
        server.receive(datagram, time.monotonic())
    exchange(client, server, now=time.monotonic())
    assert isinstance(client.result, DtlsDone)
    assert isinstance(server.result, DtlsDone)


def test_the_handshake_gives_up_at_its_limit(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    server = endpoint("server", ours, theirs, now=100.0)
    assert server.get_timer(100.0) == 110.0
    server.handle_timer(110.0)
    assert isinstance(server.result, DtlsFailure)
    assert "timed out" in server.result.reason


def test_demultiplexing_by_first_byte() -> None:
    assert is_dtls(b"\x16\xfe\xfd")
    assert not is_dtls(RTP)
    assert not is_dtls(b"\x00\x01")  # STUN
    assert not is_dtls(b"")


def test_a_lost_last_flight_is_sent_again_after_the_handshake(
    identities: tuple[DtlsIdentity, DtlsIdentity],
) -> None:
    ours, theirs = identities
    start = time.monotonic()
    client = endpoint("client", ours, theirs, now=start)
    server = endpoint("server", theirs, ours, now=start)
    for datagram in client.datagrams_to_send():  # ClientHello
        server.receive(datagram, start)
    for datagram in server.datagrams_to_send():  # ServerHello ... ServerHelloDone
        client.receive(datagram, start)
    for datagram in client.datagrams_to_send():  # Certificate ... Finished
        server.receive(datagram, start)
    assert isinstance(server.result, DtlsDone)
    assert server.datagrams_to_send()  # ChangeCipherSpec, Finished: lost
    assert client.result is None
    # The client's timer sends its last flight again; the finished server answers it.
    for datagram in wait_for_timer(client):
        server.receive(datagram, time.monotonic())
    for datagram in server.datagrams_to_send():
        client.receive(datagram, time.monotonic())
    assert isinstance(client.result, DtlsDone)
    assert client.result.tx == server.result.rx
