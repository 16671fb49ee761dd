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
from gateway.sip.peer import Peer


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

    def __len__(self) -> int:
        return len(self._by_token)
