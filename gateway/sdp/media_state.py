"""A call's negotiated media as a record, and back (sans-IO; RFC 3264 §8, RFC 4568 §7.1.4).

For a takeover by another gateway (``gateway.state.calls``): :func:`export_media` reads what
a :class:`~gateway.sdp.negotiation.CallMedia` agreed per m-line (ports, both peers' media
addresses and directions, our key and the provider's, key generations) and the gateway's o=
per leg; :func:`restore_media` builds a ``CallMedia`` in the same stable state on the new
gateway, with the same ports claimed from its allocators. What follows then behaves as on the
old gateway: a re-offer keeps our key (no re-key, so the provider's SRTP context and ROC go
on) and carries an o= version above the last one the peer saw.

Only the stable state is kept: an offer outstanding at export time belongs to a transaction
that does not survive the takeover (its sender retransmits or gives up).
"""

from __future__ import annotations

from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.sdp import dtls
from gateway.sdp.crypto import CryptoAttribute
from gateway.sdp.errors import SdpError
from gateway.sdp.negotiation import (
    CallMedia,
    MediaPolicy,
    _Agreed,
    _PhoneSide,
    _ProviderSide,
    _State,
)
from gateway.sdp.rewrite import OriginKeeper
from gateway.state.calls import (
    AgreedMedia,
    AssociationRecord,
    CryptoRecord,
    MediaRecord,
    OriginRecord,
    PeerDtlsRecord,
    PhoneMedia,
    ProviderMedia,
    SlotRecord,
)

#: What a restored OriginKeeper remembers as the last body's shape: no digest equals it, so
#: the first body stamped after the takeover always gets a higher o= version (RFC 3264 §8).
_NO_SHAPE = b"restored"


class MediaConflict(ValueError):
    """A record's port is not free here (another call holds it, or it is outside the range)."""


def export_media(call: CallMedia, caller_offered: bool) -> MediaRecord:
    """What ``call`` agreed, per m-line, and the gateway's o= toward each leg."""
    slots = []
    for index, slot in enumerate(call._slots):
        agreed = call._agreed[index] if index < len(call._agreed) else None
        slots.append(
            SlotRecord(
                lan_port=slot.lan_port,
                wan_port=slot.wan_port,
                agreed=None if agreed is None else _agreed_record(agreed),
                tx_generation=call._tx_generation[index],
                rx_generation=call._rx_generation[index],
                dtls=_association_record(slot.dtls) if slot.dtls._key is not None else None,
            )
        )
    return MediaRecord(
        caller_offered=caller_offered,
        lan_origin=OriginRecord(sess_id=call._lan_origin.sess_id, version=call._lan_origin.version),
        wan_origin=OriginRecord(sess_id=call._wan_origin.sess_id, version=call._wan_origin.version),
        slots=tuple(slots),
    )


def restore_media(
    record: MediaRecord,
    call_id: str,
    policy: MediaPolicy,
    lan_ports: PortAllocator,
    wan_ports: PortAllocator,
) -> CallMedia:
    """A ``CallMedia`` in the recorded stable state, its ports claimed from the allocators;
    MediaConflict (nothing claimed) when a port is taken or a key unusable."""
    agreed: list[_Agreed | None] = []
    try:
        for slot_record in record.slots:
            entry = slot_record.agreed
            agreed.append(None if entry is None else _agreed(entry))
    except (ValueError, KeyError, SdpError) as exc:
        raise MediaConflict(f"call {call_id}: unusable media record ({exc})") from None
    claimed: list[tuple[PortAllocator, int]] = []
    try:
        for slot_record in record.slots:
            for allocator, port in (
                (lan_ports, slot_record.lan_port),
                (wan_ports, slot_record.wan_port),
            ):
                if port is not None:
                    allocator.claim(port)
                    claimed.append((allocator, port))
    except ValueError as exc:
        for allocator, port in claimed:
            allocator.release(port)
        raise MediaConflict(f"call {call_id}: {exc}") from None
    call = CallMedia(call_id, policy, lan_ports, wan_ports)
    for index, slot_record in enumerate(record.slots):
        slot = call._slot(index)
        slot.lan_port = slot_record.lan_port
        slot.wan_port = slot_record.wan_port
        entry_agreed = agreed[index]
        if entry_agreed is not None and entry_agreed.tx is not None:
            # Re-offers reuse this key for its suite (RFC 4568 §7.1.4): no re-key.
            slot.offered_masters = {entry_agreed.tx.suite: entry_agreed.tx.master}
        if slot_record.dtls is not None:
            peer = entry_agreed.provider.dtls if entry_agreed is not None else None
            slot.dtls = _association(slot_record.dtls, peer)
        call._tx_generation[index] = slot_record.tx_generation
        call._rx_generation[index] = slot_record.rx_generation
        if entry_agreed is not None:
            call._tx_applied[index] = entry_agreed.tx.master if entry_agreed.tx else None
            rx = entry_agreed.provider.rx
            call._rx_applied[index] = rx.master if rx is not None else None
    call._agreed = agreed
    call._answers = {None: list(agreed)}
    call._lan_origin = _origin(policy.lan_address, record.lan_origin)
    call._wan_origin = _origin(policy.wan_address, record.wan_origin)
    call._state = _State.STABLE if any(a is not None for a in agreed) else _State.IDLE
    return call


def _origin(address: str, record: OriginRecord) -> OriginKeeper:
    keeper = OriginKeeper(address)
    keeper.sess_id = record.sess_id
    keeper.version = record.version
    keeper._last = _NO_SHAPE
    return keeper


def _association_record(association: dtls.Association) -> AssociationRecord:
    suite = association.suite
    return AssociationRecord(
        tls_id=association.tls_id,
        generation=association.generation,
        role=association.role,
        ours=association.ours,
        pinned=association.pinned,
        suite=suite.value if suite is not None else None,
        addr=association._addr,
        agreed=association._key is not None,
    )


def _association(record: AssociationRecord, peer: dtls.PeerDtls | None) -> dtls.Association:
    """The association as the old gateway held it: the same agreement key (RFC 5763 §6.6),
    so a re-offer that changes nothing keeps its generation and the worker no new handshake."""
    association = dtls.Association(record.tls_id, record.generation, record.role)
    association.ours = _fingerprint(record.ours)
    association.pinned = _fingerprint(record.pinned)
    association.suite = SrtpSuite(record.suite) if record.suite is not None else None
    association._addr = _pair(record.addr)
    if record.agreed and peer is not None:
        association._key = (
            peer.role,
            frozenset(peer.fingerprints),
            association._addr,
            peer.tls_id,
            association.tls_id,
            association.pinned,
        )
    return association


def _crypto_record(crypto: CryptoAttribute | None) -> CryptoRecord | None:
    if crypto is None:
        return None
    return CryptoRecord(
        tag=crypto.tag,
        suite=crypto.suite.value,
        master=crypto.master,
        lifetime=crypto.lifetime,
        lifetime_as_power=crypto.lifetime_as_power,
        session_params=crypto.session_params,
    )


def _crypto(record: CryptoRecord | None) -> CryptoAttribute | None:
    if record is None:
        return None
    return CryptoAttribute(
        tag=record.tag,
        suite=SrtpSuite(record.suite),
        master=record.master,
        lifetime=record.lifetime,
        session_params=record.session_params,
        lifetime_as_power=record.lifetime_as_power,
    )


def _agreed_record(agreed: _Agreed) -> AgreedMedia:
    phone, provider = agreed.phone, agreed.provider
    return AgreedMedia(
        phone=PhoneMedia(
            addr=phone.addr,
            rtcp_addr=phone.rtcp_addr,
            direction=phone.direction,
            proto=phone.proto,
        ),
        provider=ProviderMedia(
            addr=provider.addr,
            rtcp_addr=provider.rtcp_addr,
            rtcp_mux=provider.rtcp_mux,
            rx=_crypto_record(provider.rx),
            plaintext=provider.plaintext,
            direction=provider.direction,
            proto=provider.proto,
            dtls=_peer_record(provider.dtls),
        ),
        tx=_crypto_record(agreed.tx),
        rtcp_mux=agreed.rtcp_mux,
    )


def _agreed(record: AgreedMedia) -> _Agreed:
    phone, provider = record.phone, record.provider
    return _Agreed(
        _PhoneSide(_pair(phone.addr), _pair(phone.rtcp_addr), phone.direction, phone.proto),
        _ProviderSide(
            _pair(provider.addr),
            _pair(provider.rtcp_addr),
            provider.rtcp_mux,
            _crypto(provider.rx),
            provider.plaintext,
            provider.direction,
            provider.proto,
            _peer(provider.dtls),
        ),
        _crypto(record.tx),
        rtcp_mux=record.rtcp_mux,
    )


def _peer_record(peer: dtls.PeerDtls | None) -> PeerDtlsRecord | None:
    if peer is None:
        return None
    return PeerDtlsRecord(
        fingerprints=peer.fingerprints,
        role=peer.role,
        answer_setup=peer.answer_setup,
        tls_id=peer.tls_id,
    )


def _peer(record: PeerDtlsRecord | None) -> dtls.PeerDtls | None:
    if record is None:
        return None
    fingerprints = tuple((f[0], f[1]) for f in record.fingerprints)
    return dtls.PeerDtls(fingerprints, record.role, record.answer_setup, record.tls_id)


def _fingerprint(value: tuple[str, str] | None) -> tuple[str, str] | None:
    return None if value is None else (value[0], value[1])


def _pair(addr: tuple[str, int] | None) -> tuple[str, int] | None:
    # Decoded records hold lists where the original held tuples: compare equal again.
    return None if addr is None else (addr[0], addr[1])
