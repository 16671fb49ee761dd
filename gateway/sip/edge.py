"""The gateway's two faces in SIP: its addresses, URIs and Contacts on each side, and the
small message facts the B2BUA asks of requests (RFC 3261 §8.1.1, §10.2.1, §12.1, §18.2.1).

Everything that names the gateway on one side, or that reads a user part, a host or an option
tag out of a message, is written once here: the B2BUA's modules only ask.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.dialog import Leg
from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr, Via
from gateway.sip.limits import SipLimits
from gateway.sip.message import SipRequest, SipResponse, new_call_id
from gateway.sip.peer import Peer, Side
from gateway.sip.transaction import TimerSettings
from gateway.sip.trunks import Route, Trunk
from gateway.sip.uri import AbsoluteUri, SipUri


@dataclass(frozen=True)
class EdgeSettings:
    """What the core needs to know about the deployment (derived from GatewayConfig)."""

    lan_address: str
    lan_port: int
    wan_address: str
    #: Port in our WAN Via/Contact: the WAN TLS listener if there is one.
    wan_port: int
    #: The provider connection as a Peer (connection None = whichever is current) and its SIP
    #: domain: a site with one trunk. With ``trunks`` given they are the first trunk's.
    provider: Peer | None
    domain: str
    media: MediaPolicy
    lan_media_ports: tuple[int, int]
    wan_media_ports: tuple[int, int]
    timers: TimerSettings = field(default_factory=TimerSettings)
    user_agent: str = "sip-media-gateway"
    default_expires: int = 3600
    #: The trunks, in the order of preference; empty: one made of ``provider`` and ``domain``.
    trunks: tuple[Trunk, ...] = ()
    #: Routes choosing trunks by destination; empty: every trunk in order for every call.
    routes: tuple[Route, ...] = ()
    #: Message sizes and call and registration counts the core enforces ([limits]).
    limits: SipLimits = field(default_factory=SipLimits)

    def __post_init__(self) -> None:
        if not self.trunks:
            if self.provider is None:
                raise ValueError("a provider or at least one trunk is needed")
            trunk = Trunk("provider", self.provider, self.domain)
            object.__setattr__(self, "trunks", (trunk,))
        first = self.trunks[0]
        object.__setattr__(self, "provider", first.peer)
        object.__setattr__(self, "domain", first.domain)

    @property
    def registrar_peer(self) -> Peer:
        """Where REGISTERs and out-of-dialog requests go: the first trunk."""
        return self.trunks[0].peer


class Edge:
    """Builds what carries the gateway's identity on each side: Contacts, URIs and legs."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings

    def lan_contact(self, peer: Peer) -> str:
        transport = ";transport=tcp" if peer.transport == "tcp" else ""
        s = self.settings
        return f"<sip:gw@{host_literal(s.lan_address)}:{s.lan_port}{transport}>"

    def wan_contact(self, user: str = "gw") -> str:
        s = self.settings
        return (
            f"<sip:{user}@{host_literal(s.wan_address)}:{s.wan_port}"
            f";transport={s.registrar_peer.transport}>"
        )

    def contact(self, side: Side, peer: Peer, user: str = "gw") -> str:
        return self.lan_contact(peer) if side == Side.LAN else self.wan_contact(user)

    def wan_uri(self, user: str | None, domain: str | None = None) -> SipUri:
        """A URI in the provider's world: ``domain`` of the trunk (the first trunk's)."""
        return SipUri("sip", user, None, domain or self.settings.domain, None, {}, None)

    def lan_uri(self, user: str | None) -> SipUri:
        s = self.settings
        return SipUri("sip", user, None, host_literal(s.lan_address), s.lan_port, {}, None)

    def uri(self, side: Side, user: str | None) -> SipUri:
        return self.lan_uri(user) if side == Side.LAN else self.wan_uri(user)

    def new_leg(
        self,
        side: Side,
        peer: Peer,
        local: NameAddr,
        remote: NameAddr,
        target: SipUri | AbsoluteUri,
        contact: str,
        call_id: str | None = None,
    ) -> Leg:
        s = self.settings
        if side == Side.LAN:
            via_host, via_port = s.lan_address, s.lan_port
        else:
            via_host, via_port = s.wan_address, s.wan_port
        return Leg(
            peer=peer,
            call_id=call_id or new_call_id(),
            local=local,
            remote=remote,
            contact=contact,
            remote_target=target,
            via_host=via_host,
            via_port=via_port,
        )

    def is_for_gateway(self, request: SipRequest) -> bool:
        """A Request-URI without a user naming one of the gateway's hosts (OPTIONS pings)."""
        uri = request.uri
        if not isinstance(uri, SipUri) or uri.user:
            return False
        s = self.settings
        host = uri.host.strip("[]")
        return host in (s.lan_address, s.wan_address) or any(t.domain == host for t in s.trunks)


# --------------------------------------------------------------------- message facts


def other_side(side: Side) -> Side:
    return Side.WAN if side == Side.LAN else Side.LAN


def user_of(addr: NameAddr) -> str | None:
    """The user part of a name-addr: a SIP URI's user or a tel URI's number."""
    return uri_user(addr.uri)


def request_user(request: SipRequest) -> str | None:
    """The user part of the Request-URI (the dialled number or extension)."""
    return uri_user(request.uri)


#: What the number of a tel: URI may hold (RFC 3966 §3: digits, hex digits and * # of a local
#: number, the leading +, visual separators).
_TEL_NUMBER = frozenset("0123456789abcdefABCDEF*#+-.()")


def uri_user(uri: SipUri | AbsoluteUri) -> str | None:
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, AbsoluteUri) and uri.scheme.lower() == "tel":
        number = uri.opaque.split(";")[0]
        # The scheme's body is kept opaque by the parser: anything else in it (an '@' that
        # would land in the user part of the provider's Request-URI) is no number at all.
        return number if number and _TEL_NUMBER.issuperset(number) else None
    return None


def host_literal(address: str) -> str:
    """An address as a URI host: IPv6 in brackets (RFC 3261 §25.1)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def has_option_tag(message: SipRequest | SipResponse, tag: str, header: str | None = None) -> bool:
    names = (header,) if header else ("Supported", "Require")
    return any(t.strip().lower() == tag for name in names for t in message.get_all(name))


def is_reliable_provisional(response: SipResponse) -> bool:
    """A provisional sent reliably (RFC 3262 §3): it must be PRACKed."""
    return 100 < response.status < 200 and has_option_tag(response, "100rel", header="Require")


def int_or(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def quoted(text: str) -> str:
    """Text for a quoted-string (RFC 3261 §25.1), bounded so no header grows without end."""
    return text.replace("\\", "\\\\").replace('"', '\\"')[:200]


def gateway_warning(text: str) -> str:
    """The Warning header value the gateway puts on every refusal it decides itself
    (RFC 3261 §20.43: code 399, miscellaneous, with the gateway as agent)."""
    return f'399 gateway "{quoted(text)}"'


def reason_phrase(reason: str) -> str:
    """A reason phrase from free text: one line, bounded."""
    return reason.replace("\r", " ").replace("\n", " ")[:120]


def stamp_received(request: SipRequest, peer: Peer) -> None:
    """RFC 3581 §4 / RFC 3261 §18.2.1: record where a UDP request really came from in its
    top Via, so the response shows the phone its public address and port."""
    top = request.remove_first("Via")
    if top is None:
        return
    try:
        via = Via.parse(top)
    except SipError:
        request.prepend("Via", top)
        return
    host, port = peer.address
    if via.host.strip("[]") != host:
        via.set_param("received", host)
    if via.has_rport:
        via.set_param("rport", str(port))
    request.prepend("Via", str(via))


def phone_peer(contact: NameAddr, source: Peer) -> Peer:
    """Where a registered phone is reached (RFC 3261 §10.3, §18.2.2).

    Over UDP the phone's Contact names the port it listens on, which need not be the port
    its REGISTER came from; a stream-connected phone is reached over its own connection.
    A Contact with a host name (or none of ours to parse) falls back to the source address.
    """
    uri = contact.uri
    if source.transport != "udp" or not isinstance(uri, SipUri):
        return source
    host, port = uri.host_port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return source
    return Peer(Side.LAN, "udp", (host, port or 5060))


def build_cancel(invite: SipRequest) -> SipRequest:
    """§9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via (branch) as the INVITE."""
    cancel = SipRequest("CANCEL", invite.uri.copy())
    cancel.add("Via", invite.get_all("Via")[0])
    cancel.add("Max-Forwards", "70")
    for route in invite.get_all("Route"):
        cancel.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        value = invite.get(name)
        if value is not None:
            cancel.add(name, value)
    cancel.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return cancel
