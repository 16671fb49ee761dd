"""What of the site survives a restart of the gateway, as plain records (sans-IO).

The cores export their state as these records and restore it from them
(``RegistrationTable.export``/``restore``, ``CallCaps.export``/``restore``); they take the
core clock's ``now`` and the Unix time ``wall`` at that instant as inputs and never read a
clock, so every time in a record is Unix time and means the same after a restart.

A record that carries a credential (a phone's Authorization headers, relayed again upstream
after a reconnect: RFC 3261 §10.2.4, §22.4) exists in two forms: ``BindingRecord`` in memory,
with the headers in clear, and ``StoredBinding`` on disk (or, later, in a shared store), with
the headers sealed by :mod:`gateway.state.seal` or left out. The documents are versioned
msgspec structs, one per kind, so a store writes them whole and atomically.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

VERSION = 1

#: The kinds of state, one document (one file in the local store) each.
REGISTRATIONS = "registrations"
CAPS = "caps"


class BindingRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One registration binding: the opaque token the provider knows and the phone behind it."""

    token: str
    user: str
    aor: str
    phone_contact: str
    #: The phone's transport ("udp", "tcp") and address its REGISTER came from.
    transport: str
    address: tuple[str, int]
    #: The upstream registration's Call-ID, From tag and last CSeq (§10.2.4: a refresh after
    #: the restart continues them, so the provider sees one UA refreshing).
    upstream_call_id: str
    upstream_from_tag: str
    upstream_cseq: int
    #: Unix time the provider's binding lapses.
    expires_at: float
    last_expires: int
    user_agent: str | None = None
    #: The phone's last Authorization / Proxy-Authorization headers (credentials: sealed or
    #: dropped before they leave the process).
    authorization: tuple[tuple[str, str], ...] = ()


class StoredBinding(msgspec.Struct, frozen=True, kw_only=True):
    """A ``BindingRecord`` as stored: ``authorization`` sealed, or None when not saved."""

    token: str
    user: str
    aor: str
    phone_contact: str
    transport: str
    address: tuple[str, int]
    upstream_call_id: str
    upstream_from_tag: str
    upstream_cseq: int
    expires_at: float
    last_expires: int
    user_agent: str | None = None
    sealed_authorization: str | None = None


class RegistrationsDocument(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    site: str
    bindings: list[StoredBinding]


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Recent usage of one phone (``phone`` None: the whole site), all in Unix time."""

    phone: str | None
    #: Starts of non-emergency calls in the last hour.
    starts: list[float]
    #: (end, billable seconds, international) of calls that ended in the last day.
    finished: list[tuple[float, float, bool]]


class ActiveCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A call in progress when the state was saved; restored as ended at the restart (an
    overcount of the downtime at most: a cap errs towards the owner's money)."""

    key: str
    phone: str
    started: float
    answered: float | None
    international: bool


class CapsDocument(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    usage: list[UsageRecord]
    active: list[ActiveCallRecord] = []


class Sealing(Protocol):
    """What :func:`store_bindings` / :func:`load_bindings` need of a sealer."""

    def seal(self, kind: str, plaintext: bytes) -> str | None: ...

    def open(self, kind: str, sealed: str) -> bytes | None: ...


_HEADERS = msgspec.json.Decoder(list[tuple[str, str]])


def _binding_kind(token: str) -> str:
    # The token goes into the associated data: a sealed field pasted into another binding
    # does not open there.
    return f"binding:{token}"


def store_bindings(
    records: list[BindingRecord], sealer: Sealing, site: str
) -> RegistrationsDocument:
    """The document to save: credentials sealed, or left out without a key."""
    stored = []
    for r in records:
        sealed = None
        if r.authorization:
            plain = msgspec.json.encode([list(h) for h in r.authorization])
            sealed = sealer.seal(_binding_kind(r.token), plain)
        stored.append(
            StoredBinding(
                token=r.token,
                user=r.user,
                aor=r.aor,
                phone_contact=r.phone_contact,
                transport=r.transport,
                address=r.address,
                upstream_call_id=r.upstream_call_id,
                upstream_from_tag=r.upstream_from_tag,
                upstream_cseq=r.upstream_cseq,
                expires_at=r.expires_at,
                last_expires=r.last_expires,
                user_agent=r.user_agent,
                sealed_authorization=sealed,
            )
        )
    return RegistrationsDocument(version=VERSION, site=site, bindings=stored)


def load_bindings(document: RegistrationsDocument, sealer: Sealing) -> list[BindingRecord]:
    """The bindings of a saved document; a sealed field that does not open (no key, a wrong
    key, tampering) is dropped and the binding kept without credentials."""
    records = []
    for s in document.bindings:
        authorization: tuple[tuple[str, str], ...] = ()
        if s.sealed_authorization is not None:
            plain = sealer.open(_binding_kind(s.token), s.sealed_authorization)
            if plain is not None:
                try:
                    authorization = tuple(_HEADERS.decode(plain))
                except msgspec.DecodeError:
                    authorization = ()
        records.append(
            BindingRecord(
                token=s.token,
                user=s.user,
                aor=s.aor,
                phone_contact=s.phone_contact,
                transport=s.transport,
                address=s.address,
                upstream_call_id=s.upstream_call_id,
                upstream_from_tag=s.upstream_from_tag,
                upstream_cseq=s.upstream_cseq,
                expires_at=s.expires_at,
                last_expires=s.last_expires,
                user_agent=s.user_agent,
                authorization=authorization,
            )
        )
    return records
