"""Registration bindings: which phone stands behind each opaque token the provider knows.

A phone's REGISTER is relayed upstream with the gateway's own Contact, whose user part is an
opaque token (RFC 3261 §10.2.1 lets a Contact be any URI that reaches the UA). The provider
then sends that phone's calls to ``sip:TOKEN@gateway``, and this table maps the token back to
the phone's real Contact and transport address. Tokens are random, so nothing about the LAN
(addresses, extension layout) is visible upstream, and stable per (AOR, phone Contact) so that
refreshes keep one binding at the provider.

Digest authentication passes through untouched: the upstream REGISTER of a binding keeps one
Call-ID and a rising CSeq (§10.2.4), so the provider sees an ordinary UA refreshing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gateway.sip.message import new_call_id, new_tag
from gateway.sip.peer import Peer, Side
from gateway.state.model import BindingRecord


@dataclass
class Binding:
    """One phone contact registered through the gateway."""

    token: str
    #: The phone's address-of-record user part (the extension) and its full AOR as sent.
    user: str
    aor: str
    #: The phone's Contact URI as it registered it (where its calls go).
    phone_contact: str
    #: The transport address the REGISTER came from (used to reach the phone).
    phone_peer: Peer
    #: Upstream dialog-ish state for refreshes (§10.2.4).
    upstream_call_id: str = field(default_factory=new_call_id)
    upstream_from_tag: str = field(default_factory=new_tag)
    upstream_cseq: int = 0
    #: Absolute time (the core's clock) when the provider's binding lapses; 0 = not yet.
    expires_at: float = 0.0
    #: The phone's User-Agent, for the inventory of phones seen.
    user_agent: str | None = None
    #: The last REGISTER's Authorization headers, replayed after a reconnect.
    last_authorization: list[tuple[str, str]] = field(default_factory=list)
    last_expires: int = 3600
    #: When the binding was made (the core's clock): one the provider never granted is
    #: forgotten a while later, so unanswered or refused REGISTERs cannot pile up.
    created_at: float = 0.0

    def active(self, now: float) -> bool:
        return self.expires_at > now


#: Seconds a binding the provider never granted is kept: a REGISTER transaction's 64*T1
#: and the phone's retry with credentials fit well within it.
UNGRANTED_LIFETIME = 120.0


class RegistrationTable:
    """Bindings by token and by (AOR, phone contact)."""

    def __init__(self) -> None:
        self._by_token: dict[str, Binding] = {}
        self._by_contact: dict[tuple[str, str], Binding] = {}
        #: Extension -> its bindings (one per phone contact), so no look-up scans the table.
        self._by_user: dict[str, dict[str, Binding]] = {}
        self._by_aor: dict[str, dict[str, Binding]] = {}

    def binding_for(
        self, user: str, aor: str, phone_contact: str, peer: Peer, now: float = 0.0
    ) -> Binding:
        """The binding for this phone contact, created with a fresh token if new."""
        key = (aor, phone_contact)
        binding = self._by_contact.get(key)
        if binding is None:
            token = "gw" + secrets.token_hex(8)
            binding = Binding(token, user, aor, phone_contact, peer, created_at=now)
            self._by_contact[key] = binding
            self._by_token[token] = binding
            self._by_user.setdefault(user, {})[token] = binding
            self._by_aor.setdefault(aor, {})[token] = binding
        else:
            binding.phone_peer = peer
        return binding

    def get(self, aor: str, phone_contact: str) -> Binding | None:
        """The binding of this phone contact, if the gateway holds one."""
        return self._by_contact.get((aor, phone_contact))

    def find(self, user: str, now: float) -> Binding | None:
        """The phone a Request-URI user names: a binding's token, else the extension's
        binding that expires last."""
        binding = self._by_token.get(user)
        if binding is None:
            found = self.active_for_user(user, now)
            binding = found[0] if found else None
        return binding

    def has_user(self, user: str) -> bool:
        """Any binding (active or lapsing) of this extension."""
        return bool(self._by_user.get(user))

    def of_phone(self, user: str | None, address: str) -> Binding | None:
        """The binding of this extension registered from this phone's address."""
        for binding in self._by_user.get(user or "", {}).values():
            if binding.phone_peer.address[0] == address:
                return binding
        return None

    def for_aor(self, aor: str) -> list[Binding]:
        return list(self._by_aor.get(aor, {}).values())

    def active_for_user(self, user: str, now: float) -> list[Binding]:
        """Active bindings of an extension, newest expiry first."""
        found = [b for b in self._by_user.get(user, {}).values() if b.active(now)]
        return sorted(found, key=lambda b: b.expires_at, reverse=True)

    def remove(self, binding: Binding) -> None:
        self._by_token.pop(binding.token, None)
        self._by_contact.pop((binding.aor, binding.phone_contact), None)
        for index, name in ((self._by_user, binding.user), (self._by_aor, binding.aor)):
            group = index.get(name)
            if group is not None:
                group.pop(binding.token, None)
                if not group:
                    del index[name]

    def expire(self, now: float) -> list[Binding]:
        """Drop bindings that lapsed (with a grace period for late refreshes)."""
        gone = [
            b
            for b in self._by_token.values()
            if (b.expires_at and b.expires_at + 32 < now)
            or (not b.expires_at and b.created_at and b.created_at + UNGRANTED_LIFETIME < now)
        ]
        for binding in gone:
            self.remove(binding)
        return gone

    def all(self) -> list[Binding]:
        return list(self._by_token.values())

    # --- state kept across a restart (gateway.state) ---

    def export(self, now: float, wall: float) -> list[BindingRecord]:
        """Bindings the provider granted and that are still active, with Unix expiry times
        (``wall`` is Unix time at ``now``)."""
        return [
            BindingRecord(
                token=b.token,
                user=b.user,
                aor=b.aor,
                phone_contact=b.phone_contact,
                transport=b.phone_peer.transport,
                address=b.phone_peer.address,
                upstream_call_id=b.upstream_call_id,
                upstream_from_tag=b.upstream_from_tag,
                upstream_cseq=b.upstream_cseq,
                expires_at=round(b.expires_at - now + wall, 3),
                last_expires=b.last_expires,
                user_agent=b.user_agent,
                authorization=tuple(b.last_authorization),
            )
            for b in self._by_token.values()
            if b.active(now)
        ]

    def restore(self, records: list[BindingRecord], now: float, wall: float) -> int:
        """Bindings saved before a restart; those already lapsed are skipped. A phone on TCP
        is reached on a new connection (§18.2.2), its old one died with the process."""
        restored = 0
        for r in records:
            expires_at = r.expires_at - wall + now
            if expires_at <= now or r.token in self._by_token:
                continue
            peer = Peer(Side.LAN, r.transport, (r.address[0], r.address[1]))
            binding = self.binding_for(r.user, r.aor, r.phone_contact, peer, now)
            if binding.token != r.token:
                # The token is what the provider knows: the restored binding keeps it.
                self.remove(binding)
                binding.token = r.token
                self._by_contact[(r.aor, r.phone_contact)] = binding
                self._by_token[r.token] = binding
                self._by_user.setdefault(r.user, {})[r.token] = binding
                self._by_aor.setdefault(r.aor, {})[r.token] = binding
            binding.upstream_call_id = r.upstream_call_id
            binding.upstream_from_tag = r.upstream_from_tag
            binding.upstream_cseq = r.upstream_cseq
            binding.expires_at = expires_at
            binding.last_expires = r.last_expires
            binding.user_agent = r.user_agent
            binding.last_authorization = list(r.authorization)
            restored += 1
        return restored

    def __len__(self) -> int:
        return len(self._by_token)
