"""Shared builders for the certificate tests (no tests here): CAs, leaves, files, a TLS server."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from gateway.certs.authority import (
    IssuedCertificate,
    KeyType,
    Usage,
    create_ca,
    issue_certificate,
    parse_names,
)
from gateway.certs.store import PrivateKey, write_certificates, write_private_key

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


def make_ca(
    name: str = "Test CA", now: dt.datetime = NOW, path_length: int | None = 0
) -> IssuedCertificate:
    return create_ca(name, now=now, path_length=path_length)


def make_intermediate(
    root: IssuedCertificate, name: str = "Test Intermediate", now: dt.datetime = NOW
) -> IssuedCertificate:
    """An intermediate CA signed by ``root`` (built by hand: the authority issues end entities)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from gateway.certs.authority import generate_key

    key = generate_key(KeyType.EC_P256)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), False
        )
        .sign(root.key, hashes.SHA256())
    )
    return IssuedCertificate(key, cert, (cert, root.certificate))


def make_leaf(
    ca: IssuedCertificate,
    names: tuple[str, ...] = ("gw.example.test", "127.0.0.1"),
    *,
    now: dt.datetime = NOW,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    usage: Usage = Usage.BOTH,
    key: PrivateKey | None = None,
) -> IssuedCertificate:
    return issue_certificate(
        ca.certificate,
        ca.key,
        parse_names(names),
        usage=usage,
        now=now,
        not_before=not_before,
        not_after=not_after,
        key=key,
    )


def write_pair(
    directory: Path,
    stem: str,
    chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
    key: PrivateKey,
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    write_certificates(cert_path, chain)
    write_private_key(key_path, key, passphrase)
    return cert_path, key_path


@contextlib.contextmanager
def tls_server(cert_path: Path, key_path: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 and an OS-picked port; handshakes and closes each client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            # A client that rejects our certificate aborts the handshake: expected here.
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def expired_leaf(ca: IssuedCertificate, now: dt.datetime = NOW) -> IssuedCertificate:
    return make_leaf(
        ca, not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1)
    )


def future_leaf(ca: IssuedCertificate, now: dt.datetime = NOW) -> IssuedCertificate:
    return make_leaf(
        ca, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=100)
    )
