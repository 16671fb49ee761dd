"""What a banned LAN source sends that can be dropped before it costs a parse.

A banned LAN source's requests are refused by the policy after parsing (``PolicyEngine.
check_request``), with one exception: an INVITE to an emergency number always passes
(invariant 5, docs/design.md §3.5), which is why bans on the LAN side cannot be applied to the
raw datagram wholesale. Responses from a banned source are still read (they answer requests
the gateway sent). Everything else would be parsed only to be dropped: under a flood from a
banned scanner that parse is most of the signalling process's time.

:func:`droppable_when_banned` reads only the first line (RFC 3261 §7.1 Request-Line, §7.2
Status-Line) and answers True only when the datagram is certainly neither a response nor an
INVITE whose Request-URI user (§19.1.1; a ``tel:`` number, RFC 3966) could be an emergency
number; whenever it cannot tell (escapes, parameters in the user part, odd layout), it answers
False and the core parses and decides as before. Sans-IO: bytes in, a bool out.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["droppable_when_banned"]


def droppable_when_banned(data: bytes, is_emergency: Callable[[str], bool]) -> bool:
    """True when ``data`` from a banned LAN source would be refused whatever it says."""
    end = data.find(b"\n", 0, 4096)
    first = data[: end if end >= 0 else 4096].strip()
    if not first:
        # Leading blank lines (tolerated before a message): look no further, let the core see.
        return not data.strip()
    parts = first.split()
    token = parts[0].upper()
    if token.startswith(b"SIP/"):
        return False  # a response: the core checks it answers one of ours
    if token != b"INVITE":
        return True  # any other request, or garbage: refused after parsing too
    if len(parts) < 2:
        return True  # no Request-URI: a malformed message, refused as such
    user = _uri_user(parts[1])
    if user is None:
        return False
    return user == "" or not is_emergency(user)


def _uri_user(uri: bytes) -> str | None:
    """The Request-URI user as the core would see it; "" for none; None when unsure."""
    scheme, colon, rest = uri.partition(b":")
    if not colon:
        return None
    scheme = scheme.lower()
    if scheme in (b"sip", b"sips"):
        if b"@" not in rest:
            return ""  # no user part: nothing to call, emergency or not
        raw = rest.split(b"@", 1)[0]
    elif scheme == b"tel":
        raw = rest.split(b";", 1)[0]
    else:
        return ""  # the core knows users of sip, sips and tel URIs only
    if not raw or any(c in raw for c in b'%;:?<>\\"'):
        return None  # escapes, parameters or a password: leave it to the parser
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None
