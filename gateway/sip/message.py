"""SIP requests and responses: parsing a datagram, validating it, serialising it.

Follows RFC 3261 §7 (message format: start lines §7.1/§7.2, headers and folding §7.3, bodies
§7.4, leading CRLFs §7.5), §8.1.1 (mandatory headers), §8.2.6 (building a response), §18.3
(datagram framing: Content-Length bytes of body, trailing octets ignored) and the §25.1 grammar,
checked against the RFC 4475 torture messages.

Header text is decoded as UTF-8 with ``surrogateescape`` so odd bytes (NUL in a quoted display
name, non-UTF-8 garbage) neither crash the parser nor change on the way out. Bodies stay bytes.

Choices where the RFCs leave room:
- A Date header is never interpreted (a B2BUA does not use it), so RFC 4475 §3.1.2.12 is accepted.
- A datagram without the empty line after its headers is taken to end with its headers
  (RFC 4475 §3.1.2.15 as archived); on a stream the framer waits instead.
- An unknown URI scheme in the Request-URI parses (to AbsoluteUri); the TU answers 416.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import lru_cache
from typing import Self

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    KNOWN_METHODS,
    LIST_HEADERS,
    TOKEN,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    is_token,
    split_header_list,
)
from gateway.sip.reasons import default_reason
from gateway.sip.uri import AbsoluteUri, SipUri, parse_uri

SIP_VERSION = "SIP/2.0"

#: Headers that may appear once only (§7.3.1, §20); a second one is a 400 (RFC 4475 §3.3.8).
SINGLE_HEADERS: tuple[str, ...] = (
    "Call-ID",
    "From",
    "To",
    "CSeq",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
)

#: §8.1.1: every request carries these.
MANDATORY_HEADERS: tuple[str, ...] = ("Via", "From", "To", "Call-ID", "CSeq")

# The same names with their keys in a message's header index.
_SINGLE_KEYS = tuple((name, name.lower()) for name in SINGLE_HEADERS)
_MANDATORY_KEYS = tuple((name, name.lower()) for name in MANDATORY_HEADERS)

_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_NO_VALUES: list[str] = []
# One header line: CRLF, token name, optional blanks, colon, and the value after its leading
# blanks (§7.3.1). Trailing blanks are stripped afterwards: a lazy match up to them would cost
# quadratic time on a value full of spaces.
_HEADER_LINE = re.compile(rf"\r\n({TOKEN})[ \t]*:[ \t]*([^\r\n]*)")
_CONTENT_TYPE = re.compile(r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)")
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


def _decode(data: bytes) -> str:
    return data.decode(_ENCODING, _ERRORS)


def _encode(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


@lru_cache(maxsize=256)
def _index_key(name: str) -> str:
    # Callers ask by constant names ("Via", "v", "call-id"): resolve each spelling once.
    return canonical_name(name).lower()


def _check_header_value(value: str) -> None:
    # A CR or LF in a value would let one header smuggle another onto the wire.
    if "\r" in value or "\n" in value:
        raise ValueError("header value must not contain CR or LF")


class SipMessage(ABC):
    """Headers and body shared by requests and responses (§7).

    ``headers`` keeps wire order with canonical names; a line holding a comma list stays one
    entry, so unknown headers and odd values are forwarded exactly as received.

    Lookups go through an index by lowercased name, and the typed accessors (``cseq``,
    ``vias``, ``from_``, ``to``, ``contacts``, ``routes``, ``record_routes``) parse once and
    keep the result: validating a message already parses all of them, and the transaction
    layer and the B2BUA read them again and again. Both are dropped whenever the headers
    change through ``set``, ``add``, ``prepend``, ``remove``, ``remove_first`` or by assigning
    ``headers``; so change headers only that way, not by editing the list in place (a
    change of its length is noticed, a line replaced in place is not). The parsed values are
    shared by every reader: ``copy()`` one (or use ``with_tag``) before changing it.
    """

    def __init__(self, headers: Iterable[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self._headers: list[tuple[str, str]] = [
            (canonical_name(name), value) for name, value in (headers or ())
        ]
        self._changed()
        #: The body, exactly Content-Length octets.
        self.body: bytes = body

    def _changed(self) -> None:
        # Whatever was derived from the header lines no longer holds.
        self._derived_from = len(self._headers)
        self._index: dict[str, list[str]] | None = None
        self._cseq: CSeq | None = None
        self._vias: list[Via] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._contacts: list[NameAddr] | None = None
        self._routes: list[NameAddr] | None = None
        self._record_routes: list[NameAddr] | None = None

    def _check_fresh(self) -> None:
        # A line appended, inserted or deleted on the list itself, against the class note,
        # still must not leave stale answers behind.
        if len(self._headers) != self._derived_from:
            self._changed()

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(canonical name, unfolded value) in wire order. Read freely; see the class note."""
        return self._headers

    @headers.setter
    def headers(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers
        self._changed()

    # -- raw header access ---------------------------------------------------------------

    def _values(self, name: str) -> list[str]:
        """The values of ``name`` in order; the index's own list, not to be changed."""
        return self._header_index().get(_index_key(name), _NO_VALUES)

    def _header_index(self) -> dict[str, list[str]]:
        """Values by lowercased canonical name, built at the first lookup after a change."""
        index = self._index
        if index is not None and len(self._headers) == self._derived_from:
            return index
        self._check_fresh()
        index = {}
        for key, value in self._headers:
            lowered = key.lower()
            values = index.get(lowered)
            if values is None:
                index[lowered] = [value]
            else:
                values.append(value)
        self._index = index
        return index

    def get(self, name: str) -> str | None:
        """First value of a header (first list element for list headers), or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value; list headers (Via, Route, Contact, Allow ...) split at commas."""
        canonical = canonical_name(name)
        values = self._values(canonical)
        if canonical not in LIST_HEADERS:
            return list(values)
        return [item for value in values for item in split_header_list(value) if item]

    def has(self, name: str) -> bool:
        return bool(self._values(name))

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence with one, at the first one's position (append if absent)."""
        _check_header_value(value)
        canonical = canonical_name(name)
        wanted = canonical.lower()
        result: list[tuple[str, str]] = []
        placed = False
        for key, old in self.headers:
            if key.lower() == wanted:
                if not placed:
                    result.append((canonical, value))
                    placed = True
            else:
                result.append((key, old))
        if not placed:
            result.append((canonical, value))
        self.headers = result  # the setter drops the index and parsed values

    def add(self, name: str, value: str) -> None:
        """Append a header line after all others."""
        _check_header_value(value)
        self._headers.append((canonical_name(name), value))
        self._changed()

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before the first of its name (or first overall if absent).

        This is how a Via or Record-Route is pushed on top (§16.6, §8.1.1.7).
        """
        _check_header_value(value)
        canonical = canonical_name(name)
        wanted = canonical.lower()
        for index, (key, _) in enumerate(self._headers):
            if key.lower() == wanted:
                self._headers.insert(index, (canonical, value))
                break
        else:
            self._headers.insert(0, (canonical, value))
        self._changed()

    def remove(self, name: str) -> None:
        wanted = canonical_name(name).lower()
        self.headers = [(key, value) for key, value in self.headers if key.lower() != wanted]

    def remove_first(self, name: str) -> str | None:
        """Remove the first element of a header (the top Via, §8.1.3.3); return it.

        For a list header line holding several elements only the first element is removed.
        """
        wanted = canonical_name(name).lower()
        for index, (key, value) in enumerate(self._headers):
            if key.lower() != wanted:
                continue
            items = split_header_list(value) if key in LIST_HEADERS else [value]
            if len(items) > 1:
                self._headers[index] = (key, ", ".join(items[1:]))
            else:
                del self._headers[index]
            self._changed()
            return items[0] if items else value
        return None

    @abstractmethod
    def copy(self) -> Self:
        """A deep enough copy to change headers and body without touching the original."""

    # -- serialisation -------------------------------------------------------------------

    @abstractmethod
    def start_line(self) -> str:
        """The request line or status line, without CRLF."""

    def __bytes__(self) -> bytes:
        lines = [self.start_line()]
        length_written = False
        for name, value in self.headers:
            if name == "Content-Length":
                if length_written:
                    continue
                value = str(len(self.body))
                length_written = True
            lines.append(f"{name}: {value}")
        if not length_written:
            lines.append(f"Content-Length: {len(self.body)}")
        return _encode("\r\n".join(lines) + "\r\n\r\n") + self.body

    # -- typed accessors -----------------------------------------------------------------

    def _single(self, name: str) -> str:
        values = self._values(name)
        if not values:
            raise SipParseError(f"missing {name} header")
        if len(values) > 1:
            raise SipParseError(f"more than one {name} header")
        return values[0]

    @property
    def call_id(self) -> str:
        value = self._single("Call-ID").strip(" \t")
        if not value or any(char in value for char in " \t"):
            raise SipParseError("malformed Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        self._check_fresh()
        if self._cseq is None:
            self._cseq = CSeq.parse(self._single("CSeq"))
        return self._cseq

    def _parsed_vias(self) -> list[Via]:
        self._check_fresh()
        if self._vias is None:
            lines = self._values("Via")
            if not lines:
                raise SipParseError("missing Via header")
            self._vias = [Via.parse(item) for item in _strict_items(lines, "Via")]
        return self._vias

    @property
    def vias(self) -> list[Via]:
        return list(self._parsed_vias())

    @property
    def top_via(self) -> Via:
        return self._parsed_vias()[0]

    @property
    def from_(self) -> NameAddr:
        self._check_fresh()
        if self._from is None:
            self._from = NameAddr.parse(self._single("From"))
        return self._from

    @property
    def to(self) -> NameAddr:
        self._check_fresh()
        if self._to is None:
            self._to = NameAddr.parse(self._single("To"))
        return self._to

    @property
    def is_wildcard_contact(self) -> bool:
        """``Contact: *`` (§10.2.2, REGISTER only)."""
        return [value.strip(" \t") for value in self._values("Contact")] == ["*"]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; empty when absent or for the ``*`` wildcard."""
        self._check_fresh()
        if self._contacts is None:
            if self.is_wildcard_contact:
                self._contacts = []
            else:
                items = _strict_items(self._values("Contact"), "Contact")
                self._contacts = [NameAddr.parse(item) for item in items]
        return list(self._contacts)

    @property
    def routes(self) -> list[NameAddr]:
        self._check_fresh()
        if self._routes is None:
            items = _strict_items(self._values("Route"), "Route")
            self._routes = [NameAddr.parse(item) for item in items]
        return list(self._routes)

    @property
    def record_routes(self) -> list[NameAddr]:
        self._check_fresh()
        if self._record_routes is None:
            items = _strict_items(self._values("Record-Route"), "Record-Route")
            self._record_routes = [NameAddr.parse(item) for item in items]
        return list(self._record_routes)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards 0..255 (§20.22), None when absent (RFC 2543 peers)."""
        values = self._values("Max-Forwards")
        if not values:
            return None
        if len(values) > 1:
            raise SipParseError("more than one Max-Forwards header")
        return _bounded_int(values[0], 255, "Max-Forwards")

    @property
    def content_type(self) -> str | None:
        """Lowercased media type without parameters ("application/sdp"), None when absent."""
        values = self._values("Content-Type")
        if not values:
            return None
        if len(values) > 1:
            raise SipParseError("more than one Content-Type header")
        match = _CONTENT_TYPE.match(values[0])
        if match is None:
            raise SipParseError(f"malformed Content-Type {values[0][:40]!r}")
        return f"{match.group(1)}/{match.group(2)}".lower()

    @property
    def expires(self) -> int | None:
        """Expires delta-seconds (§20.19), None when absent. Overlarge values raise."""
        values = self._values("Expires")
        if not values:
            return None
        return _bounded_int(values[0], 2**32 - 1, "Expires")


def _bounded_int(text: str, limit: int, what: str) -> int:
    digits = text.strip(" \t")
    if not digits or not digits.isdigit() or not digits.isascii():
        raise SipParseError(f"malformed {what} {text[:20]!r}")
    # Leading zeros are legal (RFC 4475 §3.1.1.1); huge digit strings are never converted.
    if len(digits.lstrip("0")) > len(str(limit)) or int(digits) > limit:
        raise SipParseError(f"{what} too large (limit {limit})")
    return int(digits)


def _strict_items(lines: list[str], name: str) -> list[str]:
    """List elements of ``name``, rejecting empty ones (``a,,b``; RFC 4475 §3.1.2.1)."""
    items: list[str] = []
    for line in lines:
        parts = split_header_list(line)
        if not parts or any(not part for part in parts):
            raise SipParseError(f"empty element in {name} header")
        items.extend(parts)
    return items


class SipRequest(SipMessage):
    """A request (§7.1): ``Method SP Request-URI SP SIP-Version``."""

    def __init__(
        self,
        method: str,
        uri: SipUri | AbsoluteUri,
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        #: Method, case-sensitive (§7.1).
        self.method = method
        #: Request-URI.
        self.uri = uri
        #: Protocol version as received; always "SIP/2.0" for a message that parsed.
        self.version = version

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Self:
        return type(self)(self.method, self.uri.copy(), list(self.headers), self.body, self.version)

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"


class SipResponse(SipMessage):
    """A response (§7.2): ``SIP-Version SP Status-Code SP Reason-Phrase``."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        super().__init__(headers, body)
        #: Status code 100..699.
        self.status = status
        #: Reason phrase, possibly empty or non-ASCII (RFC 4475 §3.1.1.12, §3.1.1.13).
        self.reason = reason
        #: Protocol version as received.
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Self:
        return type(self)(self.status, self.reason, list(self.headers), self.body, self.version)

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


# -- parsing -------------------------------------------------------------------------------


class SplitMessage:
    """A message cut into start line, header lines and body, before any validation."""

    def __init__(self) -> None:
        self.start_line = ""
        self.headers: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.body_offset = 0
        self.terminated = False


def _skip_leading_crlf(data: bytes) -> int:
    # §7.5: CRLFs before the start line are ignored (keep-alives, sloppy senders).
    offset = 0
    while data.startswith(b"\r\n", offset):
        offset += 2
    return offset


def split_message(data: bytes, start: int = 0) -> SplitMessage:
    """Cut ``data`` into lines and unfold headers (§7.3.1); never raises.

    Lines that are not ``name: value`` are recorded in ``problems`` and left out, so a
    best-effort message can still be built to answer with.
    """
    result = SplitMessage()
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        head = data[start:]
        if head.endswith(b"\r\n"):
            head = head[:-2]
        result.body_offset = len(data)
    else:
        head = data[start:end]
        result.body_offset = end + 4
        result.terminated = True
    text = _decode(head)
    breaks = text.count("\r\n")
    # When every CR and LF belongs to a line break, no line needs looking at for strays.
    clean = text.count("\r") == breaks and text.count("\n") == breaks
    if clean:
        # The usual message: every line one well-formed "name: value", nothing folded. One
        # pattern cuts them all; if it matched fewer lines than there are, some line is
        # folded or malformed and the loop below sorts it out.
        first = text.find("\r\n")
        pairs = _HEADER_LINE.findall(text, first if first >= 0 else len(text))
        if len(pairs) == breaks:
            result.start_line = text if first < 0 else text[:first]
            result.headers = [(canonical_name(name), value.rstrip(" \t")) for name, value in pairs]
            return result
    lines = text.split("\r\n")
    result.start_line = lines[0]
    raw: list[list[str]] = []
    current: list[str] | None = None
    for line in lines[1:]:
        if not clean and ("\r" in line or "\n" in line):
            result.problems.append("bare CR or LF in header section")
            current = None
            continue
        if line[:1] in (" ", "\t"):
            if current is None:
                result.problems.append("continuation line without a header")
                continue
            # Folding: LWS with CRLF is equivalent to a single SP (§7.3.1).
            current[1] = current[1].rstrip(" \t") + " " + line.lstrip(" \t")
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            result.problems.append(f"malformed header line {line[:40]!r}")
            current = None
            continue
        current = [canonical_name(name), value]
        raw.append(current)
    result.headers = [(name, value.strip(" \t")) for name, value in raw]
    return result


def build_partial(split: SplitMessage, body: bytes) -> tuple[SipRequest | SipResponse | None, bool]:
    """The best-effort message for ``split``, and whether the start line looks like a response."""
    line = split.start_line
    if line.upper().startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit() and parts[1].isascii() and len(parts[1]) == 3:
            reason = parts[2] if len(parts) == 3 else ""
            return SipResponse(int(parts[1]), reason, split.headers, body, parts[0]), True
        return None, True
    # Split on any run of whitespace: the strict check comes later, this only salvages.
    parts = line.split()
    if not parts:
        return None, False
    uri: SipUri | AbsoluteUri
    uri_text = parts[1].removeprefix("<").removesuffix(">") if len(parts) > 1 else ""
    try:
        uri = parse_uri(uri_text)
    except SipParseError:
        # A placeholder: the partial message only serves to answer 400, never to route.
        uri = AbsoluteUri("", uri_text)
    version = parts[-1] if len(parts) >= 3 else ""
    return SipRequest(parts[0], uri, split.headers, body, version), False


def _check_start_line(message: SipRequest | SipResponse, line: str) -> None:
    if isinstance(message, SipResponse):
        parts = line.split(" ", 2)
        if not _VERSION.fullmatch(parts[0]):
            raise SipParseError("malformed Status-Line")
        if parts[0].upper() != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version {parts[0]!r}", 505)
        if not 100 <= message.status <= 699:
            raise SipParseError(f"status code {message.status} out of range")
        return
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        # Extra, trailing or missing SP: RFC 4475 §3.1.2.8 to §3.1.2.10 (strict reading).
        raise SipParseError("malformed Request-Line: need exactly Method SP Request-URI SP SIP/2.0")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError(f"method {method[:30]!r} is not a token")
    if not _VERSION.fullmatch(version):
        raise SipParseError(f"malformed SIP-Version {version[:20]!r}")
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"SIP version {version} not supported", 505)
    if uri_text.startswith("<"):
        raise SipParseError("Request-URI must not be enclosed in <>")
    # build_partial parsed the URI it salvaged from this line; when that was this very text
    # (and not its placeholder for a failure), the result stands and parsing twice is waste.
    uri = message.uri
    salvaged = line.split()
    if (
        len(salvaged) < 2
        or salvaged[1].removeprefix("<").removesuffix(">") != uri_text
        or (isinstance(uri, AbsoluteUri) and not uri.scheme)
    ):
        uri = parse_uri(uri_text)
    if isinstance(uri, SipUri) and uri.headers is not None:
        # §19.1.5: headers in a SIP URI are for building a request, never for a Request-URI.
        raise SipParseError("escaped headers are not allowed in a Request-URI")


def _check_headers(message: SipRequest | SipResponse) -> None:
    index = message._header_index()
    for name, key in _SINGLE_KEYS:
        if len(index.get(key, _NO_VALUES)) > 1:
            raise SipParseError(f"more than one {name} header")
    missing = [name for name, key in _MANDATORY_KEYS if key not in index]
    if missing:
        raise SipParseError(f"missing mandatory header(s): {', '.join(missing)}")
    cseq = message.cseq
    if isinstance(message, SipRequest) and cseq.method != message.method:
        # RFC 4475 §3.1.2.18: a mismatch on a method the gateway does not know is a 501.
        status = 400 if message.method in KNOWN_METHODS else 501
        raise SipParseError(
            f"CSeq method {cseq.method} does not match request method {message.method}", status
        )
    message.call_id  # noqa: B018 - validates
    message.vias  # noqa: B018
    message.from_  # noqa: B018
    message.to  # noqa: B018
    message.contacts  # noqa: B018
    message.routes  # noqa: B018
    message.record_routes  # noqa: B018
    message.max_forwards  # noqa: B018
    message.content_type  # noqa: B018


def _content_length(message: SipMessage) -> int | None:
    """Content-Length as a non-negative int (§20.14), None when absent."""
    values = message._values("Content-Length")
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("more than one Content-Length header")
    text = values[0].strip(" \t")
    if not text.isdigit() or not text.isascii():
        raise SipParseError(f"malformed Content-Length {text[:20]!r}")
    if len(text.lstrip("0")) > 12:
        raise SipParseError("Content-Length too large")
    return int(text)


def parse_message(
    data: bytes,
    *,
    max_size: int = 65535,
    max_header_bytes: int | None = None,
    max_headers: int | None = None,
) -> SipRequest | SipResponse:
    """Parse and validate one datagram (§7, §18.3).

    The body is Content-Length octets after the empty line; octets beyond it are ignored
    (RFC 4475 §3.1.1.8). Without Content-Length the body is the rest of the datagram
    (RFC 4475 §3.4.1). Raises SipParseError, with ``partial`` set whenever the header lines
    could be split; one over ``max_size``, ``max_header_bytes`` or ``max_headers`` (header
    fields) is a 513 naming the limit in ``limit`` ([limits], ``gateway.sip.limits``).
    """
    start = _skip_leading_crlf(data)
    split = split_message(data, start)
    available = data[split.body_offset :]
    partial, looks_like_response = build_partial(split, available)

    def fail(error: SipParseError) -> SipParseError:
        return SipParseError(
            error.reason, error.status_hint, partial, looks_like_response=looks_like_response
        )

    if len(data) > max_size:
        raise _over_limit(
            fail(SipParseError(f"message of {len(data)} bytes exceeds {max_size}", 513)),
            "limit_max_message_bytes",
        )
    if max_header_bytes is not None and split.body_offset - start > max_header_bytes:
        reason = f"header section longer than {max_header_bytes} bytes"
        raise _over_limit(fail(SipParseError(reason, 513)), "limit_max_header_bytes")
    if max_headers is not None and len(split.headers) > max_headers:
        reason = f"more than {max_headers} header fields"
        raise _over_limit(fail(SipParseError(reason, 513)), "limit_max_headers")
    if partial is None:
        if looks_like_response:
            raise fail(SipParseError("malformed Status-Line (status code must be 3 digits)"))
        raise fail(SipParseError("empty start line"))
    if split.problems:
        raise fail(SipParseError(split.problems[0]))
    try:
        _check_start_line(partial, split.start_line)
        _check_headers(partial)
        length = _content_length(partial)
    except SipParseError as error:
        raise fail(error) from None
    if length is not None:
        if length > len(available):
            raise fail(
                SipParseError(
                    f"Content-Length {length} exceeds the {len(available)} body bytes received"
                )
            )
        partial.body = available[:length]
    return partial


def _over_limit(error: SipParseError, limit: str) -> SipParseError:
    error.limit = limit
    return error


# -- building ------------------------------------------------------------------------------


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """Build a response to ``request`` as §8.2.6 says.

    Copies every Via (in order), From, To, Call-ID and CSeq; adds ``to_tag`` to the To header
    when it has none (never on 100 Trying, §8.2.6.2); copies Timestamp into a 100 (§8.2.6.1).
    Works on a ``SipParseError.partial`` too: headers that did not parse are copied as received.
    """
    copied: list[tuple[str, str]] = []
    for name, value in request.headers:
        if name in ("Via", "From", "Call-ID", "CSeq") or (name == "Timestamp" and status == 100):
            copied.append((name, value))
        elif name == "To":
            if to_tag is not None and status != 100:
                try:
                    has_tag = NameAddr.parse(value).tag is not None
                except SipParseError:
                    has_tag = True  # unparseable: copy as received, a tag would not help
                if not has_tag:
                    # Append as text so the To otherwise stays exactly as the caller sent it.
                    value = f"{value};tag={to_tag}"
            copied.append((name, value))
    copied.extend(headers)
    phrase = reason if reason is not None else default_reason(status)
    return SipResponse(status, phrase, copied)


#: The RFC 3261 branch prefix (§8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh Via branch: the magic cookie and 144 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_urlsafe(18)


def new_tag() -> str:
    """A fresh From/To tag, 96 random bits (§19.3)."""
    return secrets.token_urlsafe(12)


def new_call_id() -> str:
    """A fresh Call-ID, 144 random bits (§8.1.1.4); no host part, so no LAN address leaks."""
    return secrets.token_urlsafe(18)
