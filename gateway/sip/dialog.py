"""One leg of a call as a dialog (RFC 3261 §12) seen from the gateway, and how to build its
requests.

A back-to-back user agent owns two dialogs per call, one per side, and they share nothing on
the wire: each leg has its own Call-ID, tags, CSeq space, route set and remote target (RFC 7092
§3.1, "signaling-only" B2BUA). A ``Leg`` keeps exactly that state. In a leg, "local" is always the
gateway and "remote" the phone or the provider, whatever role (UAC or UAS) the gateway played
when the dialog was created, so §12.2.1.1's From/To rule is simply: From = local, To = remote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, new_branch
from gateway.sip.peer import Peer, Side
from gateway.sip.uri import AbsoluteUri, SipUri


@dataclass(slots=True)
class Leg:
    """The gateway's half of one dialog on one side."""

    peer: Peer
    call_id: str
    #: Our identity in this dialog (From in our requests), tag included once known.
    local: NameAddr
    #: The other party's identity (To in our requests), tag included once known.
    remote: NameAddr
    #: Our Contact for this leg.
    contact: str
    #: Where in-dialog requests go: the other party's Contact (§12.1.1, §12.1.2).
    remote_target: SipUri | AbsoluteUri
    #: Route set in the order requests must carry it (§12.1.1: reversed for the UAC).
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    #: The sent-by of our Via on this side.
    via_host: str = "127.0.0.1"
    via_port: int = 5060

    @property
    def local_tag(self) -> str | None:
        return self.local.tag

    @property
    def remote_tag(self) -> str | None:
        return self.remote.tag

    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    def via(self, branch: str | None = None) -> str:
        """A Via for a request we originate on this leg (§8.1.1.7), with rport (RFC 3581)."""
        host = f"[{self.via_host}]" if ":" in self.via_host else self.via_host
        transport = self.peer.transport.upper()
        # RFC 5923 §5: on a stream toward the provider, "alias" asks it to reuse this very
        # connection for requests to our sent-by (where our Contact points), instead of
        # opening a new one: one connection carries both directions.
        alias = ";alias" if self.peer.reliable and self.peer.side == Side.WAN else ""
        return (
            f"SIP/2.0/{transport} {host}:{self.via_port};branch={branch or new_branch()};rport"
            f"{alias}"
        )

    def build_request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        max_forwards: int = 70,
        branch: str | None = None,
    ) -> SipRequest:
        """A request within this dialog (§12.2.1.1): target, route set, tags and CSeq."""
        number = cseq if cseq is not None else self.next_cseq()
        request = SipRequest(method, self.remote_target.copy())
        request.add("Via", self.via(branch))
        request.add("Max-Forwards", str(max_forwards))
        for route in self.route_set:
            request.add("Route", route)
        request.add("From", str(self.local))
        request.add("To", str(self.remote))
        request.add("Call-ID", self.call_id)
        request.add("CSeq", f"{number} {method}")
        if method not in ("ACK", "CANCEL", "BYE"):
            request.add("Contact", self.contact)
        if body:
            request.add("Content-Type", content_type or "application/sdp")
            request.body = body
        return request

    def learn_from_response(self, response: SipResponse, *, uac: bool) -> None:
        """Update the remote tag, target and route set from a dialog-creating response."""
        tag = response.to.tag
        if tag and self.remote.tag != tag:
            self.remote = self.remote.with_tag(tag)
        contacts = response.contacts
        if contacts:
            self.remote_target = contacts[0].uri.copy()
        if uac:
            # §12.1.2: the UAC's route set is the Record-Route of the response, reversed.
            self.route_set = list(reversed(response.get_all("Record-Route")))

    def learn_target_refresh(self, message: SipRequest | SipResponse) -> None:
        """A target refresh (re-INVITE, UPDATE, their 2xx) may move the remote target (§12.2)."""
        contacts = message.contacts
        if contacts:
            self.remote_target = contacts[0].uri.copy()

    def matches(self, call_id: str, local_tag: str | None) -> bool:
        return self.call_id == call_id and self.local.tag == local_tag


def copy_headers(
    source: SipRequest | SipResponse,
    target: SipRequest | SipResponse,
    names: tuple[str, ...],
) -> None:
    """Copy the listed headers from one leg's message to the other's, values unchanged."""
    for name in names:
        for value in source.get_all(name) if name in _SPLIT_OK else _raw_values(source, name):
            target.add(name, value)


def _raw_values(message: SipRequest | SipResponse, name: str) -> list[str]:
    lowered = name.lower()
    return [value for header, value in message.headers if header.lower() == lowered]


# Headers whose comma-separated elements may be split when copied.
_SPLIT_OK = frozenset({"Allow", "Supported", "Require", "Unsupported", "Allow-Events", "Accept"})
