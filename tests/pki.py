"""Certificates for the tests, all made by the product's own authority
(:mod:`gateway.certs.authority`), so the tests exercise the profiles operators get.

- Unit tests of certificate handling: :func:`make_ca`, :func:`make_leaf` (and the expired,
  not-yet-valid and intermediate variants) at a fixed clock :data:`NOW`, written to files
  with :func:`write_pair`; :func:`tls_server` presents such a pair on loopback.
- Interop tests: :func:`make_test_pki` writes a test CA, a server (provider) and a client
  (gateway) certificate as files for kamailio, baresip, stunnel and the gateway; a
  :class:`TestPki` then issues more leaves from the same CA with :meth:`TestPki.issue`.

The one thing the authority does not build is an intermediate CA (a site CA only signs end
entities), so :func:`make_intermediate` does that by hand, RFC 5280 §4.2.1.9/§4.2.1.3 profile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway.certs.authority import (
    IssuedCertificate,
    Usage,
    create_ca,
    generate_key,
    issue_certificate,
    parse_names,
)
from gateway.certs.store import (
    KEY_MODE,
    PrivateKey,
    atomic_write,
    certs_to_pem,
    key_to_pem,
    read_certificates,
    read_private_key,
    write_certificates,
    write_private_key,
)

#: The fixed clock of the unit tests' certificates.
NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)

# --------------------------------------------------------------------------------------------
# CAs and leaves in memory


def make_ca(
    name: str = "Test CA", now: dt.datetime = NOW, path_length: int | None = 0
) -> IssuedCertificate:
    return create_ca(name, now=now, path_length=path_length)


def make_intermediate(
    root: IssuedCertificate, name: str = "Test Intermediate", now: dt.datetime = NOW
) -> IssuedCertificate:
    """An intermediate CA signed by ``root`` (``root`` needs a path length of at least 1)."""
    key = generate_key()
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
    names: Sequence[str] = ("gw.example.test", "127.0.0.1"),
    *,
    now: dt.datetime = NOW,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    usage: Usage = Usage.BOTH,
    key: PrivateKey | None = None,
    days: int = 397,
    common_name: str | None = None,
) -> IssuedCertificate:
    """An end-entity certificate for ``names`` (DNS names and IP addresses) from ``ca``."""
    return issue_certificate(
        ca.certificate,
        ca.key,
        parse_names(names),
        usage=usage,
        now=now,
        not_before=not_before,
        not_after=not_after,
        key=key,
        days=days,
        common_name=common_name,
    )


def expired_leaf(ca: IssuedCertificate, now: dt.datetime = NOW) -> IssuedCertificate:
    return make_leaf(
        ca, not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1)
    )


def future_leaf(ca: IssuedCertificate, now: dt.datetime = NOW) -> IssuedCertificate:
    return make_leaf(
        ca, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=100)
    )


# --------------------------------------------------------------------------------------------
# files


def write_pair(
    directory: Path,
    stem: str,
    chain: Sequence[x509.Certificate],
    key: PrivateKey,
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """``stem.pem`` (the chain, leaf first) and ``stem.key`` (mode 0600) in ``directory``."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    write_certificates(cert_path, tuple(chain))
    write_private_key(key_path, key, passphrase)
    return cert_path, key_path


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key as PEM files; ``combined`` holds cert then key (baresip)."""

    cert: Path
    key: Path
    combined: Path


@dataclass(frozen=True)
class TestPki:
    """Paths of a private test CA and the certificates it issued (keys are mode 0600)."""

    __test__ = False  # not a pytest test class

    dir: Path
    ca_cert: Path
    ca_key: Path
    server: CertFiles
    client: CertFiles

    def ca(self) -> IssuedCertificate:
        """The CA certificate and key, read back from the files."""
        cert = read_certificates(self.ca_cert)[0]
        return IssuedCertificate(read_private_key(self.ca_key), cert, (cert,))

    def issue(
        self,
        names: Sequence[str],
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """One more leaf (server and client use) from this CA, valid from now unless told."""
        return make_leaf(
            self.ca(),
            names,
            now=dt.datetime.now(dt.UTC),
            not_before=not_before,
            not_after=not_after,
        )


def _write_cert_files(out: Path, stem: str, issued: IssuedCertificate) -> CertFiles:
    files = CertFiles(out / f"{stem}.crt", out / f"{stem}.key", out / f"{stem}.pem")
    # The leaf alone: peers are given the CA separately, as ca.crt.
    write_certificates(files.cert, [issued.certificate])
    write_private_key(files.key, issued.key)
    atomic_write(
        files.combined, certs_to_pem([issued.certificate]) + key_to_pem(issued.key), KEY_MODE
    )
    return files


def make_test_pki(
    dir: str | Path,
    *,
    server_dns: Sequence[str] = ("localhost", "provider.test"),
    server_ips: Sequence[str] = ("127.0.0.1",),
    client_dns: Sequence[str] = ("gateway.test",),
    client_ips: Sequence[str] = ("127.0.0.1",),
    days: int = 2,
) -> TestPki:
    """Create a CA (ca.crt/ca.key), a server and a client certificate in ``dir``.

    The server certificate (serverAuth) has SANs ``server_dns`` + ``server_ips`` (IP:127.0.0.1
    by default) so Python ``ssl``, kamailio and stunnel ``checkIP`` verify it on loopback; the
    client certificate has both serverAuth and clientAuth. Keys are EC P-256 in PKCS#8 PEM.
    """
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = create_ca("sip-media-gateway test CA", days=days, now=now)
    ca_cert_path, ca_key_path = out / "ca.crt", out / "ca.key"
    write_certificates(ca_cert_path, [ca.certificate])
    write_private_key(ca_key_path, ca.key)
    server = make_leaf(
        ca,
        [*server_dns, *server_ips],
        now=now,
        usage=Usage.SERVER,
        days=days,
        common_name=server_dns[0] if server_dns else "server",
    )
    client = make_leaf(
        ca,
        [*client_dns, *client_ips],
        now=now,
        usage=Usage.BOTH,
        days=days,
        common_name=client_dns[0] if client_dns else "client",
    )
    return TestPki(
        out,
        ca_cert_path,
        ca_key_path,
        _write_cert_files(out, "server", server),
        _write_cert_files(out, "client", client),
    )


# --------------------------------------------------------------------------------------------
# a TLS server presenting a certificate


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
