"""Stateless checks of a request before any transaction exists (RFC 3261 §8.2.1-§8.2.3,
§16.3 step 3 for Max-Forwards, RFC 3262, 3265/6665, 3311, 3428, 3515, 6086 for the methods).

A request the gateway cannot carry is answered here, once, and costs no transaction: 501 for
an unknown method (with Allow), 416 for a URI scheme other than sip, sips or tel, 420 for an
option tag it does not support (with Unsupported), 483 when Max-Forwards ran out, 415 and 406
for bodies other than SDP.
"""

from __future__ import annotations

from typing import Protocol

from gateway.sip.edge import gateway_warning
from gateway.sip.message import SipRequest, SipResponse, make_response
from gateway.sip.uri import AbsoluteUri, SipUri

#: Methods the gateway carries between the legs.
SUPPORTED_METHODS = (
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
)
ALLOW = ", ".join(SUPPORTED_METHODS)
#: Option tags the gateway understands in Require (RFC 3261 §8.2.2.3).
SUPPORTED_EXTENSIONS = frozenset({"100rel", "timer", "replaces", "norefersub", "path"})
#: Accept values under which an SDP body is acceptable (§8.2.3).
_SDP_ACCEPTED = frozenset({"application/sdp", "application/*", "*/*"})


class _Addressed(Protocol):
    def is_for_gateway(self, request: SipRequest) -> bool: ...


def precheck(request: SipRequest, edge: _Addressed) -> SipResponse | None:
    """The answer to a request that fails a stateless check, or None to go on."""
    method = request.method
    if method not in SUPPORTED_METHODS:
        response = make_response(request, 501)
        response.add("Allow", ALLOW)
        return response
    uri = request.uri
    if not isinstance(uri, SipUri) and not (
        isinstance(uri, AbsoluteUri) and uri.scheme.lower() == "tel"
    ):
        return make_response(request, 416)
    if method in ("ACK", "CANCEL"):
        return None
    unknown = [
        tag for tag in request.get_all("Require") if tag.strip().lower() not in SUPPORTED_EXTENSIONS
    ]
    if unknown:
        response = make_response(request, 420)
        response.add("Unsupported", ", ".join(t.strip() for t in unknown))
        return response
    max_forwards = request.max_forwards
    if max_forwards is not None and max_forwards <= 0 and not edge.is_for_gateway(request):
        return make_response(request, 483)
    sdp_method = method in ("INVITE", "UPDATE", "PRACK")
    if request.body and sdp_method and request.content_type != "application/sdp":
        response = make_response(request, 415)
        response.add("Accept", "application/sdp")
        return response
    if method == "INVITE":
        accept = request.get_all("Accept")
        if accept and not any(a.split(";")[0].strip().lower() in _SDP_ACCEPTED for a in accept):
            response = make_response(request, 406)
            response.add("Warning", gateway_warning("only application/sdp bodies are supported"))
            return response
    return None
