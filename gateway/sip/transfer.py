"""Transfers across the gateway: Refer-To, Referred-By and Replaces mapped from one leg's
world into the other's (RFC 3515 §2.1, RFC 3892, RFC 3891 §3 and §5).

A Refer-To names a party in the sender's world; it is re-homed to the other side's host so the
transfer target is reached through the gateway, and Referred-By likewise, so no LAN address
leaves in it. A Replaces (an attended transfer) names a dialog of the sender's leg: it becomes
the same call's dialog on the other leg, found through the dialog index in one look-up. One
that matches no call is left out rather than passed on to name nothing, or something else.
"""

from __future__ import annotations

import urllib.parse

from gateway.sip.dialog_index import DialogIndex
from gateway.sip.edge import Edge, other_side
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest
from gateway.sip.peer import Side
from gateway.sip.uri import SipUri


class TransferMapping:
    def __init__(self, edge: Edge, index: DialogIndex) -> None:
        self._edge = edge
        self._index = index

    def carry_refer_to(self, request: SipRequest, outgoing: SipRequest, to_side: Side) -> None:
        """Copy Refer-To and Referred-By onto ``outgoing``, re-homed to ``to_side``."""
        for name in ("Refer-To", "Referred-By"):
            value = request.get(name)
            if value is None:
                continue
            target = NameAddr.parse(value)
            if isinstance(target.uri, SipUri):
                uri = self._edge.uri(to_side, target.uri.user)
                if name == "Refer-To" and target.uri.headers:
                    uri.headers = self._map_uri_headers(target.uri.headers, other_side(to_side))
                target = NameAddr(target.display, uri, target.params)
            outgoing.set(name, str(target))

    def carry_replaces(self, request: SipRequest, outgoing: SipRequest, from_side: Side) -> None:
        """An INVITE with Replaces (RFC 3891): the replaced dialog, as the other leg knows it."""
        replaces = request.get("Replaces")
        if replaces is not None:
            mapped = self.map_replaces(replaces, from_side)
            if mapped is not None:
                outgoing.set("Replaces", mapped)

    def map_replaces(self, value: str, from_side: Side) -> str | None:
        """Translate a Replaces value (call-id;to-tag=..;from-tag=..) naming a dialog on
        ``from_side`` into the same call's dialog on the other side, or None if unknown.

        The tags are as the recipient sees the dialog: to-tag is the gateway's tag on the
        sender's leg, from-tag the sender's own; on the other leg they become the far party's
        tag and the gateway's tag there."""
        call_id, *params = [part.strip() for part in value.split(";")]
        tags = dict(p.split("=", 1) for p in params if "=" in p)
        extra = [p for p in params if not p.startswith(("to-tag=", "from-tag="))]
        to_tag = tags.get("to-tag")
        pair = self._index.by_dialog(from_side, call_id, to_tag) if to_tag else None
        if pair is None:
            return None
        leg = pair.leg(from_side)
        if (
            leg.call_id != call_id
            or leg.local_tag != to_tag
            or leg.remote_tag != tags.get("from-tag")
        ):
            return None
        other = pair.leg(pair.other(from_side))
        mapped = f"{other.call_id};to-tag={other.remote_tag};from-tag={other.local_tag}"
        return ";".join([mapped, *extra])

    def _map_uri_headers(self, headers: str, from_side: Side) -> str | None:
        """Headers embedded in a Refer-To URI travel on, except that a Replaces (attended
        transfer, RFC 3891 §5) names a dialog of the sender's leg and is mapped to the
        matching dialog of the other leg; one that matches nothing is left out."""
        kept = []
        for item in headers.split("&"):
            name, _, value = item.partition("=")
            if name.lower() == "replaces":
                mapped = self.map_replaces(urllib.parse.unquote(value), from_side)
                if mapped is None:
                    continue
                value = urllib.parse.quote(mapped, safe="")
            kept.append(f"{name}={value}")
        return "&".join(kept) or None
