"""Keep-alive requests phones send their outbound proxy, which the gateway answers itself.

Cisco/Linksys SPA ATAs with NAT keep-alive on (their default message is ``$NOTIFY``) send an
out-of-dialog NOTIFY with ``Event: keep-alive`` to their proxy every keep-alive interval, only
to hold a NAT binding open. No subscription exists (a NOTIFY outside any subscription would get
481 under RFC 6665 §4.1.3; the phones ignore the answer either way) and "keep-alive" is no
registered event package: the request means nothing beyond the gateway, and relaying it would
send the provider one request per phone every few seconds. The gateway answers it 200.

OPTIONS pings to the gateway itself (``$OPTIONS``, RFC 3261 §11) and CRLF keep-alives
(RFC 5626 §4.4) are answered elsewhere already.
"""

from __future__ import annotations

from gateway.sip.message import SipRequest

#: The event type phones put in a keep-alive NOTIFY; compared without regard to case, since
#: firmwares differ in how they write it.
KEEPALIVE_EVENT = "keep-alive"


def is_keepalive_notify(request: SipRequest) -> bool:
    """Whether ``request`` is a phone's keep-alive NOTIFY: out of dialog (no To tag), with
    ``Event: keep-alive`` (parameters ignored)."""
    if request.method != "NOTIFY" or request.to.tag is not None:
        return False
    event = request.get("Event")
    if event is None:
        return False
    return event.split(";", 1)[0].strip(" \t").lower() == KEEPALIVE_EVENT
