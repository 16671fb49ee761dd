"""Header names and the structured header values a B2BUA reads: name-addr, Via, CSeq.

Follows RFC 3261 §7.3 (header field format, compact forms §7.3.3, comma-separated lists §7.3.1),
§20 (the header fields: From §20.20, To §20.39, Contact §20.10, Via §20.42, CSeq §20.16) and the
§25.1 grammar for ``name-addr``/``addr-spec``, ``via-parm`` and ``generic-param``. Compact forms
registered after RFC 3261 (RFC 3515 r, RFC 3892 b, RFC 6665 o/u, RFC 4028 x, RFC 3841 a/j/d,
RFC 8224 y/n) are expanded too.

Parsing allows the linear whitespace the grammar allows (around ';', '=', '/' and ':' in Via,
RFC 4475 §3.1.1.1) and nothing more: empty parameters, unbalanced quotes, spaces inside ``<>``
and unquoted display names with non-token characters are errors (RFC 4475 §3.1.2.1, §3.1.2.6,
§3.1.2.14, §3.1.2.15). Parameter values are kept as written, quotes included, so they
round-trip.

Liberal where the meaning is unambiguous (the quirks of real phones): a parameter repeated with
the same value is kept once; a repeat with another value is still an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.sip.errors import SipParseError
from gateway.sip.uri import AbsoluteUri, SipUri, check_host, format_params, parse_port, parse_uri


def words(text: str) -> list[str]:
    """Split a space-separated word list (long name tables read better this way)."""
    return text.split()


COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "e": "Content-Encoding",
    "k": "Supported",
    "s": "Subject",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

_KNOWN_NAMES = words(
    "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
    "Authentication-Info Authorization Call-ID Call-Info Contact Content-Disposition "
    "Content-Encoding Content-Language Content-Length Content-Type CSeq Date Error-Info Event "
    "Expires From Identity Identity-Info In-Reply-To Max-Forwards MIME-Version Min-Expires "
    "Min-SE Organization P-Asserted-Identity P-Preferred-Identity Path Priority Privacy "
    "Proxy-Authenticate Proxy-Authorization Proxy-Require RAck Reason Record-Route Refer-To "
    "Referred-By Reject-Contact Replaces Reply-To Request-Disposition Require Retry-After Route "
    "RSeq Security-Client Security-Server Security-Verify Server Service-Route Session-Expires "
    "SIP-ETag SIP-If-Match Subject Subscription-State Supported Timestamp To Unsupported "
    "User-Agent Via Warning WWW-Authenticate"
)
_CANONICAL: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES}
_CANONICAL.update(COMPACT_FORMS)

#: Headers whose value is a comma-separated list (§7.3.1), split by SipMessage.get_all().
#: Authorization-style headers, Date and the like are never split: their commas are not
#: element separators.
LIST_HEADERS: frozenset[str] = frozenset(
    words(
        "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
        "Call-Info Contact Content-Encoding Content-Language Error-Info In-Reply-To Path "
        "P-Asserted-Identity P-Preferred-Identity Privacy Proxy-Require Reason Record-Route "
        "Reject-Contact Request-Disposition Require Route Security-Client Security-Server "
        "Security-Verify Service-Route Supported Unsupported Via Warning"
    )
)

TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN = re.compile(TOKEN)
_DISPLAY_TOKENS = re.compile(rf"{TOKEN}(?:[ \t]+{TOKEN})*")
# gen-value = token / host / quoted-string; a host adds ':' and '[]' (IPv6) to token chars.
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_WS = " \t"


# Header names as they usually arrive, all tokens: a set hit is cheaper than the pattern.
_KNOWN_TOKENS: frozenset[str] = frozenset(_KNOWN_NAMES) | frozenset(_CANONICAL)


def is_token(text: str) -> bool:
    """Whether ``text`` is a §25.1 token (methods, header names, parameter names)."""
    return text in _KNOWN_TOKENS or _TOKEN.fullmatch(text) is not None


# Names already in canonical form map to themselves: most names arrive that way, and an exact
# hit spares lowercasing every header name of every message.
_ALREADY_CANONICAL: dict[str, str] = {name: name for name in _KNOWN_NAMES}


def canonical_name(name: str) -> str:
    """The long, conventionally cased form of a header name; unknown names stay as written."""
    return _ALREADY_CANONICAL.get(name) or _CANONICAL.get(name.lower(), name)


# The rest of a quoted-string after its opening quote: qdtext or quoted-pairs (a backslash
# before CR or LF is not one), up to the closing quote. Possessive, so a failure is linear.
_QUOTED_REST = re.compile(r'(?:[^"\\]|\\[^\r\n])*+"')


def _scan_quoted(text: str, start: int) -> int:
    """Index just past the quoted-string opening at ``start`` (§25.1 quoted-pair allowed)."""
    match = _QUOTED_REST.match(text, start + 1)
    if match is None:
        raise SipParseError("unterminated quoted string")
    return match.end()


_LIST_SPECIAL = re.compile(r'[",<>]')


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value (§7.3.1), ignoring commas in quotes or ``<>``.

    Elements are stripped of surrounding whitespace; empty elements are kept as "" so that a
    strict caller can reject them (RFC 4475 §3.1.2.1). An all-blank value gives [].
    """
    if not value.strip(_WS):
        return []
    if '"' not in value and "<" not in value:
        # Nothing can hide a comma: the common case (Allow, Supported, a bare Via list).
        return [item.strip(_WS) for item in value.split(",")]
    items: list[str] = []
    start = 0
    in_angle = False
    search = _LIST_SPECIAL.search
    match = search(value)
    while match is not None:
        char = match.group()
        i = match.start()
        if char == '"':
            try:
                i = _scan_quoted(value, i)
            except SipParseError:
                break  # unbalanced quote: the rest is one element, its parser rejects it
            match = search(value, i)
            continue
        if char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif not in_angle:
            items.append(value[start:i].strip(_WS))
            start = i + 1
        match = search(value, i + 1)
    items.append(value[start:].strip(_WS))
    return items


def parse_header_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` with the LWS §25.1 allows around ';' and '='.

    Quoted values keep their quotes. Empty or duplicated parameters are errors.
    """
    params: dict[str, str | None] = {}
    seen: set[str] = set()
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            return params
        if text[i] != ";":
            raise SipParseError(f"unexpected {text[i : i + 20]!r} in {what} parameters")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        match = _TOKEN.match(text, i)
        if match is None:
            raise SipParseError(f"empty or malformed parameter in {what}")
        name = match.group()
        i = match.end()
        while i < n and text[i] in _WS:
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _WS:
                i += 1
            if i < n and text[i] == '"':
                end = _scan_quoted(text, i)
                value = text[i:end]
                i = end
            else:
                value_match = _GEN_VALUE.match(text, i)
                if value_match is None:
                    raise SipParseError(f"missing value for parameter {name!r} in {what}")
                value = value_match.group()
                i = value_match.end()
        lowered = name.lower()
        if lowered in seen:
            # The same parameter twice with the same value (``;rport;rport``) means what it
            # means once: the repeat is dropped. Two tags or two branches would let peers
            # disagree on which one identifies what.
            if _find_param(params, lowered) == (True, value):
                continue
            raise SipParseError(f"conflicting duplicate parameter {name!r} in {what}")
        seen.add(lowered)
        params[name] = value


def _find_param(params: dict[str, str | None], name: str) -> tuple[bool, str | None]:
    lowered = name.lower()
    for key, value in params.items():
        if key.lower() == lowered:
            return True, value
    return False, None


def _replace_param(params: dict[str, str | None], name: str, value: str | None) -> None:
    lowered = name.lower()
    for key in list(params):
        if key.lower() == lowered:
            params[key] = value
            return
    params[name] = value


def unquote(text: str) -> str:
    """The content of a quoted-string with quoted-pairs resolved; other text unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text


@dataclass(slots=True)
class NameAddr:
    """A From, To, Contact, Route, Record-Route or Refer-To value (§20.10, §20.20, §20.39)."""

    #: Display name as written: quotes kept when quoted, None when absent.
    display: str | None
    #: The address; only sip:/sips: URIs are routable.
    uri: SipUri | AbsoluteUri
    #: Header parameters (tag, expires, q, ...) in order, names as written, values as written.
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The tag parameter (§19.3), or None."""
        return _find_param(self.params, "tag")[1]

    @property
    def display_name(self) -> str | None:
        """The display name with quotes and quoted-pairs removed."""
        return None if self.display is None else unquote(self.display)

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    def set_param(self, name: str, value: str | None) -> None:
        """Set a header parameter, replacing an existing one of any case."""
        _replace_param(self.params, name, value)

    def with_tag(self, tag: str) -> NameAddr:
        """A copy carrying ``tag`` (replacing any tag present)."""
        result = self.copy()
        result.set_param("tag", tag)
        return result

    def copy(self) -> NameAddr:
        return NameAddr(self.display, self.uri.copy(), dict(self.params))

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse ``( name-addr / addr-spec ) *( SEMI param )`` (§25.1).

        In the addr-spec form, everything after the URI's first ';' is a header parameter, and a
        URI holding ',' or '?' is an error: it must be enclosed in ``<>`` (§20, §20.10).
        """
        value = text.strip(_WS)
        if not value:
            raise SipParseError("empty address")
        if value[0] == '"':
            end = _scan_quoted(value, 0)
            rest = value[end:].lstrip(_WS)
            if not rest.startswith("<"):
                raise SipParseError("quoted display name not followed by <URI>")
            return cls._parse_bracketed(value[:end], rest)
        angle = value.find("<")
        if angle >= 0:
            display = value[:angle].strip(_WS)
            if display and not _DISPLAY_TOKENS.fullmatch(display):
                raise SipParseError(
                    f"display name {display[:40]!r} has characters that need quoting"
                )
            return cls._parse_bracketed(display or None, value[angle:])
        uri_text, semi, param_text = value.partition(";")
        uri_text = uri_text.rstrip(_WS)
        if "," in uri_text or "?" in uri_text:
            raise SipParseError("a URI with ',' or '?' must be enclosed in <>")
        if " " in uri_text or "\t" in uri_text:
            raise SipParseError("whitespace inside address")
        return cls(None, parse_uri(uri_text), parse_header_params(semi + param_text, "address"))

    @classmethod
    def _parse_bracketed(cls, display: str | None, rest: str) -> NameAddr:
        close = rest.find(">")
        if close < 0:
            raise SipParseError("'<' without '>' in address")
        uri_text = rest[1:close]
        if " " in uri_text or "\t" in uri_text:
            raise SipParseError("whitespace inside <URI>")
        return cls(display, parse_uri(uri_text), parse_header_params(rest[close + 1 :], "address"))

    def __str__(self) -> str:
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri}>{format_params(self.params)}"


_SENT_PROTOCOL = re.compile(
    rf"({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+", re.ASCII
)


@dataclass(slots=True)
class Via:
    """One Via header value (§20.42): sent-protocol, sent-by and via-params."""

    #: Transport token, uppercased ("UDP", "TCP", "TLS", "SCTP", "WS", unknown ones).
    transport: str
    #: sent-by host as written; IPv6 keeps its brackets.
    host: str
    #: sent-by port, or None when absent.
    port: int | None = None
    #: via-params in order (branch, received, rport, maddr, ttl, extensions), values as written.
    params: dict[str, str | None] = field(default_factory=dict)
    #: protocol-name/protocol-version, normally "SIP/2.0".
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The branch parameter (§8.1.1.7), or None (RFC 2543 peers)."""
        return _find_param(self.params, "branch")[1]

    @property
    def received(self) -> str | None:
        """The received parameter a server added (§18.2.1), or None."""
        return _find_param(self.params, "received")[1]

    @property
    def has_rport(self) -> bool:
        """Whether the client asked for symmetric response routing (RFC 3581)."""
        return _find_param(self.params, "rport")[0]

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (RFC 3581 §4), or None when absent or empty."""
        value = _find_param(self.params, "rport")[1]
        return int(value) if value is not None and value.isdigit() else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """sent-by host without IPv6 brackets, and port."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    def set_param(self, name: str, value: str | None) -> None:
        """Set a via-param (e.g. received, rport), replacing an existing one of any case."""
        _replace_param(self.params, name, value)

    def copy(self) -> Via:
        return Via(self.transport, self.host, self.port, dict(self.params), self.protocol)

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm, with the SWS §25.1 allows around '/', ':', ';' and '='."""
        value = text.strip(_WS)
        match = _SENT_PROTOCOL.match(value)
        if match is None:
            raise SipParseError(f"malformed Via sent-protocol in {value[:60]!r}")
        name, version, transport = match.groups()
        rest = value[match.end() :]
        semi = rest.find(";")
        sent_by = (rest if semi < 0 else rest[:semi]).strip(_WS)
        param_text = "" if semi < 0 else rest[semi:]
        if sent_by.startswith("["):
            close = sent_by.find("]")
            if close < 0:
                raise SipParseError("unterminated IPv6 reference in Via")
            host, port_text = sent_by[: close + 1], sent_by[close + 1 :].strip(_WS)
        else:
            host, colon, port_text = sent_by.partition(":")
            host = host.strip(_WS)
            port_text = ":" + port_text.strip(_WS) if colon else ""
        if not host:
            raise SipParseError("missing sent-by host in Via")
        check_host(host, "Via")
        port: int | None = None
        if port_text:
            if not port_text.startswith(":"):
                raise SipParseError(f"bad sent-by {sent_by!r} in Via")
            port = parse_port(port_text[1:].strip(_WS), "Via port")
        params = parse_header_params(param_text, "Via")
        return cls(transport.upper(), host, port, params, f"{name}/{version}")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"


#: Methods of RFC 3261 and its extensions the gateway knows (RFC 3262, 3265, 3311, 3428, 3515,
#: 3903, 6086); a CSeq naming one of them in another case means that method.
KNOWN_METHODS: frozenset[str] = frozenset(
    words(
        "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK UPDATE INFO SUBSCRIBE NOTIFY REFER MESSAGE "
        "PUBLISH"
    )
)

_CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+({TOKEN})[ \t]*")
#: CSeq numbers must be below 2**31 (§8.1.1.5); a larger one is an error (RFC 4475 §3.1.2.4).
CSEQ_LIMIT = 2**31


@dataclass(slots=True)
class CSeq:
    """The CSeq header (§20.16): sequence number and method."""

    #: Sequence number, 0 <= seq < 2**31.
    seq: int
    #: Method, case-sensitive like the request method.
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        match = _CSEQ.fullmatch(text)
        if match is None:
            raise SipParseError(f"malformed CSeq {text[:40]!r}")
        digits = match.group(1)
        # Compare lengths first so a 10,000-digit number is not converted to an int.
        if len(digits.lstrip("0")) > 10 or int(digits) >= CSEQ_LIMIT:
            raise SipParseError("CSeq number too large (must be below 2**31)")
        method = match.group(2)
        if method not in KNOWN_METHODS and method.upper() in KNOWN_METHODS:
            # Methods are case-sensitive (§7.1), but a CSeq saying "invite" on an INVITE can
            # mean nothing else (seen from old ATA firmware); the header text stays as sent,
            # so the answer echoes it.
            method = method.upper()
        return cls(int(digits), method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
