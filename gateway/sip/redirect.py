"""Redirects (3xx) relayed to the caller with targets that lead back through the gateway
(RFC 3261 §8.1.3.4, §20.10, §21.3; RFC 3966 §5.1.1; RFC 7092 §3.1).

The gateway does not follow a redirect itself: it relays the 3xx to the caller, as a
B2BUA relays any final response, with each Contact re-homed to the gateway's own side. A
provider's ``Contact: <sip:+15559876543@redirect.provider.example>`` reaches the phone as
``<sip:+15559876543@<gateway LAN address>:<port>>``, so the phone's new INVITE comes back to
the gateway and goes through admission (allowlists, dial plan, caps) like any dialled number:
a redirect is never a way around the dial plan, and the phone never learns a WAN host. The
other way round (a phone deflects a provider's call) the targets become the provider's
domain, so no LAN address leaves.

Only the user part of each target is kept (the number or extension to dial); its host, port,
URI parameters and headers are the far side's and are dropped, and so are the Contact's header
parameters other than ``q`` and ``expires`` (§20.10). A target with no usable user part cannot
be re-homed and is left out; when none is left, the caller gets the 3xx without a Contact and
treats it as a failure (§8.1.3.4).
"""

from __future__ import annotations

import re

from gateway.sip.edge import Edge, uri_user
from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipResponse
from gateway.sip.peer import Side
from gateway.sip.uri import AbsoluteUri

#: A 3xx with a long Contact list is someone's probe, not a redirect: the first few are enough.
MAX_REDIRECT_TARGETS = 5

#: Header parameters a redirect's Contact keeps (§20.10: preference and validity).
_KEPT_PARAMS = ("q", "expires")

# A number or an extension: digits, letters, '+', '*', '.', '_', '-' and %HH escapes; nothing
# that could carry a URI parameter (';'), a password (':') or headers ('?') into ours.
_DIALLABLE = re.compile(r"(?:[A-Za-z0-9+*._\-]|%[0-9A-Fa-f]{2}){1,64}")
# RFC 3966 §5.1.1: visual separators mean nothing to a dial plan.
_VISUAL_SEPARATORS = re.compile(r"[\-.()]")


def redirect_contacts(response: SipResponse, edge: Edge, caller_side: Side) -> list[str]:
    """The Contact values of a 3xx relayed to the caller on ``caller_side``: each target's
    user part at the gateway's URI on that side, with ``q`` and ``expires`` kept."""
    try:
        contacts = response.contacts
    except SipError:
        return []  # an unparsable Contact list redirects nowhere
    out: list[str] = []
    seen: set[str] = set()
    for contact in contacts:
        user = _target_user(contact)
        if user is None or user in seen:
            continue
        seen.add(user)
        params: dict[str, str | None] = {}
        for name in _KEPT_PARAMS:
            value = contact.param(name)
            if value is not None and _is_param_value(value):
                params[name] = value
        out.append(str(NameAddr(None, edge.uri(caller_side, user), params)))
        if len(out) == MAX_REDIRECT_TARGETS:
            break
    return out


def _target_user(contact: NameAddr) -> str | None:
    """The number or extension a redirect target names, or None when it names none."""
    user = uri_user(contact.uri)
    if user is None:
        return None
    if isinstance(contact.uri, AbsoluteUri):  # tel: (uri_user reads no other scheme)
        user = _VISUAL_SEPARATORS.sub("", user)
    return user if _DIALLABLE.fullmatch(user) else None


def _is_param_value(value: str) -> bool:
    """q (qvalue) and expires (delta-seconds) are short numbers (§25.1)."""
    return re.fullmatch(r"[0-9]{1,10}(?:\.[0-9]{0,3})?", value) is not None
