"""Control messages between the signalling process and media workers.

The signalling process decides, per call, which ports relay what between whom and with which
keys; media workers do only the packet path. They talk over a local stream (a socketpair or a
Unix socket) with msgspec-encoded, length-prefixed messages, the way rtpengine is driven by its
control protocol. Keys travel only over this local channel and are never logged: their Structs
hide them from ``repr``.
"""

from __future__ import annotations

import msgspec


class SrtpKeying(msgspec.Struct, frozen=True, tag=False):
    """One direction's SRTP keying: the suite's SDP name and master key || master salt."""

    suite: str
    master: bytes
    #: Raised by a re-key (RFC 4568 §7.1.4): a new value means a new crypto context.
    generation: int = 0

    def __repr__(self) -> str:  # never print key material
        return f"SrtpKeying(suite={self.suite!r}, generation={self.generation})"


class DtlsKeying(msgspec.Struct, frozen=True):
    """DTLS-SRTP keying of the WAN side (RFC 5763, RFC 5764): the handshake runs on the
    stream's WAN port and its exported keys replace ``wan_tx``/``wan_rx``.

    Until the handshake completed and the peer's certificate matched one of
    ``fingerprints``, nothing is sent toward the provider (fail closed).
    """

    #: "client" (we sent a=setup:active: we send the ClientHello) or "server" (passive).
    role: str
    #: The peer's a=fingerprint values: (hash function as in SDP, e.g. "sha-256", the
    #: colon-separated upper-case hex digest).
    fingerprints: tuple[tuple[str, str], ...]
    #: Acceptable SRTP suites (``SrtpSuite`` names) in the operator's order of preference.
    profiles: tuple[str, ...]
    #: Raised when the association must start afresh (RFC 5763 §6.6: a new fingerprint or
    #: transport in a re-offer); the same value keeps the running association.
    generation: int = 0
    #: Our certificate's fingerprint as the SDP of this association named it ((hash, digest);
    #: None: the worker's current certificate). The handshake presents that certificate even
    #: when a newer one was handed to the worker meanwhile; one no longer held fails closed.
    local_fingerprint: tuple[str, str] | None = None


class StreamSpec(msgspec.Struct, frozen=True):
    """What one relayed media stream (one m-line) does right now.

    The LAN side carries plain RTP/RTCP with the phone; the WAN side carries SRTP/SRTCP with
    the provider (plain only under the per-trunk downgrade, ``wan_plaintext``).
    """

    #: Gateway LAN port for RTP (RTCP on lan_port + 1; the LAN side never muxes).
    lan_port: int
    #: Gateway WAN port for RTP (RTCP on wan_port + 1 unless ``wan_rtcp_mux``).
    wan_port: int
    #: The phone's signalled media address; None until its SDP is known. Packets from any
    #: other IP are dropped (no RTP bleed); the port is latched from the first good packet.
    phone_addr: tuple[str, int] | None = None
    #: The provider's signalled media address; None until its SDP is known.
    provider_addr: tuple[str, int] | None = None
    #: The provider's RTCP address when not muxed (its port + 1 or its a=rtcp).
    provider_rtcp_addr: tuple[str, int] | None = None
    #: The phone's RTCP address (its port + 1 or its a=rtcp).
    phone_rtcp_addr: tuple[str, int] | None = None
    wan_rtcp_mux: bool = False
    #: Keying for packets the gateway sends to the provider (protect).
    wan_tx: SrtpKeying | None = None
    #: Keying for packets the gateway receives from the provider (unprotect).
    wan_rx: SrtpKeying | None = None
    #: Only under an operator's explicit downgrade: WAN side plain RTP.
    wan_plaintext: bool = False
    #: "sendrecv", "sendonly", "recvonly" or "inactive" as seen from the phone.
    direction: str = "sendrecv"
    #: DTLS-SRTP keying toward the provider (then ``wan_tx``/``wan_rx`` are None).
    wan_dtls: DtlsKeying | None = None
    #: SRTCP keying on the WAN RTCP port when DTLS-keyed without rtcp-mux: the RTCP port's
    #: own association gives it (RFC 5764 §4.1); ``wan_tx``/``wan_rx`` then key SRTP only.
    wan_rtcp_tx: SrtpKeying | None = None
    wan_rtcp_rx: SrtpKeying | None = None


class SsrcIndex(msgspec.Struct, frozen=True, array_like=True):
    """Where one SSRC's SRTP index stood (RFC 3711 §3.3.1): its rollover counter and the
    highest sequence number seen with it (-1 when not known: only the ROC is restored)."""

    ssrc: int
    roc: int
    seq: int = -1


class StreamCheckpoint(msgspec.Struct, frozen=True, tag=True):
    """What only a worker knows of a stream, reported every checkpoint interval while it
    changes, so that a new worker can carry the stream on after a crash.

    Holds no key: the keys stay in the :class:`StreamSpec` the controller kept (a later
    replication of both to a standby seals the spec's keys, never this record). ``updates``
    counts the UpdateStream messages the worker had applied, so a checkpoint taken under keys
    an update has since replaced is recognised and ignored.
    """

    call_id: str
    stream: int
    updates: int = 0
    #: Latched source addresses (None: not latched, the signalled one applies).
    phone_rtp: tuple[str, int] | None = None
    phone_rtcp: tuple[str, int] | None = None
    provider_rtp: tuple[str, int] | None = None
    provider_rtcp: tuple[str, int] | None = None
    #: Per kept SSRC, the outbound (protect) context's index: the ROC of the last packet
    #: protected and the phone's highest sequence number.
    tx: tuple[SsrcIndex, ...] = ()
    #: Per kept SSRC, the inbound (unprotect) context's highest accepted index.
    rx: tuple[SsrcIndex, ...] = ()
    #: Per kept phone SSRC, (SSRC, highest SRTCP index used toward the provider), RFC 3711
    #: §3.4: the sender's own counter, under the outbound context's key (``srtcp``) and under
    #: the RTCP port's own association's (``rtcp_srtcp``, DTLS without rtcp-mux). A restored
    #: context starts each past it plus a margin and sends no SRTCP for an SSRC not named.
    srtcp: tuple[tuple[int, int], ...] = ()
    rtcp_srtcp: tuple[tuple[int, int], ...] = ()


class OpenStream(msgspec.Struct, frozen=True, tag=True):
    """Bind the stream's sockets (LAN and WAN) and start relaying per ``spec``; with
    ``restore``, carry on a stream a dead worker held (latches, kept SSRCs, SRTP indexes)."""

    call_id: str
    stream: int
    spec: StreamSpec
    restore: StreamCheckpoint | None = None


class UpdateStream(msgspec.Struct, frozen=True, tag=True):
    """Replace a stream's spec: new peer addresses, new keys (a re-key), hold/resume."""

    call_id: str
    stream: int
    spec: StreamSpec


class CloseCall(msgspec.Struct, frozen=True, tag=True):
    """Close every stream of a call, release its ports and forget its keys."""

    call_id: str


class QueryStats(msgspec.Struct, frozen=True, tag=True):
    """Ask for the counters of every stream (answered with WorkerStats)."""

    request_id: int


class Shutdown(msgspec.Struct, frozen=True, tag=True):
    """Stop the worker after closing all streams."""


class SetDtlsIdentity(msgspec.Struct, frozen=True, tag=True):
    """The gateway's DTLS certificate (DER) and key (PKCS#8 PEM) for DTLS-SRTP streams: sent
    when a worker starts and when the certificate is replaced (see
    :mod:`gateway.media.dtls_identity`). The last one sent is current; the worker keeps the one
    before it too, for associations whose SDP named it (``DtlsKeying.local_fingerprint``)."""

    certificate: bytes
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return "SetDtlsIdentity(...)"


Command = OpenStream | UpdateStream | CloseCall | QueryStats | Shutdown | SetDtlsIdentity


class StreamCounters(msgspec.Struct):
    """Per-stream counters, by direction and drop reason."""

    lan_in_packets: int = 0
    lan_in_bytes: int = 0
    wan_out_packets: int = 0
    wan_in_packets: int = 0
    wan_in_bytes: int = 0
    lan_out_packets: int = 0
    drop_wrong_source: int = 0
    drop_auth: int = 0
    drop_replay: int = 0
    drop_plain_rtcp: int = 0
    drop_no_peer: int = 0
    drop_malformed: int = 0
    #: RTP from an SSRC beyond the few a direction keeps at a time (an SSRC flood, a source
    #: given up earlier under the same keys): see gateway/media/relay.py ``SsrcGate``.
    drop_ssrc: int = 0
    #: DTLS records (RFC 7983 first byte 20-63) from an address other than the provider's
    #: signalled one, ignored (a stranger's ClientHello never reaches the handshake).
    dtls_wrong_source: int = 0
    #: DTLS-SRTP handshakes completed on the stream (its WAN keys came from the last one).
    dtls_handshakes: int = 0
    #: RTCP not carried: the WAN side is DTLS-keyed without rtcp-mux, and the RTCP port's
    #: own association (RFC 5764 §4.1) is not run, so nothing keys it (either direction).
    drop_rtcp_unkeyed: int = 0
    last_lan_packet: float = 0.0
    last_wan_packet: float = 0.0
    #: Reception statistics measured by the gateway on the accepted RTP it relays (RFC 3550
    #: A.3 and A.8): loss from sequence numbers and interarrival jitter, from the phone
    #: (``lan_in``) and from the provider after SRTP authentication (``wan_in``). Refreshed
    #: when counters are queried (:meth:`~gateway.media.relay.RelayStream.snapshot`).
    lost_lan_in: int = 0
    lost_wan_in: int = 0
    jitter_ms_lan_in: float = 0.0
    jitter_ms_wan_in: float = 0.0
    #: What the ends say in their RTCP receiver reports (RFC 3550 §6.4.1) about the stream
    #: they receive: the phone about provider→phone, the provider about phone→provider.
    #: Cumulative packets lost and interarrival jitter; -1 / 0.0 until a report arrives.
    phone_reported_lost: int = -1
    phone_reported_jitter_ms: float = 0.0
    provider_reported_lost: int = -1
    provider_reported_jitter_ms: float = 0.0


class StreamOpened(msgspec.Struct, frozen=True, tag=True):
    """Reply to OpenStream: ``error`` is None when both sides are bound."""

    call_id: str
    stream: int
    error: str | None = None


class StreamIdle(msgspec.Struct, frozen=True, tag=True):
    """No media in either direction for longer than the worker's inactivity timeout."""

    call_id: str
    idle_seconds: float


class DtlsFailed(msgspec.Struct, frozen=True, tag=True):
    """A stream's DTLS-SRTP handshake failed or timed out: the call ends with ``reason``."""

    call_id: str
    stream: int
    reason: str


class DtlsKeyed(msgspec.Struct, frozen=True, tag=True):
    """A stream's DTLS-SRTP handshake (association ``generation``) gave these WAN keys: the
    controller keeps them with the stream's spec, so a successor of a crashed worker carries
    the stream on without a new handshake (the provider would not start one)."""

    call_id: str
    stream: int
    generation: int
    tx: SrtpKeying
    rx: SrtpKeying
    #: Without rtcp-mux, the RTCP port's association's keys once it completed (RFC 5764
    #: §4.1); the report is sent again then, with both.
    rtcp_tx: SrtpKeying | None = None
    rtcp_rx: SrtpKeying | None = None

    def __repr__(self) -> str:  # never print key material
        return f"DtlsKeyed({self.call_id!r}, {self.stream}, generation={self.generation})"


class CallClosed(msgspec.Struct, frozen=True, tag=True):
    """Reply to CloseCall: the call's last counters, read as its sockets were closed, so a
    call detail record needs no separate (and racing) stats query."""

    call_id: str
    streams: dict[str, StreamCounters]


class WorkerStats(msgspec.Struct, frozen=True, tag=True):
    """Reply to QueryStats."""

    request_id: int
    streams: dict[str, StreamCounters]
    cpu_seconds: float = 0.0


class Checkpoints(msgspec.Struct, frozen=True, tag=True):
    """Streams whose checkpoint changed since the worker last reported it."""

    checkpoints: list[StreamCheckpoint]


Report = StreamOpened | StreamIdle | WorkerStats | CallClosed | Checkpoints | DtlsFailed | DtlsKeyed

COMMAND_DECODER = msgspec.msgpack.Decoder(Command)
REPORT_DECODER = msgspec.msgpack.Decoder(Report)
ENCODER = msgspec.msgpack.Encoder()
