"""Phones' registrations relayed to the provider, and the challenges phones answer
(RFC 3261 §10, §22; RFC 3665 §2).

A phone's REGISTER goes upstream with the gateway's own Contact, whose user part is the
binding's opaque token (``gateway.sip.registrations``); its credentials pass through
untouched, and the provider's challenge comes back to the phone, so the gateway never needs a
phone's password. A query (no Contact) is answered from the bindings without going upstream.
After a provider reconnect every active binding is registered again with the phone's last
credentials.

``Challenges`` remembers, for an INVITE the provider challenged, the WAN leg it used: the
phone's retry with credentials then goes out with the same Call-ID and From tag, as the
provider expects of one UA (§22.2).
"""

from __future__ import annotations

from gateway.sip.actions import CallEvent
from gateway.sip.admission import Admission
from gateway.sip.call_events import PhoneRegistered
from gateway.sip.dialog import Leg, copy_headers
from gateway.sip.edge import Edge, gateway_warning, int_or, phone_peer, user_of
from gateway.sip.events import RequestReceived
from gateway.sip.headers import NameAddr
from gateway.sip.limits import MAX_REGISTRATIONS, RETRY_AFTER
from gateway.sip.message import SipRequest, SipResponse, make_response, new_tag
from gateway.sip.outgoing import Outgoing, Relay
from gateway.sip.peer import Peer, Side
from gateway.sip.registrations import Binding, RegistrationTable
from gateway.sip.trunks import TrunkTable
from gateway.sip.uri import SipUri

#: Headers of a REGISTER's response carried back to the phone.
RESPONSE_COPY: tuple[str, ...] = (
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authentication-Info",
    "Warning",
    "Retry-After",
    "Min-Expires",
    "Min-SE",
    "Session-Expires",
    "Unsupported",
    "Accept",
    "Allow-Events",
    "Expires",
    "Reason",
    "Content-Disposition",
)


class Challenges:
    """WAN legs of INVITEs the provider challenged, by the phone's (Call-ID, From tag)."""

    def __init__(self) -> None:
        self._legs: dict[tuple[str, str], tuple[Leg, float]] = {}

    def remember(self, call_id: str, from_tag: str, leg: Leg, now: float) -> None:
        self._legs[(call_id, from_tag)] = (leg, now)

    def take(self, call_id: str, from_tag: str) -> Leg | None:
        found = self._legs.pop((call_id, from_tag), None)
        return found[0] if found is not None else None

    def expire(self, now: float, lifetime: float) -> None:
        for key, (_, at) in list(self._legs.items()):
            if now - at > lifetime:
                del self._legs[key]


class Registrar:
    """The REGISTER relay between phones and the provider."""

    def __init__(
        self,
        edge: Edge,
        registrations: RegistrationTable,
        out: Outgoing,
        admission: Admission,
        trunks: TrunkTable,
    ) -> None:
        self._edge = edge
        self._trunks = trunks
        self._settings = edge.settings
        self.registrations = registrations
        self._out = out
        self._admission = admission
        #: AOR -> REGISTERs relayed upstream and not yet answered.
        self._pending: dict[str, int] = {}

    def relay(self, event: RequestReceived, source: Peer, now: float) -> None:
        """A phone's REGISTER (the provider is known to be up)."""
        request = event.request
        to = request.to
        user = user_of(to)
        if user is None or not isinstance(to.uri, SipUri):
            self._out.reply(
                Side.LAN, event.key, request, 400, now, "To must be a SIP address of record"
            )
            return
        aor = str(to.uri)
        if self._pending.get(aor) and request.has("Authorization"):
            # §10.2: a UA sends no new REGISTER for an AOR before the previous one is answered.
            # Credentials fired off without waiting are a guesser's, not a phone's: each
            # counts as a failed authentication at once, so a pipelining guesser is banned
            # after as many guesses as a patient one, however slow the provider answers.
            self._out.count("register_overlap")
            if self._admission.overlapping_register(source.address[0], now):
                # That guess was the last: it goes no further than the gateway.
                self._out.reply(Side.LAN, event.key, request, 403, now)
                return
        contacts = request.contacts
        if request.is_wildcard_contact:
            bindings = self.registrations.for_aor(aor)
            if not bindings:
                self._out.send_response(Side.LAN, event.key, make_response(request, 200), now)
                return
            binding = bindings[0]
            contact_value = "*"
        elif not contacts:
            # A query (§10.2.3): answer with what the gateway knows, without going upstream.
            response = make_response(request, 200)
            self._add_contacts(response, aor, now)
            self._out.send_response(Side.LAN, event.key, response, now)
            return
        else:
            phone_contact = contacts[0]
            if self._over_limit(aor, str(phone_contact.uri), event, now):
                return
            binding = self.registrations.binding_for(
                user, aor, str(phone_contact.uri), phone_peer(phone_contact, source), now
            )
            binding.user_agent = request.get("User-Agent")
            expires = phone_contact.param("expires") or request.get("Expires")
            binding.last_expires = int_or(expires, self._settings.default_expires)
            contact_value = (
                f"{self._edge.wan_contact(binding.token)};expires={binding.last_expires}"
            )
        binding.upstream_cseq += 1
        binding.last_authorization = [
            (n, v) for n, v in request.headers if n in ("Authorization", "Proxy-Authorization")
        ]
        upstream = self._upstream(binding, contact_value, request)
        relay = Relay(None, Side.LAN, event.key, request, binding=binding, source=source)
        self._out.relay_request(Side.WAN, upstream, self._trunks.registrar.peer, now, relay)
        self._pending[aor] = self._pending.get(aor, 0) + 1

    def _over_limit(self, aor: str, phone_contact: str, event: RequestReceived, now: float) -> bool:
        """[limits] max_registrations: a new binding beyond it gets 503 with Retry-After; a
        refresh of a binding the gateway holds always passes."""
        limit = self._settings.limits.max_registrations
        if len(self.registrations) < limit or self.registrations.get(aor, phone_contact):
            return False
        # Expiry runs with the core's timers; at the cap, what has lapsed goes first.
        self.registrations.expire(now)
        if len(self.registrations) < limit:
            return False
        self._out.count(MAX_REGISTRATIONS)
        reason = f"too many registrations through the gateway (limit {limit})"
        headers = [("Warning", gateway_warning(reason)), ("Retry-After", str(RETRY_AFTER))]
        self._out.reply(Side.LAN, event.key, event.request, 503, now, headers=headers)
        return True

    def refresh_all(self, now: float) -> None:
        """After a reconnect, re-register every binding the provider knew through the old
        connection, replaying the phone's last credentials; a fresh challenge then waits for
        the phone's own refresh."""
        for binding in self.registrations.all():
            if not binding.active(now):
                continue
            binding.upstream_cseq += 1
            contact = f"{self._edge.wan_contact(binding.token)};expires={binding.last_expires}"
            request = self._upstream(binding, contact, None)
            relay = Relay(None, Side.LAN, "", request, binding=binding, internal=True)
            self._out.relay_request(Side.WAN, request, self._trunks.registrar.peer, now, relay)

    def on_response(self, relay: Relay, response: SipResponse, now: float) -> None:
        binding = relay.binding
        assert binding is not None
        status = response.status
        if status < 200:
            return
        if not relay.internal:
            self._answered(str(relay.original().to.uri))
        if 200 <= status < 300:
            granted = None
            for contact in response.contacts:
                if isinstance(contact.uri, SipUri) and contact.uri.user == binding.token:
                    granted = int_or(contact.params.get("expires"), -1)
            if granted is None or granted < 0:
                granted = int_or(response.get("Expires"), binding.last_expires)
            if relay.original().is_wildcard_contact or granted == 0:
                for b in self.registrations.for_aor(binding.aor):
                    self.registrations.remove(b)
            else:
                binding.expires_at = now + granted
            host, port = binding.phone_peer.address
            event: CallEvent = PhoneRegistered(
                binding.upstream_call_id,
                binding.user,
                granted,
                binding.user_agent,
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                binding.phone_peer.transport,
            )
            self._out.emit(event)
        if relay.internal:
            return
        # §8.2.6.2: a final response carries a To tag (the provider's belongs to the WAN leg).
        reply = make_response(relay.original(), status, response.reason, to_tag=new_tag())
        copy_headers(response, reply, RESPONSE_COPY)
        if 200 <= status < 300:
            self._add_contacts(reply, binding.aor, now)
            date = response.get("Date")
            if date:
                reply.add("Date", date)
        self._out.send_response(Side.LAN, relay.server_key, reply, now)
        self._admission.auth_result(relay.original(), relay.source, status, now)

    def on_timeout(self, relay: Relay, now: float) -> None:
        if relay.internal:
            return
        self._answered(str(relay.original().to.uri))
        self._out.reply(Side.LAN, relay.server_key, relay.original(), 408, now)

    def _answered(self, aor: str) -> None:
        left = self._pending.get(aor, 0) - 1
        if left > 0:
            self._pending[aor] = left
        else:
            self._pending.pop(aor, None)

    def _add_contacts(self, response: SipResponse, aor: str, now: float) -> None:
        for b in self.registrations.for_aor(aor):
            if b.active(now):
                response.add("Contact", f"<{b.phone_contact}>;expires={int(b.expires_at - now)}")

    def _upstream(self, binding: Binding, contact: str, original: SipRequest | None) -> SipRequest:
        trunk = self._trunks.registrar
        domain_uri = SipUri("sip", None, None, trunk.domain, None, {}, None)
        aor = self._edge.wan_uri(binding.user, trunk.domain)
        leg = self._edge.new_leg(
            Side.WAN,
            trunk.peer,
            NameAddr(None, aor, {"tag": binding.upstream_from_tag}),
            NameAddr(None, aor, {}),
            domain_uri,
            contact,
            call_id=binding.upstream_call_id,
        )
        request = leg.build_request("REGISTER", cseq=binding.upstream_cseq)
        request.set("Contact", contact)
        if original is not None:
            copy_headers(
                original, request, ("Expires", "Authorization", "Proxy-Authorization", "Supported")
            )
        else:
            request.set("Expires", str(binding.last_expires))
            for name, value in binding.last_authorization:
                request.add(name, value)
        request.set("User-Agent", self._settings.user_agent)
        return request
