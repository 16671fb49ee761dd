"""Sans-IO DTLS-SRTP endpoint: one handshake that keys a stream's WAN side (RFC 5763, 5764).

The gateway keys SRTP toward some providers with DTLS-SRTP instead of SDES: a DTLS 1.2
handshake on the media port itself, whose peer certificate must hash to an ``a=fingerprint``
the signalling carried (RFC 5763 §5: the fingerprint, not a CA, authenticates the peer), and
whose exported secret (RFC 5764 §4.2, label ``EXTRACTOR-dtls_srtp``) yields both directions'
SRTP master keys and salts. After it, the stream is plain SRTP and the relay's packet path
(and the C fast path) are the same as with SDES keys.

:class:`DtlsEndpoint` runs pyOpenSSL over memory BIOs and knows nothing of sockets: feed it the
peer's datagrams (:meth:`~DtlsEndpoint.receive`) and the time (:meth:`~DtlsEndpoint.handle_timer`
at :meth:`~DtlsEndpoint.get_timer`), send what :meth:`~DtlsEndpoint.datagrams_to_send` returns,
and read :attr:`~DtlsEndpoint.result` (:class:`DtlsDone` or :class:`DtlsFailure`). The one
concession to sans-IO: OpenSSL keeps its own retransmission clock (RFC 6347 §4.2.4; 1 s
doubling), so a retransmission happens when the timer is handled at or after the moment
OpenSSL's clock says, whatever ``now`` is given; the overall handshake limit follows ``now``.

Rules (fail closed):

- Only the SRTP profiles given, offered (client) or chosen (server) in that order; NULL
  profiles never (RFC 5764 §4.1.2 allows them; the gateway treats them as plaintext). A
  handshake that ends without an agreed profile fails.
- The peer must present a certificate (the server asks for one) whose hash matches one of
  the SDP fingerprints; a mismatch aborts the handshake with an alert.
- DTLS 1.2 or later only.
- Records leave in datagrams of at most ``mtu`` bytes: OpenSSL fragments handshake
  messages to that size (RFC 6347 §4.2.3), and records are packed whole, never split.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto

from gateway.media.control import SrtpKeying
from gateway.media.dtls_identity import certificate_fingerprint
from gateway.media.suites import NULL_SUITE_NAMES, SrtpSuite

__all__ = [
    "DTLS_PROFILES",
    "DtlsDone",
    "DtlsEndpoint",
    "DtlsFailure",
    "is_dtls",
]

#: ``SrtpSuite`` name -> DTLS-SRTP protection profile name (RFC 5764 §4.1.2, RFC 7714 §14.2).
DTLS_PROFILES: dict[str, str] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80.value: "SRTP_AES128_CM_SHA1_80",
    SrtpSuite.AES_CM_128_HMAC_SHA1_32.value: "SRTP_AES128_CM_SHA1_32",
    SrtpSuite.AEAD_AES_128_GCM.value: "SRTP_AEAD_AES_128_GCM",
    SrtpSuite.AEAD_AES_256_GCM.value: "SRTP_AEAD_AES_256_GCM",
}
_SUITE_OF_PROFILE = {profile: suite for suite, profile in DTLS_PROFILES.items()}

#: RFC 5764 §4.2 exporter label.
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
#: A conservative path MTU for the handshake's datagrams (IPv6's minimum, less headers).
DEFAULT_MTU = 1200
#: How long a handshake may take from its start before the stream gives up.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_DTLS1_2_VERSION = 0xFEFD
_RECORD_HEADER = 13  # DTLS record header: type, version, epoch, sequence number, length


def is_dtls(data: bytes) -> bool:
    """RFC 7983 §7: a first byte of 20-63 is DTLS (RTP/RTCP is 128-191, STUN 0-3)."""
    return bool(data) and 20 <= data[0] <= 63


@dataclass(frozen=True, slots=True)
class DtlsDone:
    """The handshake completed and the peer's certificate matched the SDP."""

    #: The agreed ``SrtpSuite`` name.
    suite: str
    #: Keying for what this side sends (protect) and receives (unprotect).
    tx: SrtpKeying
    rx: SrtpKeying
    #: The peer certificate's sha-256 fingerprint (for the operator's view).
    peer_fingerprint: str


@dataclass(frozen=True, slots=True)
class DtlsFailure:
    """The handshake failed; the stream must not carry media."""

    reason: str


class DtlsEndpoint:
    """One side of a DTLS-SRTP association, over memory BIOs.

    ``role`` is "client" (this side sends the ClientHello: SDP ``a=setup:active``) or
    "server"; ``certificate`` is DER, ``key`` PEM (the process's
    :class:`~gateway.media.dtls_identity.DtlsIdentity`); ``fingerprints`` are the peer's
    ``(hash, value)`` pairs from its SDP; ``profiles`` ``SrtpSuite`` names in order of
    preference; ``generation`` goes into the resulting :class:`SrtpKeying`.
    """

    def __init__(
        self,
        *,
        role: str,
        certificate: bytes,
        key: bytes,
        fingerprints: tuple[tuple[str, str], ...],
        profiles: tuple[str, ...],
        now: float,
        generation: int = 0,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"DTLS role must be client or server, not {role!r}")
        names = []
        for suite in profiles:
            if suite in NULL_SUITE_NAMES or suite not in DTLS_PROFILES:
                raise ValueError(f"SRTP profile {suite!r} is not allowed for DTLS-SRTP")
            names.append(DTLS_PROFILES[suite])
        if not names:
            raise ValueError("no SRTP profile to negotiate")
        if not fingerprints:
            raise ValueError("no peer fingerprint: the peer could not be authenticated")
        self.role = role
        self._fingerprints = {(h.lower(), v.upper()) for h, v in fingerprints}
        self._generation = generation
        self._mtu = mtu
        self._deadline = now + handshake_timeout
        self._out: list[bytes] = []
        self._peer_fingerprint: str | None = None
        self._mismatch: str | None = None
        self.result: DtlsDone | DtlsFailure | None = None
        #: The peer sent close_notify after the handshake (it ends its side of the session).
        self.closed = False

        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_min_proto_version(_DTLS1_2_VERSION)
        context.set_options(SSL.OP_NO_QUERY_MTU)
        cert = x509.load_der_x509_certificate(certificate)
        private: CertificateIssuerPrivateKeyTypes = serialization.load_pem_private_key(
            key, password=None
        )  # type: ignore[assignment]
        context.use_certificate(cert)
        context.use_privatekey(private)  # type: ignore[arg-type]
        context.set_tlsext_use_srtp(":".join(names).encode())
        # The server asks for the client's certificate: both sides are authenticated by
        # fingerprint (RFC 5763 §5), and a peer without one fails.
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._conn = SSL.Connection(context, None)
        self._conn.set_ciphertext_mtu(mtu)
        if role == "client":
            self._conn.set_connect_state()
            self._step()
        else:
            self._conn.set_accept_state()

    # -- inputs --------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the peer (already checked to come from its address)."""
        if isinstance(self.result, DtlsFailure):
            return
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            return
        if self.result is None:
            if now >= self._deadline:
                self._fail("handshake timed out")
                return
            self._step()
        else:
            self._after_handshake()

    def handle_timer(self, now: float) -> None:
        """Retransmit a lost flight (OpenSSL's timer) or give up (the handshake limit)."""
        if self.result is not None:
            return
        if now >= self._deadline:
            self._fail("handshake timed out")
            return
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(_describe(exc))
            return
        self._drain()

    # -- outputs -------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for the peer, each at most ``mtu`` bytes."""
        out, self._out = self._out, []
        return out

    def get_timer(self, now: float) -> float | None:
        """When :meth:`handle_timer` must run next (None once finished)."""
        if self.result is not None:
            return None
        remaining = self._conn.DTLSv1_get_timeout()
        if remaining is None:
            return self._deadline
        return min(self._deadline, now + remaining)

    # -- internals -----------------------------------------------------------------------

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        # A self-signed certificate is the norm here: the chain is not checked, the leaf's
        # hash is (RFC 5763 §5). Only the leaf (depth 0) decides.
        if depth != 0:
            return True
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        if self._matches(der):
            self._peer_fingerprint = certificate_fingerprint(der)
            return True
        self._mismatch = "peer certificate does not match the SDP fingerprint"
        return False

    def _matches(self, der: bytes) -> bool:
        for hash_name, value in self._fingerprints:
            try:
                if certificate_fingerprint(der, hash_name) == value:
                    return True
            except ValueError:
                continue  # a hash function we do not know: another line may match
        return False

    def _step(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            self._drain()
            return
        except SSL.Error as exc:
            self._drain()  # the alert, so the peer stops too
            self._fail(self._mismatch or _describe(exc))
            return
        self._drain()
        self._finish()

    def _finish(self) -> None:
        peer = self._conn.get_peer_certificate()
        der = (
            peer.to_cryptography().public_bytes(serialization.Encoding.DER)
            if peer is not None
            else None
        )
        if der is None or not self._matches(der):  # checked again: never trust a skipped hook
            self._fail("peer certificate does not match the SDP fingerprint")
            return
        profile = self._conn.get_selected_srtp_profile().decode()
        suite_name = _SUITE_OF_PROFILE.get(profile)
        if suite_name is None:
            self._fail("no SRTP profile agreed" if not profile else f"profile {profile} refused")
            return
        suite = SrtpSuite(suite_name)
        key_len, salt_len = suite.key_length, suite.salt_length
        material = self._conn.export_keying_material(EXPORTER_LABEL, 2 * (key_len + salt_len))
        # RFC 5764 §4.2: client key, server key, client salt, server salt.
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client = SrtpKeying(suite_name, client_key + client_salt, self._generation)
        server = SrtpKeying(suite_name, server_key + server_salt, self._generation)
        tx, rx = (client, server) if self.role == "client" else (server, client)
        self.result = DtlsDone(suite_name, tx, rx, certificate_fingerprint(der))

    def _after_handshake(self) -> None:
        # A retransmitted final flight from the peer (ours was lost) is answered by OpenSSL
        # while reading; application data is not part of DTLS-SRTP and is discarded.
        try:
            self._conn.recv(2048)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.closed = True
        except SSL.Error:
            pass  # a damaged record after the handshake changes nothing: the keys stand
        self._drain()

    def _drain(self) -> None:
        """Read what OpenSSL wrote and pack whole records into datagrams of at most mtu."""
        pending = b""
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            pending += chunk
        datagram = b""
        while len(pending) >= _RECORD_HEADER:
            size = _RECORD_HEADER + int.from_bytes(pending[11:13], "big")
            record, pending = pending[:size], pending[size:]
            if datagram and len(datagram) + len(record) > self._mtu:
                self._out.append(datagram)
                datagram = b""
            datagram += record
        if datagram:
            self._out.append(datagram)

    def _fail(self, reason: str) -> None:
        self.result = DtlsFailure(reason)


def _describe(exc: SSL.Error) -> str:
    """A one-line reason from an OpenSSL error stack."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        last = args[-1]
        if isinstance(last, tuple) and last:
            return f"DTLS handshake failed: {last[-1]}"
    return f"DTLS handshake failed: {exc}"
