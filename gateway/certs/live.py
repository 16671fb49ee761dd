"""Talking to a live TLS peer: read its chain and pin, check it the way the gateway would.

The only module here that opens sockets; everything it learns is judged by the pure code in
``inspect`` and ``material``. Two handshakes are made on purpose:

- :func:`fetch_peer_chain` uses pyOpenSSL with verification off, because the ``ssl`` module
  (before 3.13) shows only the leaf and nothing at all when verification fails, and the
  operator needs to see the chain exactly as sent to understand why it fails.
- :func:`verify_provider` then connects with the very context the gateway uses
  (:func:`~gateway.certs.material.build_client_context`) and applies the SPKI pins (RFC 7469
  §2.6), so its verdict is the gateway's verdict.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import time
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL

from gateway.certs.errors import CertificateError, PinMismatchError
from gateway.certs.material import Identity, build_client_context, verify_pins
from gateway.certs.settings import ProviderTrustSettings


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def fetch_peer_chain(
    host: str,
    port: int,
    server_name: str | None = None,
    *,
    identity: Identity | None = None,
    timeout: float = 10.0,
) -> list[x509.Certificate]:
    """The certificates the peer sends, in the order it sends them, unverified."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # Verification is done separately; here we want the chain even when it would fail.
    context.set_verify(SSL.VERIFY_NONE)
    if identity is not None:
        context.use_certificate_chain_file(identity.cert_path)
        context.use_privatekey(identity.key)
    name = server_name or host
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise CertificateError("", f"cannot connect to {host}:{port}: {exc}") from None
    with sock:
        conn = SSL.Connection(context, sock)
        if not _is_ip(name):
            # RFC 6066 §3: SNI carries host names only, never an address literal.
            conn.set_tlsext_host_name(name.encode("idna"))
        conn.set_connect_state()
        # A socket with a timeout is non-blocking underneath, so OpenSSL asks to be called
        # again when the socket is ready; wait for that within the overall deadline.
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CertificateError("", f"TLS handshake with {host}:{port} timed out")
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                select.select([sock], [], [], remaining)
            except SSL.WantWriteError:
                select.select([], [sock], [], remaining)
            except SSL.Error as exc:
                reason = f"TLS handshake with {host}:{port} failed: {exc}"
                raise CertificateError("", reason) from None
        chain = conn.get_peer_cert_chain() or []
        # The peer may already be gone; the chain is what we came for.
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
    return [c.to_cryptography() for c in chain]


@dataclass(frozen=True)
class ProviderCheck:
    """What ``verify-provider`` found."""

    host: str
    port: int
    server_name: str
    #: The chain as sent (may be empty if even the unverified handshake failed).
    chain: tuple[x509.Certificate, ...]
    #: True when the handshake verified and, if pins are configured, a pin matched.
    ok: bool
    #: Why it did not verify (certificate, name or pin), None when ``ok``.
    error: str | None
    #: None when no pins are configured, else whether one matched.
    pinned: bool | None


def verify_provider(
    host: str,
    port: int,
    trust: ProviderTrustSettings,
    *,
    identity: Identity | None = None,
    timeout: float = 10.0,
) -> ProviderCheck:
    """Connect as the gateway would and report the chain and the verdict."""
    name = trust.server_name or host
    chain: list[x509.Certificate] = []
    try:
        chain = fetch_peer_chain(host, port, name, identity=identity, timeout=timeout)
    except CertificateError as exc:
        return ProviderCheck(host, port, name, (), False, exc.reason, None)
    context = build_client_context(trust, identity)
    sent = tuple(chain)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name.strip("[]")) as tls,
        ):
            verify_pins(tls, trust.spki_pins)
    except ssl.SSLCertVerificationError as exc:
        return ProviderCheck(host, port, name, sent, False, exc.verify_message, None)
    except PinMismatchError as exc:
        return ProviderCheck(host, port, name, sent, False, exc.reason, False)
    except (ssl.SSLError, OSError) as exc:
        return ProviderCheck(host, port, name, sent, False, str(exc), None)
    return ProviderCheck(host, port, name, sent, True, None, True if trust.spki_pins else None)
