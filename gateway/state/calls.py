"""A confirmed call as a record another gateway can take over (sans-IO; issue 14).

The active gateway of a pair exports every confirmed call (``B2bua.export_call``) as a
:class:`CallRecord`: both dialogs as RFC 3261 §12 defines their state (Call-ID, local and
remote name-addr with tags, Contact, remote target, route set, both CSeq numbers), what the
media negotiation agreed per m-line (ports, the phone's and the provider's media addresses,
the SDES suites and keys of RFC 4568 or the DTLS-SRTP association of RFC 5763, directions,
the gateway's o= session id and version per leg, RFC 3264 §8) and, per relayed stream, the
spec the media workers run with and, when the glue adds one, the worker's checkpoint (latches,
SRTP rollover counters and sequence numbers, RFC 3711 §3.3.1); a DTLS-keyed stream's spec then
carries the keys its handshake exported (RFC 5764 §4.2) in ``wan_tx``/``wan_rx``. The standby
restores it (``B2bua.restore_calls``, ``MediaController.restore_streams``) and answers the
call's in-dialog requests from then on.

Times are Unix time (the core's ``now`` and the Unix ``wall`` at that instant are inputs, as
in :mod:`gateway.state.model`). In memory the keys are in clear; :func:`encode_call` takes
every SRTP master key out of the record and seals them together with AES-256-GCM
(:mod:`gateway.state.seal`), the associated data naming the call's key and the site, so the
sealed keys open for that call of that site only. Without a state key (``GATEWAY_STATE_KEY``)
a call that carries SRTP keys is not encoded at all: an HA pair needs the key on both
gateways. :func:`decode_call` returns None, never raises, for bytes that do not decode or
keys that do not open.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from gateway.media.control import SrtpKeying, StreamCheckpoint, StreamSpec
from gateway.policy.numbering import DialledNumber
from gateway.state.model import Sealing

VERSION = 1


class LegRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One dialog of the call as the gateway holds it (``gateway.sip.dialog.Leg``)."""

    #: "lan" or "wan", the transport ("udp", "tcp", "tls") and the peer's address.
    side: str
    transport: str
    address: tuple[str, int]
    call_id: str
    #: The gateway's and the peer's name-addr, tags included (§12.2.1.1: From and To).
    local: str
    remote: str
    #: The gateway's Contact on this leg, and the peer's (the remote target, §12.1).
    contact: str
    remote_target: str
    route_set: tuple[str, ...] = ()
    local_cseq: int = 0
    remote_cseq: int | None = None
    via_host: str = "127.0.0.1"
    via_port: int = 5060


class CryptoRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One SDES crypto attribute (RFC 4568 §9.1) of an agreed stream; ``master`` is sealed
    when stored."""

    tag: int
    suite: str
    master: bytes
    lifetime: int | None = None
    lifetime_as_power: bool = False
    session_params: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print key material
        return f"CryptoRecord(tag={self.tag}, suite={self.suite!r})"


class PhoneMedia(msgspec.Struct, frozen=True, kw_only=True):
    """What the phone signalled for one m-line."""

    addr: tuple[str, int] | None
    rtcp_addr: tuple[str, int] | None
    direction: str
    proto: str


class PeerDtlsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider's SDP said about DTLS-SRTP for one m-line (RFC 5763 §5, RFC 8842):
    its fingerprints, the role left to the gateway, our a=setup answer, its a=tls-id."""

    fingerprints: tuple[tuple[str, str], ...]
    role: str
    answer_setup: str | None = None
    tls_id: str | None = None


class AssociationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One m-line's DTLS association as the signalling holds it (``gateway.sdp.dtls``): a
    re-offer after the takeover keeps it (same tls-id, role, generation) unless something
    RFC 5763 §6.6 names changed. No key here: those are the streams' (sealed)."""

    tls_id: str
    generation: int = 0
    role: str | None = None
    ours: tuple[str, str] | None = None
    pinned: tuple[str, str] | None = None
    suite: str | None = None
    addr: tuple[str, int] | None = None
    agreed: bool = False


class ProviderMedia(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider signalled for one m-line, its key (``rx``) included."""

    addr: tuple[str, int] | None
    rtcp_addr: tuple[str, int] | None
    rtcp_mux: bool
    rx: CryptoRecord | None
    plaintext: bool
    direction: str
    proto: str
    #: DTLS-SRTP keying instead of ``rx`` (the keys are the streams', from the handshake).
    dtls: PeerDtlsRecord | None = None


class AgreedMedia(msgspec.Struct, frozen=True, kw_only=True):
    """One m-line once offer and answer were both known; ``tx`` is the gateway's key."""

    phone: PhoneMedia
    provider: ProviderMedia
    tx: CryptoRecord | None
    rtcp_mux: bool


class SlotRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One m-line of the call: its ports (kept for the whole call), what was agreed, and the
    key generations the workers know."""

    lan_port: int | None = None
    wan_port: int | None = None
    agreed: AgreedMedia | None = None
    tx_generation: int = 0
    rx_generation: int = 0
    dtls: AssociationRecord | None = None


class OriginRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's o= toward one leg (RFC 8866 §5.2): a re-offer after the takeover goes
    on with this session id and a higher version (RFC 3264 §8)."""

    sess_id: str
    version: int


class MediaRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The call's ``CallMedia`` in its stable state (no offer outstanding)."""

    caller_offered: bool
    lan_origin: OriginRecord
    wan_origin: OriginRecord
    slots: tuple[SlotRecord, ...] = ()


class ReplicatedStream(msgspec.Struct, frozen=True):
    """One relayed stream: the spec the workers run it with, and the worker's latest
    checkpoint (None: not known; the glue adds it from ``MediaController.stream_records``)."""

    index: int
    spec: StreamSpec
    checkpoint: StreamCheckpoint | None = None


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A confirmed INVITE call through the gateway, complete enough to carry it on."""

    version: int = VERSION
    #: The pair's key (the media workers' call id as well).
    key: str
    caller_side: str
    caller: LegRecord
    callee: LegRecord
    #: Unix times of the INVITE and of the 2xx.
    started: float
    answered: float
    #: The callee dialog's to-tag chosen by the 2xx.
    confirmed_tag: str | None = None
    #: The caller's INVITE: its CSeq and top Via branch (§8.2.2.2 look-ups).
    origin_cseq: int = 0
    origin_from_tag: str | None = None
    branch: str | None = None
    caller_supports_100rel: bool = False
    #: The CSeq of our INVITE on the callee leg (a PRACK's RAck names it).
    outgoing_cseq: int = 0
    #: A call out: its trunk, the phone's user and what it dialled (caps accounting).
    trunk: str | None = None
    number: DialledNumber | None = None
    caller_user: str | None = None
    dialled: str | None = None
    media: MediaRecord | None = None
    streams: tuple[ReplicatedStream, ...] = ()


class StoredCall(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`CallRecord` as stored: every master key blanked in ``call`` and sealed, in
    the order :func:`_masters` walks them, in ``sealed_keys`` (None: the call has no key)."""

    version: int
    site: str
    call: CallRecord
    sealed_keys: str | None = None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(StoredCall)
_KEYS = msgspec.msgpack.Decoder(list[bytes])


def _kind(site: str, key: str) -> str:
    # Call key and site in the associated data: sealed keys pasted into another call's
    # record (or another site's) do not open there.
    return f"call:{site}:{key}"


def encode_call(record: CallRecord, sealer: Sealing, site: str) -> bytes | None:
    """The bytes to replicate: keys sealed; None when the call has keys and the sealer no
    key (SRTP keys are never stored in clear)."""
    record = _with_stream_structs(record)
    masters: list[bytes] = []

    def take(master: bytes) -> bytes:
        masters.append(master)
        return b""

    blank = _replace_masters(record, take)
    sealed = None
    if masters:
        sealed = sealer.seal(_kind(site, record.key), msgspec.msgpack.encode(masters))
        if sealed is None:
            return None
    return _ENCODER.encode(StoredCall(version=VERSION, site=site, call=blank, sealed_keys=sealed))


def decode_call(data: bytes, sealer: Sealing) -> CallRecord | None:
    """The record of :func:`encode_call`'s bytes; None when they do not decode, the version
    is unknown, or the keys do not open (no key, a wrong key or site, altered bytes)."""
    try:
        stored = _DECODER.decode(data)
    except (msgspec.DecodeError, ValueError):
        return None
    call = stored.call
    if stored.version != VERSION or call.version != VERSION:
        return None
    wanted = _count_masters(call)
    if stored.sealed_keys is None:
        return call if wanted == 0 else None
    plain = sealer.open(_kind(stored.site, call.key), stored.sealed_keys)
    if plain is None:
        return None
    try:
        masters = _KEYS.decode(plain)
    except msgspec.DecodeError:
        return None
    if len(masters) != wanted:
        return None
    queue = iter(masters)
    try:
        return _replace_masters(call, lambda _blank: next(queue))
    except (StopIteration, ValueError, TypeError):
        return None


def _with_stream_structs(record: CallRecord) -> CallRecord:
    """``streams`` as ReplicatedStream, also when given as ``MediaController.stream_records``
    tuples (index, spec, checkpoint)."""
    if all(isinstance(s, ReplicatedStream) for s in record.streams):
        return record
    streams = tuple(
        s if isinstance(s, ReplicatedStream) else ReplicatedStream(*s) for s in record.streams
    )
    return msgspec.structs.replace(record, streams=streams)


def _count_masters(record: CallRecord) -> int:
    count = [0]

    def tally(master: bytes) -> bytes:
        count[0] += 1
        return master

    _replace_masters(record, tally)
    return count[0]


def _replace_masters(record: CallRecord, change: Callable[[bytes], bytes]) -> CallRecord:
    """``record`` with every master key replaced by ``change(master)``, walked in a fixed
    order: the media slots (tx, then the provider's rx), then the streams (tx, rx)."""
    replace = msgspec.structs.replace

    def crypto(c: CryptoRecord | None) -> CryptoRecord | None:
        return None if c is None else replace(c, master=change(c.master))

    def keying(k: SrtpKeying | None) -> SrtpKeying | None:
        return None if k is None else replace(k, master=change(k.master))

    media = record.media
    if media is not None:
        slots = []
        for slot in media.slots:
            agreed = slot.agreed
            if agreed is not None:
                tx = crypto(agreed.tx)
                provider = replace(agreed.provider, rx=crypto(agreed.provider.rx))
                agreed = replace(agreed, tx=tx, provider=provider)
            slots.append(replace(slot, agreed=agreed))
        media = replace(media, slots=tuple(slots))
    streams = []
    for stream in record.streams:
        spec = stream.spec
        tx_keying = keying(spec.wan_tx)
        spec = replace(spec, wan_tx=tx_keying, wan_rx=keying(spec.wan_rx))
        # DTLS without rtcp-mux: the RTCP port's association's keys (sealed alike).
        rtcp_tx = keying(spec.wan_rtcp_tx)
        spec = replace(spec, wan_rtcp_tx=rtcp_tx, wan_rtcp_rx=keying(spec.wan_rtcp_rx))
        streams.append(replace(stream, spec=spec))
    return replace(record, media=media, streams=tuple(streams))
