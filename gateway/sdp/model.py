"""A lossless SDP model: parse, change a few fields, serialise (RFC 8866).

Follows RFC 8866 §5 (line syntax ``<type>=<value>``, section order, the ``v o s c t m a`` fields
the gateway rewrites), §5.2 (o=), §5.7 (c=, session level as the default for media), §5.13 and
§6.7 (attributes, media direction with the session level as the default), §5.14 (m=, including
``<port>/<number of ports>``), §6.6 (a=rtpmap) and §6.15 (a=fmtp), plus RFC 3605 (a=rtcp) and
RFC 5761 §5.1.1 (a=rtcp-mux).

Why lossless: the gateway is a B2BUA that rewrites addresses, ports, protocols and crypto but
must pass everything else through exactly as the peer wrote it (codec parameters, vendor
attributes, odd spacing). Every structured line therefore keeps the text it was parsed from and
is rebuilt only when one of its fields has changed; lines the gateway does not model are kept as
they came. The one normalisation: within a section, attribute lines are emitted after the other
lines (RFC 8866 §5 order) even if a peer interleaved them.

Bytes that are not UTF-8 (legacy phones may put Latin-1 in ``s=`` or ``i=``) are carried with
``surrogateescape`` so they come out byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.sdp.errors import SdpError

#: RFC 8866 §6.7: the four direction attributes; absent means sendrecv.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_LINES = 64

# Where a c= line goes when one is added (RFC 8866 §5 order): before these line types.
_SESSION_AFTER_C = "btrzk"
_MEDIA_AFTER_C = "bk"


def _garbage(reason: str) -> SdpError:
    return SdpError(reason, status_hint=400)


def _addrtype_for(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


@dataclass(eq=False)
class Origin:
    """The o= line (RFC 8866 §5.2)."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"
    _raw: str | None = field(default=None, repr=False, compare=False)
    _raw_key: tuple[object, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, line: str) -> Origin:
        parts = line[2:].split()
        if len(parts) != 6:
            raise _garbage(f"o= line needs 6 fields, got {len(parts)}")
        if not parts[2].isdigit():
            raise _garbage(f"o= session version {parts[2]!r} is not a number")
        origin = cls(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5])
        origin._raw, origin._raw_key = line, origin._key()
        return origin

    def bump_version(self) -> None:
        """Raise sess-version by one, as RFC 3264 §8 requires for every changed offer."""
        self.sess_version += 1

    def _key(self) -> tuple[object, ...]:
        return (
            self.username,
            self.sess_id,
            self.sess_version,
            self.nettype,
            self.addrtype,
            self.address,
        )

    def to_line(self) -> str:
        if self._raw is not None and self._key() == self._raw_key:
            return self._raw
        return "o=" + " ".join(str(part) for part in self._key())


@dataclass(eq=False)
class Connection:
    """A c= line (RFC 8866 §5.7); a multicast ``/ttl`` suffix stays part of ``address``."""

    address: str
    nettype: str = "IN"
    addrtype: str = ""
    _raw: str | None = field(default=None, repr=False, compare=False)
    _raw_key: tuple[str, str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.addrtype:
            self.addrtype = _addrtype_for(self.address)

    @classmethod
    def parse(cls, line: str) -> Connection:
        parts = line[2:].split()
        if len(parts) != 3:
            raise _garbage(f"c= line needs 3 fields, got {len(parts)}")
        conn = cls(address=parts[2], nettype=parts[0], addrtype=parts[1])
        conn._raw, conn._raw_key = line, conn._key()
        return conn

    @property
    def host(self) -> str:
        """The address without a multicast TTL or address count."""
        return self.address.split("/", 1)[0]

    def _key(self) -> tuple[str, str, str]:
        return (self.nettype, self.addrtype, self.address)

    def to_line(self) -> str:
        if self._raw is not None and self._key() == self._raw_key:
            return self._raw
        return f"c={self.nettype} {self.addrtype} {self.address}"


class RtpMap(NamedTuple):
    """One a=rtpmap (RFC 8866 §6.6)."""

    payload_type: str
    encoding: str
    clock_rate: int
    channels: int | None


class RtcpAttribute(NamedTuple):
    """a=rtcp (RFC 3605 §2.1): the RTCP port and, optionally, its address."""

    port: int
    address: str | None = None
    nettype: str = "IN"
    addrtype: str | None = None

    def to_value(self) -> str:
        if self.address is None:
            return str(self.port)
        addrtype = self.addrtype or _addrtype_for(self.address)
        return f"{self.port} {self.nettype} {addrtype} {self.address}"


class _Attributes:
    """Ordered ``a=`` lines of one section; names are case-sensitive (RFC 8866 §5.13)."""

    attributes: list[tuple[str, str | None]]

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)

    def get_attribute(self, name: str) -> str | None:
        """Value of the first ``name`` attribute (None if absent or a flag)."""
        for n, value in self.attributes:
            if n == name:
                return value
        return None

    def get_attributes(self, name: str) -> list[str | None]:
        return [value for n, value in self.attributes if n == name]

    def add_attribute(self, name: str, value: str | None = None) -> None:
        self.attributes.append((name, value))

    def set_attribute(self, name: str, value: str | None = None) -> None:
        """Make ``name`` appear once with ``value``, in the place of its first occurrence."""
        for i, (n, _) in enumerate(self.attributes):
            if n == name:
                self.attributes[i] = (name, value)
                self.attributes[i + 1 :] = [a for a in self.attributes[i + 1 :] if a[0] != name]
                return
        self.attributes.append((name, value))

    def remove_attribute(self, name: str) -> int:
        """Remove every ``name`` attribute; returns how many there were."""
        before = len(self.attributes)
        self.attributes[:] = [a for a in self.attributes if a[0] != name]
        return before - len(self.attributes)

    def _own_direction(self) -> str | None:
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return None

    def _set_own_direction(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"not a media direction: {direction!r}")
        for i, (n, _) in enumerate(self.attributes):
            if n in DIRECTIONS:
                self.attributes[i] = (direction, None)
                self.attributes[i + 1 :] = [
                    a for a in self.attributes[i + 1 :] if a[0] not in DIRECTIONS
                ]
                return
        self.attributes.append((direction, None))


def _attribute_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_attribute(line: str) -> tuple[str, str | None]:
    name, sep, value = line[2:].partition(":")
    if not name:
        raise _garbage(f"attribute line without a name: {line[:40]!r}")
    return (name, value if sep else None)


@dataclass(eq=False)
class MediaDescription(_Attributes):
    """One media section: the m= line and the lines up to the next m= (RFC 8866 §5.14)."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    # i=, b=, k= and unknown lines as they came; ("c", "") marks where c= stood.
    _lines: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _raw: str | None = field(default=None, repr=False)
    _raw_key: tuple[object, ...] | None = field(default=None, repr=False)
    #: The session this section belongs to, for session-level defaults.
    session: SessionDescription | None = field(default=None, repr=False)

    @classmethod
    def _parse_mline(cls, line: str) -> MediaDescription:
        parts = line[2:].split()
        if len(parts) < 3:
            raise _garbage(f"m= line needs media, port and proto: {line[:60]!r}")
        port_text, _, count_text = parts[1].partition("/")
        if not port_text.isdigit() or int(port_text) > 65535:
            raise _garbage(f"m= port {parts[1]!r} is not a port number")
        if count_text and not count_text.isdigit():
            raise _garbage(f"m= port count {parts[1]!r} is not a number")
        md = cls(
            media=parts[0],
            port=int(port_text),
            proto=parts[2],
            formats=parts[3:],
            port_count=int(count_text) if count_text else None,
        )
        md._raw, md._raw_key = line, md._key()
        return md

    def _key(self) -> tuple[object, ...]:
        return (self.media, self.port, self.port_count, self.proto, tuple(self.formats))

    def _mline(self) -> str:
        if self._raw is not None and self._key() == self._raw_key:
            return self._raw
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([f"m={self.media}", port, self.proto, *self.formats])

    def _render(self) -> list[str]:
        out = [self._mline()]
        out.extend(raw for _, raw in _expand(self._lines, self.connection, _MEDIA_AFTER_C))
        out.extend(_attribute_line(n, v) for n, v in self.attributes)
        return out

    @property
    def effective_connection(self) -> Connection | None:
        """This section's c=, else the session's (RFC 8866 §5.7)."""
        if self.connection is not None:
            return self.connection
        return self.session.connection if self.session is not None else None

    @property
    def direction(self) -> str:
        """Media direction: media level, else session level, else sendrecv (RFC 8866 §6.7)."""
        own = self._own_direction()
        if own is not None:
            return own
        if self.session is not None:
            session_level = self.session._own_direction()
            if session_level is not None:
                return session_level
        return "sendrecv"

    @direction.setter
    def direction(self, value: str) -> None:
        # Always written at media level: it overrides whatever the session level says.
        self._set_own_direction(value)

    def rtpmap(self, payload_type: str) -> RtpMap | None:
        for value in self.get_attributes("rtpmap"):
            if value is None:
                continue
            pt, _, rest = value.partition(" ")
            if pt != payload_type:
                continue
            pieces = rest.strip().split("/")
            if len(pieces) < 2 or not pieces[1].isdigit():
                raise SdpError(f"malformed a=rtpmap:{value}", status_hint=400)
            channels = int(pieces[2]) if len(pieces) > 2 and pieces[2].isdigit() else None
            return RtpMap(pt, pieces[0], int(pieces[1]), channels)
        return None

    def fmtp(self, payload_type: str) -> str | None:
        for value in self.get_attributes("fmtp"):
            if value is None:
                continue
            pt, _, params = value.partition(" ")
            if pt == payload_type:
                return params.strip()
        return None

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @rtcp_mux.setter
    def rtcp_mux(self, enabled: bool) -> None:
        if enabled:
            if not self.rtcp_mux:
                self.add_attribute("rtcp-mux")
        else:
            self.remove_attribute("rtcp-mux")

    @property
    def rtcp(self) -> RtcpAttribute | None:
        value = self.get_attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        if not parts or not parts[0].isdigit() or int(parts[0]) > 65535:
            raise SdpError(f"malformed a=rtcp:{value}", status_hint=400)
        if len(parts) == 1:
            return RtcpAttribute(int(parts[0]))
        if len(parts) != 4:
            raise SdpError(f"malformed a=rtcp:{value}", status_hint=400)
        return RtcpAttribute(int(parts[0]), parts[3], parts[1], parts[2])

    @rtcp.setter
    def rtcp(self, value: RtcpAttribute | None) -> None:
        if value is None:
            self.remove_attribute("rtcp")
        else:
            self.set_attribute("rtcp", value.to_value())


@dataclass(eq=False)
class SessionDescription(_Attributes):
    """A whole SDP body (RFC 8866 §5)."""

    version: int
    origin: Origin
    connection: Connection | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    #: Line ending to emit: what came in, CRLF for new bodies (RFC 8866 §5).
    eol: str = "\r\n"
    # Session lines other than a=, in order; ("v"|"o"|"c", "") mark the modelled ones.
    _lines: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _version_raw: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; raises SdpError (400 for garbage, 488 beyond the limits)."""
        if isinstance(data, bytes):
            if len(data) > MAX_SDP_BYTES:
                raise SdpError(f"SDP body of {len(data)} bytes exceeds {MAX_SDP_BYTES}")
            text = data.decode("utf-8", errors="surrogateescape")
        else:
            text = data
            if len(text.encode("utf-8", errors="surrogateescape")) > MAX_SDP_BYTES:
                raise SdpError(f"SDP body exceeds {MAX_SDP_BYTES} bytes")
        if "\x00" in text:
            raise _garbage("SDP body contains a NUL byte")
        first_nl = text.find("\n")
        eol = "\r\n" if first_nl > 0 and text[first_nl - 1] == "\r" else "\n"
        if first_nl < 0:
            eol = "\r\n"
        raw_lines = [line.removesuffix("\r") for line in text.split("\n")]
        # Blank lines carry nothing; trailing ones are common after the last CRLF.
        lines = [line for line in raw_lines if line]
        if not lines:
            raise _garbage("empty SDP body")
        if not lines[0].startswith("v="):
            raise _garbage("SDP must start with a v= line")
        version_text = lines[0][2:]
        if not version_text.isdigit():
            raise _garbage(f"v= {version_text!r} is not a number")

        origin: Origin | None = None
        session_conn: Connection | None = None
        session_attrs: list[tuple[str, str | None]] = []
        session_lines: list[tuple[str, str]] = [("v", "")]
        media: list[MediaDescription] = []
        current: MediaDescription | None = None
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise _garbage(f"not an SDP line: {line[:40]!r}")
            if "\r" in line:
                raise _garbage("stray carriage return inside an SDP line")
            kind = line[0]
            if kind == "m":
                if len(media) >= MAX_MEDIA_LINES:
                    raise SdpError(f"more than {MAX_MEDIA_LINES} m= lines")
                current = MediaDescription._parse_mline(line)
                media.append(current)
            elif kind == "a":
                target = current.attributes if current is not None else session_attrs
                target.append(_parse_attribute(line))
            elif kind == "c":
                conn = Connection.parse(line)
                if current is None:
                    if session_conn is not None:
                        raise _garbage("more than one session-level c= line")
                    session_conn = conn
                    session_lines.append(("c", ""))
                else:
                    if current.connection is not None:
                        raise SdpError(f"more than one c= line in m={current.media}")
                    current.connection = conn
                    current._lines.append(("c", ""))
            elif kind == "o" and current is None:
                if origin is not None:
                    raise _garbage("more than one o= line")
                origin = Origin.parse(line)
                session_lines.append(("o", ""))
            elif kind == "v":
                raise _garbage("v= may only appear once, as the first line")
            elif current is not None:
                current._lines.append((kind, line))
            else:
                session_lines.append((kind, line))
        if origin is None:
            raise _garbage("SDP has no o= line")
        sd = cls(
            version=int(version_text),
            origin=origin,
            connection=session_conn,
            attributes=session_attrs,
            media=media,
            eol=eol,
            _lines=session_lines,
            _version_raw=lines[0],
        )
        for md in media:
            md.session = sd
        return sd

    def replace_session_line(self, kind: str, raw: str | None) -> None:
        """Replace every session-level ``kind=`` line with ``raw`` (None: remove them),
        in place, so the RFC 8866 §5 order of the other lines is kept."""
        lines: list[tuple[str, str]] = []
        for k, line in self._lines:
            if k != kind:
                lines.append((k, line))
            elif raw is not None:
                lines.append((k, raw))
        self._lines = lines

    def _render_session(self) -> list[str]:
        out: list[str] = []
        lines = self._lines if self._lines else [("v", ""), ("o", "")]
        conn_lines = [entry for entry in lines if entry[0] != "v"]
        if self._version_raw is not None and self._version_raw == f"v={self.version}":
            out.append(self._version_raw)
        else:
            out.append(f"v={self.version}")
        for kind, raw in _expand(conn_lines, self.connection, _SESSION_AFTER_C):
            if kind == "o":
                out.append(self.origin.to_line())
            else:
                out.append(raw)
        out.extend(_attribute_line(n, v) for n, v in self.attributes)
        return out

    def to_text(self) -> str:
        out = self._render_session()
        for md in self.media:
            out.extend(md._render())
        return self.eol.join(out) + self.eol

    def __str__(self) -> str:
        return self.to_text()

    def __bytes__(self) -> bytes:
        return self.to_text().encode("utf-8", errors="surrogateescape")


def _expand(
    lines: list[tuple[str, str]], connection: Connection | None, after_c: str
) -> list[tuple[str, str]]:
    """Session lines with the c= marker resolved (kept, dropped or newly placed)."""
    out: list[tuple[str, str]] = []
    # A c= that was parsed keeps its place, even out of RFC order; only a new one is placed.
    placed = any(kind == "c" for kind, _ in lines)
    for kind, raw in lines:
        if kind == "c":
            if connection is not None:
                out.append(("c", connection.to_line()))
            continue
        if not placed and connection is not None and kind in after_c:
            out.append(("c", connection.to_line()))
            placed = True
        out.append((kind, raw))
    if not placed and connection is not None:
        out.append(("c", connection.to_line()))
    return out
