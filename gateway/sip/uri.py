"""SIP and SIPS URIs, and the other absolute URIs SIP messages may carry.

Follows RFC 3261 §19.1 (SIP-URI components) and the §25.1 grammar (``SIP-URI``, ``userinfo``,
``hostport``, ``uri-parameters``, ``headers``, ``absoluteURI``). Parsing is strict about the
characters each component may hold, because a URI that reaches routing decisions must mean
one thing only; ``%HH`` escapes are validated but never decoded, so a URI round-trips byte for
byte and nothing is unescaped twice (RFC 4475 §3.1.1.3, §3.1.1.4).

A uri-parameter repeated with the same value (``;lr;lr``, as baresip 1.0 writes its outbound
proxy's Route) is kept once, so that URI alone does not round-trip byte for byte; repeated with
another value (``;transport=udp;transport=tcp``) it is an error: the URI would no longer mean
one thing.

URIs of schemes other than sip/sips (tel:, http:, unknown ones) parse to ``AbsoluteUri``: they are
legal in a message (RFC 4475 §3.3.2 to §3.3.4) and are kept, but never routed on.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from gateway.sip.errors import SipParseError

_ALPHANUM = string.ascii_letters + string.digits
_MARK = "-_.!~*'()"
_UNRESERVED = frozenset(_ALPHANUM + _MARK)
# §25.1: user-unreserved, the password's extra characters, param-unreserved, hnv-unreserved.
_USER_CHARS = _UNRESERVED | frozenset("&=+$,;?/")
_PASSWORD_CHARS = _UNRESERVED | frozenset("&=+$,")
_PARAM_CHARS = _UNRESERVED | frozenset("[]/:&+$")
_HEADER_CHARS = _UNRESERVED | frozenset("[]/?:+$")
_HEX = frozenset(string.hexdigits)

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Hostnames are checked liberally (underscores occur in the wild); IPv4 is a subset of this.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?")
_IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_FORBIDDEN_IN_URI = re.compile(r'[ \t\r\n<>"]')
# absoluteURI characters are printable ASCII (§25.1 uric); anything else is refused.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x21-\x7e]")


def _escaped_pattern(allowed: frozenset[str]) -> re.Pattern[str]:
    """A pattern matching a run of ``allowed`` characters and well-formed ``%HH`` escapes."""
    return re.compile("(?:[" + re.escape("".join(sorted(allowed))) + "]|%[0-9A-Fa-f]{2})*+")


# One pattern per character set _check_escaped is called with, built once.
_ESCAPED: dict[frozenset[str], re.Pattern[str]] = {
    chars: _escaped_pattern(chars)
    for chars in (_USER_CHARS, _PASSWORD_CHARS, _PARAM_CHARS, _HEADER_CHARS)
}


def _check_escaped(text: str, allowed: frozenset[str], what: str) -> None:
    """Reject characters outside ``allowed`` and malformed ``%HH`` escapes."""
    pattern = _ESCAPED.get(allowed)
    if pattern is not None and pattern.fullmatch(text) is not None:
        return
    # Invalid (or an unusual character set): walk it to name the offending character.
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise SipParseError(f"bad %-escape in URI {what}")
            i += 3
            continue
        if char not in allowed:
            raise SipParseError(f"character {char!r} not allowed in URI {what}")
        i += 1


def parse_params(text: str, what: str = "parameter") -> dict[str, str | None]:
    """Split ``;name[=value]`` URI parameters (§19.1.1); names kept as written."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    seen: dict[str, str | None] = {}
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty URI {what} name")
        _check_escaped(name, _PARAM_CHARS, what)
        if sep:
            if not value:
                raise SipParseError(f"empty value for URI {what} {name!r}")
            _check_escaped(value, _PARAM_CHARS, what)
        lowered = name.lower()
        if lowered in seen:
            _check_repeat(seen[lowered], value if sep else None, name, what)
            continue
        seen[lowered] = value if sep else None
        params[name] = value if sep else None
    return params


def _check_repeat(first: str | None, again: str | None, name: str, what: str) -> None:
    """Accept a parameter repeated with the same meaning; refuse one with another value.

    Phones repeat parameters (baresip 1.0's ``outbound="sip:GW;lr"`` gives ``;lr;lr``): the
    same flag or value twice means what it means once, and the repeat is dropped. Two values
    for one parameter (``transport=udp;transport=tcp``) would route ambiguously. Values
    compare case-insensitively, as §19.1.4 compares URI parameters.
    """
    if first is None and again is None:
        return
    if first is not None and again is not None and first.lower() == again.lower():
        return
    raise SipParseError(f"conflicting duplicate URI {what} {name!r}")


def format_params(params: dict[str, str | None]) -> str:
    """Serialise parameters as ``;name=value`` / ``;name`` in their order."""
    return "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params.items()
    )


def _lookup(params: dict[str, str | None], name: str) -> tuple[bool, str | None]:
    lowered = name.lower()
    for key, value in params.items():
        if key.lower() == lowered:
            return True, value
    return False, None


@dataclass(slots=True)
class SipUri:
    """A sip: or sips: URI (§19.1). Components hold the text as written, escapes undecoded."""

    #: "sip" or "sips", lowercased.
    scheme: str
    #: The user part (may contain ';' as in RFC 4475 §3.1.1.9), or None without userinfo.
    user: str | None
    #: The password part of userinfo (deprecated by §19.1.1 but legal), or None.
    password: str | None
    #: Hostname, IPv4 address or IPv6 reference with its brackets ("[2001:db8::1]").
    host: str
    #: Port, or None when absent (the default depends on transport and scheme).
    port: int | None = None
    #: uri-parameters in order, names as written; value None for a value-less one ("lr").
    params: dict[str, str | None] = field(default_factory=dict)
    #: Raw text after '?' (escaped headers), or None.
    headers: str | None = None

    def param(self, name: str) -> str | None:
        """Value of a parameter, name compared case-insensitively (§19.1.4)."""
        return _lookup(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        """Whether the parameter is present, with or without a value."""
        return _lookup(self.params, name)[0]

    @property
    def host_port(self) -> tuple[str, int | None]:
        """The host without IPv6 brackets, and the port (None when absent)."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            dict(self.params),
            self.headers,
        )

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user is not None:
            text += self.user
            if self.password is not None:
                text += f":{self.password}"
            text += "@"
        text += self.host
        if self.port is not None:
            text += f":{self.port}"
        text += format_params(self.params)
        if self.headers is not None:
            text += f"?{self.headers}"
        return text


@dataclass(slots=True)
class AbsoluteUri:
    """A URI of another scheme (tel:, http:, unknown), kept opaque (§25.1 absoluteURI)."""

    #: The scheme as written.
    scheme: str
    #: Everything after the first ':'.
    opaque: str

    def copy(self) -> AbsoluteUri:
        return AbsoluteUri(self.scheme, self.opaque)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


def parse_port(text: str, what: str = "port") -> int:
    """A decimal port 0..65535 (§25.1 ``port = 1*DIGIT``, bounded by the transport)."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"bad {what} {text!r}")
    return int(text)


def check_host(host: str, what: str = "URI") -> None:
    """Accept a hostname, IPv4 address or bracketed IPv6 reference (§25.1 ``host``)."""
    if _HOSTNAME.fullmatch(host) or _IPV6_REFERENCE.fullmatch(host):
        return
    raise SipParseError(f"bad host {host!r} in {what}")


def _parse_sip_uri(scheme: str, rest: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    # The user part may hold ';', '?' and ':' but never '@' (§25.1), so the first '@' ends it.
    userinfo, at, hostpart = rest.partition("@")
    if at:
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise SipParseError("empty user part in SIP URI")
        _check_escaped(user, _USER_CHARS, "user part")
        if colon:
            _check_escaped(pw, _PASSWORD_CHARS, "password")
            password = pw
    else:
        hostpart = userinfo
    hostpart, question, headers = hostpart.partition("?")
    if question:
        if not headers:
            raise SipParseError("empty headers after '?' in SIP URI")
        for header in headers.split("&"):
            name, equals, value = header.partition("=")
            if not name or not equals:
                raise SipParseError(f"bad URI header {header!r}")
            _check_escaped(name, _HEADER_CHARS, "header name")
            _check_escaped(value, _HEADER_CHARS, "header value")
    hostport, _, param_text = hostpart.partition(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise SipParseError("unterminated IPv6 reference in SIP URI")
        host, port_text = hostport[: close + 1], hostport[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise SipParseError("bad text after IPv6 reference in SIP URI")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(hostport[close + 1 :])
    else:
        host, colon, port_text = hostport.partition(":")
        has_port = bool(colon)
    if not host:
        raise SipParseError("missing host in SIP URI")
    check_host(host)
    port = parse_port(port_text, "URI port") if has_port else None
    params = parse_params(param_text) if hostpart.find(";") >= 0 else {}
    return SipUri(scheme, user, password, host, port, params, headers if question else None)


def parse_uri(text: str) -> SipUri | AbsoluteUri:
    """Parse a URI as it appears in a Request-URI or inside ``<>`` (§25.1).

    Raises SipParseError when the text is not a URI, or is a malformed sip:/sips: URI.
    """
    if not text:
        raise SipParseError("empty URI")
    if _FORBIDDEN_IN_URI.search(text):
        raise SipParseError(f"whitespace, quote or angle bracket inside URI {text[:60]!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise SipParseError(f"not a URI: {text[:60]!r}")
    if not rest:
        raise SipParseError(f"empty {scheme}: URI")
    lowered = scheme.lower()
    if lowered in ("sip", "sips"):
        return _parse_sip_uri(lowered, rest)
    if _NOT_PRINTABLE_ASCII.search(rest):
        raise SipParseError(f"control or non-ASCII character in {scheme}: URI")
    return AbsoluteUri(scheme, rest)
