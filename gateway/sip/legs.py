"""The two legs of a new call: the one the originator knows, and the one the gateway creates
on the other side (RFC 3261 §12.1.1, §12.1.2; RFC 3325 §9.1 for P-Asserted-Identity;
RFC 3966 for global numbers).

Toward a trunk the gateway's leg carries its own Call-ID, tags and Contact (the phone's
registration token, so the provider can tell its users apart), the trunk's domain, and the
numbers written the way that trunk wants them: the dialled number in the Request-URI and To,
the caller's in From and P-Asserted-Identity. Only E.164 numbers change form; names, short
codes and emergency numbers go as dialled. Toward a phone the leg names the gateway's LAN
address and the phone's registered Contact.
"""

from __future__ import annotations

from gateway.policy.numbering import DialledNumber
from gateway.sip.admission import Admission
from gateway.sip.dialog import Leg
from gateway.sip.edge import Edge, request_user, user_of
from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, new_tag
from gateway.sip.peer import Peer, Side
from gateway.sip.registrar import Challenges
from gateway.sip.registrations import Binding, RegistrationTable
from gateway.sip.trunks import Trunk
from gateway.sip.uri import SipUri, parse_uri


class LegBuilder:
    def __init__(
        self,
        edge: Edge,
        registrations: RegistrationTable,
        admission: Admission,
        challenges: Challenges,
    ) -> None:
        self._edge = edge
        self._registrations = registrations
        self._admission = admission
        self._challenges = challenges

    # ---------------------------------------------------------------- calls out

    def phone_leg(self, request: SipRequest, source: Peer) -> Leg:
        """The caller leg of a call out: the phone's own dialog, the gateway's To tag."""
        phone_from = request.from_
        leg = self._edge.new_leg(
            Side.LAN,
            source,
            request.to.with_tag(new_tag()),
            phone_from,
            request.contacts[0].uri if request.contacts else phone_from.uri,
            self._edge.lan_contact(source),
            call_id=request.call_id,
        )
        leg.remote_cseq = request.cseq.seq
        leg.route_set = list(request.get_all("Record-Route"))
        return leg

    def trunk_leg(
        self,
        request: SipRequest,
        source: Peer,
        number: DialledNumber | None,
        trunk: Trunk,
        *,
        retry: bool = False,
    ) -> Leg:
        """The callee leg toward ``trunk``. A phone answering the provider's challenge keeps
        the WAN Call-ID and From tag of its first try (§22.2); a failover never reuses one."""
        phone_from = request.from_
        if not retry:
            challenged = self._challenges.take(request.call_id, phone_from.tag or "")
            if challenged is not None:
                return challenged
        from_user = self._caller_number(user_of(phone_from), trunk)
        dialled = self._dialled(request, number, trunk)
        binding = self._registrations.of_phone(user_of(phone_from), source.address[0])
        domain = trunk.domain
        wan_uri = self._edge.wan_uri
        return self._edge.new_leg(
            Side.WAN,
            trunk.peer,
            NameAddr(phone_from.display, wan_uri(from_user, domain), {"tag": new_tag()}),
            NameAddr(None, wan_uri(dialled, domain), {}),
            wan_uri(dialled, domain),
            self._edge.wan_contact(binding.token if binding else "gw"),
        )

    def format_identity(self, outgoing: SipRequest, trunk: Trunk) -> None:
        """P-Asserted-Identity copied from the phone: its number as the trunk wants it, and
        the trunk's domain instead of the phone's view of the gateway."""
        values = outgoing.get_all("P-Asserted-Identity")
        if not values:
            return
        outgoing.remove("P-Asserted-Identity")
        for value in values:
            try:
                identity = NameAddr.parse(value)
            except SipError:
                continue  # unparseable: an identity the provider could not use anyway
            uri = identity.uri
            if isinstance(uri, SipUri):
                user = self._caller_number(uri.user, trunk)
                uri = self._edge.wan_uri(user, trunk.domain)
                identity = NameAddr(identity.display, uri, identity.params)
            outgoing.add("P-Asserted-Identity", str(identity))

    def _dialled(self, request: SipRequest, number: DialledNumber | None, trunk: Trunk) -> str:
        if number is None:
            return request_user(request) or ""
        return self._admission.format_number(number, trunk.number_format)

    def _caller_number(self, user: str | None, trunk: Trunk) -> str | None:
        if user is None:
            return None
        return self._admission.format_caller(user, trunk.caller_id_format)

    # ----------------------------------------------------------------- calls in

    def inbound(
        self, request: SipRequest, source: Peer, binding: Binding
    ) -> tuple[Leg, Leg]:
        """Provider -> phone: the provider's dialog, and a leg from the gateway to the phone."""
        provider_from = request.from_
        caller = self._edge.new_leg(
            Side.WAN,
            source,
            request.to.with_tag(new_tag()),
            provider_from,
            request.contacts[0].uri if request.contacts else provider_from.uri,
            self._edge.wan_contact(binding.token),
            call_id=request.call_id,
        )
        caller.remote_cseq = request.cseq.seq
        caller.route_set = list(request.get_all("Record-Route"))
        lan_uri = self._edge.lan_uri
        callee = self._edge.new_leg(
            Side.LAN,
            binding.phone_peer,
            NameAddr(provider_from.display, lan_uri(user_of(provider_from)), {"tag": new_tag()}),
            NameAddr(None, lan_uri(binding.user), {}),
            parse_uri(binding.phone_contact),
            self._edge.lan_contact(binding.phone_peer),
        )
        return caller, callee
