"""Seeing a call from both sides: every SIP message of a call's two legs, redacted, per call.

TLS hides the WAN leg from sngrep and tshark, so the gateway keeps its own view. The
composition root feeds :class:`CallLadder` every SIP message it receives or sends
(:meth:`~CallLadder.received`, :meth:`~CallLadder.sent`) and every typed call event
(:meth:`~CallLadder.event`). Messages are filed by Call-ID (RFC 3261 §8.1.1.4); a
:class:`~gateway.sip.call_events.CallStarted` joins the caller leg's Call-ID and the Call-ID the
gateway made for the other leg, so both legs of one call land in one ladder. Messages of a
Call-ID not yet claimed (the INVITE itself, the relayed INVITE sent just before the event) wait
in a small pending buffer and are attached when the event comes.

Only calls are kept: REGISTER and OPTIONS never enter the pending buffer, so registrations and
keep-alives have no ladder. A call refused before it started (policy, no acceptable crypto)
keeps a ladder of its own, in a smaller ring, so a scan cannot push real calls out.

Nothing secret is ever stored (:func:`redact` runs before a message is kept): digest
``response``, ``nonce``, ``cnonce``, ``nc``, ``opaque``, ``nextnonce`` and ``rspauth`` values
(RFC 3261 §22.4, RFC 7616 §3.4-3.5), credentials of any other scheme, SDES key material
(RFC 4568 §9.1 ``inline:``, keeping the tag, the suite, lifetime and MKI), MIKEY data
(RFC 4567 ``a=key-mgmt``), SDP ``k=`` lines (RFC 4566 §5.12) and passwords in SIP URIs
(RFC 3261 §19.1.1). DTLS fingerprints are not secrets and message bodies otherwise stay as
they came. Content-Length is not adjusted: the text is for reading, not for resending.

Sans-IO: no clock (times are the caller's, in the cores' clock; :meth:`CallLadder.view` turns
them into Unix time with the offset it is given), no sockets, and bounded memory: the last
``keep_calls`` finished calls plus active ones, ``max_messages`` per call (the rest counted),
``max_message_chars`` per message and ``max_chars`` in all.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, SupportsBytes

from gateway.operations import CallLadderView, LadderCall, LadderMessage
from gateway.sip.call_events import (
    AckMissing,
    CallAnswered,
    CallCancelled,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRefused,
    CallStarted,
    MediaEnded,
)

__all__ = ["LADDER_HEADERS", "CallLadder", "ladder_headers", "redact"]

#: Headers shown beside each message's first line (compact forms are expanded, RFC 3261 §7.3.3).
LADDER_HEADERS = (
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Record-Route",
    "Route",
    "Warning",
    "Reason",
    "Content-Type",
    "User-Agent",
    "Server",
    "RSeq",
    "RAck",
    "Refer-To",
)
_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "c": "content-type",
    "l": "content-length",
    "r": "refer-to",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}
_CANONICAL = {name.lower(): name for name in LADDER_HEADERS}
#: Requests that never make a call: their Call-IDs are not held while waiting for one.
_NOT_CALLS = frozenset({"REGISTER", "OPTIONS"})

# --------------------------------------------------------------------------- redaction

_REDACTED = "[redacted]"
#: Headers whose value is a credential, and every header that carries digest parameters.
_CREDENTIALS = ("authorization", "proxy-authorization")
_AUTH_HEADERS = (
    *_CREDENTIALS,
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "proxy-authentication-info",
)
#: Digest parameters that prove knowledge of the password or let a response be replayed.
_SECRET_PARAMS = frozenset({"response", "nonce", "cnonce", "nc", "opaque", "nextnonce", "rspauth"})
#: One auth-param (RFC 3261 §25.1): a quoted value is taken whole, so a parameter name inside
#: a quoted string is never mistaken for one.
_AUTH_PARAM = re.compile(r"([A-Za-z0-9_-]+)([ \t]*=[ \t]*)(\"(?:[^\"\\\r\n]|\\.)*\"|[^\s,]+)")
_SCHEME = re.compile(r"([ \t]*)([!#$%&'*+.^_`|~0-9A-Za-z-]+)(.*)", re.DOTALL)
_CRYPTO_LINE = re.compile(r"^a=crypto:[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_CRYPTO_KEY = re.compile(r"(inline:)[^|;\s]+", re.IGNORECASE)
_KEY_MGMT = re.compile(
    r"^(a=key-mgmt:[ \t]*[^ \t\r\n]+)[ \t]+[^\r\n]*", re.IGNORECASE | re.MULTILINE
)
_SDP_KEY = re.compile(r"^k=([a-z0-9-]+):[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_URI_PASSWORD = re.compile(r"(sips?:[^:@;>\s\"]+):[^@;>\s\"]+@", re.IGNORECASE)
#: A URI with a password, looked for in the lowercased text (a literal prefix is fast to find).
_URI_PASSWORD_LOWER = re.compile(r"sips?:[^:@;>\s\"]+:[^@;>\s\"]+@")
#: Markers of something to redact, looked for in the lowercased text; most messages have
#: none and come back as they are.
_MARKERS = ("authori", "authent", "a=crypto", "a=key-mgmt", "\nk=")


def _secret_param(match: re.Match[str]) -> str:
    if match.group(1).lower() not in _SECRET_PARAMS:
        return match.group(0)
    value = f'"{_REDACTED}"' if match.group(3).startswith('"') else _REDACTED
    return match.group(1) + match.group(2) + value


def _scrub_params(value: str) -> str:
    return _AUTH_PARAM.sub(_secret_param, value)


def _redact_credentials(value: str) -> str:
    """Digest credentials lose their secret parameters; any other scheme loses everything
    after the scheme name (a Basic or Bearer credential is the secret itself)."""
    parts = _SCHEME.fullmatch(value)
    if parts is None:
        return _REDACTED
    blank, scheme, rest = parts.groups()
    if scheme.lower() == "digest":
        return _scrub_params(value)
    return f"{blank}{scheme} {_REDACTED}" if rest.strip() else value


def _auth_spans(lowered: str) -> list[tuple[int, int, int, bool]]:
    """(name start, value start, value end, is a credential) of each auth header in a
    lowercased header section, continuation lines (RFC 3261 §7.3.1) included."""
    spans = []
    for name in _AUTH_HEADERS:
        start = 0
        while (found := lowered.find("\n" + name, start)) >= 0:
            start = found + 1
            colon = found + 1 + len(name)
            while lowered[colon : colon + 1] in (" ", "\t"):
                colon += 1
            if lowered[colon : colon + 1] != ":":
                continue  # a longer name that starts the same way
            end = lowered.find("\n", colon)
            while end >= 0 and lowered[end + 1 : end + 2] in (" ", "\t"):
                end = lowered.find("\n", end + 1)
            end = len(lowered) if end < 0 else end
            if lowered[end - 1 : end] == "\r":
                end -= 1
            spans.append((found + 1, colon + 1, end, name in _CREDENTIALS))
    return sorted(spans)


def _redact_auth_headers(head: str, lowered: str) -> str:
    """``head`` with the secrets of its auth headers redacted; ``lowered`` is its lowercase."""
    if len(lowered) != len(head):
        # Lowercasing changed lengths (rare non-ASCII): positions would not carry over.
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in head)
    pieces: list[str] = []
    done = 0
    for _, value_at, end, credential in _auth_spans(lowered):
        value = head[value_at:end]
        pieces += [
            head[done:value_at],
            _redact_credentials(value) if credential else _scrub_params(value),
        ]
        done = end
    pieces.append(head[done:])
    return "".join(pieces)


def _split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def redact(text: str) -> str:
    """``text`` (a whole SIP message) with every secret replaced by ``[redacted]``.

    Pure and idempotent. A folded header line (RFC 3261 §7.3.1) is redacted as part of the
    header it continues. Header and body are not told apart on purpose: a message that lost
    its empty line still has its SDP keys redacted, and a request quoted in a body
    (message/sipfrag) still has its credentials redacted.
    """
    lowered = text.lower()
    password = _URI_PASSWORD_LOWER.search(lowered) is not None
    if not password and not any(marker in lowered for marker in _MARKERS):
        return text
    if "authent" in lowered or "authori" in lowered:
        text = _redact_auth_headers(text, lowered)
    if "a=crypto" in lowered:
        text = _CRYPTO_LINE.sub(lambda m: _CRYPTO_KEY.sub(r"\1" + _REDACTED, m.group(0)), text)
    if "a=key-mgmt" in lowered:
        text = _KEY_MGMT.sub(r"\1 " + _REDACTED, text)
    if "\nk=" in lowered:
        text = _SDP_KEY.sub(r"k=\1:" + _REDACTED, text)
    return _URI_PASSWORD.sub(r"\1:" + _REDACTED + "@", text) if password else text


def _header_lines(text: str) -> Iterator[tuple[str, str]]:
    """(lowercase full name, value) of each header of a message's text, unfolded."""
    name = ""
    value = ""
    for line in _split_lines(text)[1:]:
        bare = line.rstrip("\r\n")
        if not bare:
            break
        if bare[:1] in (" ", "\t") and name:
            value += " " + bare.strip()
            continue
        if name:
            yield name, value
        head, colon, rest = bare.partition(":")
        if not colon:
            name = ""
            continue
        name = head.strip().lower()
        name = _COMPACT.get(name, name)
        value = rest.strip()
    if name:
        yield name, value


def ladder_headers(text: str) -> tuple[tuple[str, str], ...]:
    """The headers of :data:`LADDER_HEADERS` in ``text``, in message order, names canonical."""
    return tuple(
        (_CANONICAL[name], value) for name, value in _header_lines(text) if name in _CANONICAL
    )


def _header_value(head: bytes, lowered: bytes, names: tuple[bytes, ...]) -> bytes | None:
    """The first value of a header (any of ``names``, lowercase) in a header section."""
    for name in names:
        start = 0
        while (found := lowered.find(b"\n" + name, start)) >= 0:
            start = found + 1
            after = found + 1 + len(name)
            while lowered[after : after + 1] in (b" ", b"\t"):
                after += 1
            if lowered[after : after + 1] == b":":
                end = head.find(b"\n", after)
                return head[after + 1 : end if end >= 0 else len(head)].strip()
    return None


def _call_id_and_method(head: bytes) -> tuple[str | None, str | None]:
    """Call-ID and CSeq method of a message's header section (enough to file it)."""
    lowered = head.lower()
    call_id = _header_value(head, lowered, (b"call-id", b"i"))
    cseq = _header_value(head, lowered, (b"cseq",))
    method = cseq.rpartition(b" ")[2].decode("ascii", errors="replace").upper() if cseq else ""
    return (call_id.decode("utf-8", errors="replace") or None if call_id else None), method or None


# --------------------------------------------------------------------------- the ladder


class _Peer(Protocol):
    """What is read of a :class:`gateway.sip.peer.Peer`."""

    @property
    def side(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def address(self) -> tuple[str, int]: ...


@dataclass(slots=True)
class _Entry:
    seq: int
    time: float
    side: str
    direction: str
    transport: str
    peer: str
    call_id: str
    text: str
    truncated: bool


@dataclass(slots=True)
class _Trace:
    """One call's ladder as it grows."""

    caller_call_id: str
    pair: str | None = None
    callee_call_id: str | None = None
    from_side: str | None = None
    method: str | None = None
    caller: str | None = None
    callee: str | None = None
    entries: list[_Entry] = field(default_factory=list)
    dropped: int = 0
    chars: int = 0
    answered: bool = False
    ended: float | None = None
    outcome: str | None = None

    @property
    def call_ids(self) -> tuple[str, ...]:
        if self.callee_call_id is None:
            return (self.caller_call_id,)
        return (self.caller_call_id, self.callee_call_id)

    @property
    def started(self) -> float:
        return self.entries[0].time if self.entries else (self.ended or 0.0)


def _address(peer: _Peer) -> str:
    host, port = peer.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CallLadder:
    """Both legs' SIP messages of the active calls and of the last finished ones.

    ``keep_calls`` finished calls are kept (and ``keep_refused`` calls refused before they
    started); ``max_messages`` per call, ``max_message_chars`` per message (cut after
    redaction), ``max_chars`` over everything kept (the oldest finished calls go first; when
    only active calls are left, further messages are counted, not kept). ``pending_calls``
    Call-IDs of ``pending_messages`` each wait for their call event.
    """

    def __init__(
        self,
        *,
        keep_calls: int = 50,
        keep_refused: int = 20,
        max_messages: int = 200,
        max_message_chars: int = 8192,
        max_chars: int = 8 * 1024 * 1024,
        max_active: int = 5000,
        pending_calls: int = 64,
        pending_messages: int = 16,
    ) -> None:
        self.keep_calls = keep_calls
        self.keep_refused = keep_refused
        self.max_messages = max_messages
        self.max_message_chars = max_message_chars
        self.max_chars = max_chars
        self.max_active = max_active
        self.pending_calls = pending_calls
        self.pending_messages = pending_messages
        self._seq = 0
        self._last_now = 0.0
        self._chars = 0
        self._by_call_id: dict[str, _Trace] = {}
        self._by_pair: dict[str, _Trace] = {}
        #: Active traces in start order (a dict: ordered, and removal by key).
        self._active: dict[int, _Trace] = {}
        self._finished: deque[_Trace] = deque()
        self._refused: deque[_Trace] = deque()
        self._pending: OrderedDict[str, list[_Entry]] = OrderedDict()
        #: Messages seen but not kept (over a bound), for the operator's counters.
        self.not_kept = 0

    # -- fed by the composition root -----------------------------------------------------

    def received(self, peer: _Peer, message: bytes | SupportsBytes, now: float) -> None:
        """A SIP message came in from ``peer`` (a datagram's bytes or a parsed message)."""
        self._file("in", peer, message, now)

    def sent(self, peer: _Peer, data: bytes | SupportsBytes, now: float) -> None:
        """The gateway sent ``data`` to ``peer``."""
        self._file("out", peer, data, now)

    def event(self, event: CallEvent, now: float | None = None) -> None:
        """A typed call event: joins legs (started), notes the answer, ends a call.

        ``now`` defaults to the time of the last message fed (an event is emitted while the
        core handles a message, so the two are the same moment).
        """
        when = self._last_now if now is None else now
        if isinstance(event, CallStarted):
            self._start(event)
        elif isinstance(event, CallAnswered):
            trace = self._by_pair.get(event.pair)
            if trace is not None:
                trace.answered = True
        elif isinstance(event, CallRefused):
            self._refused_event(event, when)
        elif isinstance(event, CallEnded | CallFailed | CallCancelled | MediaEnded | AckMissing):
            trace = self._by_pair.get(event.pair)
            if trace is not None:
                self._finish(trace, event.kind, when)

    # -- read by the console -------------------------------------------------------------

    def find(self, ref: str) -> _Trace | None:
        """The call whose core key or either Call-ID is ``ref``."""
        return self._by_pair.get(ref) or self._by_call_id.get(ref)

    def view(self, ref: str, wall_offset: float) -> CallLadderView | None:
        """The call's ladder, times as Unix seconds (``wall_offset`` = Unix time - now)."""
        trace = self.find(ref)
        if trace is None:
            return None
        entries = sorted(trace.entries, key=lambda e: (e.time, e.seq))
        return CallLadderView(
            call=self._summary(trace, wall_offset),
            messages=tuple(
                LadderMessage(
                    time=e.time + wall_offset,
                    side=e.side,
                    direction=e.direction,
                    transport=e.transport,
                    peer=e.peer,
                    call_id=e.call_id,
                    first_line=e.text.split("\n", 1)[0].rstrip("\r"),
                    headers=ladder_headers(e.text),
                    text=e.text,
                    truncated=e.truncated,
                )
                for e in entries
            ),
        )

    def calls(self, wall_offset: float) -> list[LadderCall]:
        """Every call kept, newest first."""
        traces = [*self._active.values(), *self._finished, *self._refused]
        traces.sort(key=lambda t: t.started, reverse=True)
        return [self._summary(t, wall_offset) for t in traces]

    @property
    def chars(self) -> int:
        """Characters of message text kept now (pending messages included)."""
        return self._chars

    # -- filing --------------------------------------------------------------------------

    def _file(self, direction: str, peer: _Peer, data: bytes | SupportsBytes, now: float) -> None:
        self._last_now = now
        raw = data if isinstance(data, bytes) else bytes(data)
        # The header section is enough to file a message: decode the rest only if kept.
        call_id, method = _call_id_and_method(raw.split(b"\r\n\r\n", 1)[0])
        if call_id is None:
            return
        trace = self._by_call_id.get(call_id)
        if trace is None and method in _NOT_CALLS:
            return
        if trace is not None and len(trace.entries) >= self.max_messages:
            trace.dropped += 1
            self.not_kept += 1
            return
        text = redact(raw.decode("utf-8", errors="replace"))
        truncated = len(text) > self.max_message_chars
        if truncated:
            text = text[: self.max_message_chars]
        self._seq += 1
        entry = _Entry(
            self._seq,
            now,
            str(peer.side),
            direction,
            peer.transport,
            _address(peer),
            call_id,
            text,
            truncated,
        )
        if not self._make_room(len(text)) or (
            # Making room may have dropped this very call (a finished one).
            trace is not None and self._by_call_id.get(call_id) is not trace
        ):
            if trace is not None:
                trace.dropped += 1
            self.not_kept += 1
            return
        self._chars += len(text)
        if trace is not None:
            trace.entries.append(entry)
            trace.chars += len(text)
            return
        waiting = self._pending.get(call_id)
        if waiting is None:
            waiting = self._pending[call_id] = []
            while len(self._pending) > self.pending_calls:
                _, gone = self._pending.popitem(last=False)
                self._chars -= sum(len(e.text) for e in gone)
        if len(waiting) >= self.pending_messages:
            self._chars -= len(waiting.pop(0).text)
        waiting.append(entry)

    def _make_room(self, chars: int) -> bool:
        """Drop the oldest finished calls until ``chars`` more fit; False if they cannot."""
        while self._chars + chars > self.max_chars:
            ring = self._refused if self._refused else self._finished
            if not ring:
                return False
            self._forget(ring.popleft())
        return True

    def _claim(self, trace: _Trace, call_id: str) -> None:
        for entry in self._pending.pop(call_id, ()):
            if len(trace.entries) >= self.max_messages:
                trace.dropped += 1
                self._chars -= len(entry.text)
                continue
            trace.entries.append(entry)
            trace.chars += len(entry.text)
        self._by_call_id[call_id] = trace

    # -- call events ---------------------------------------------------------------------

    def _start(self, event: CallStarted) -> None:
        if event.pair in self._by_pair:
            return
        trace = _Trace(
            caller_call_id=event.call_id,
            pair=event.pair,
            callee_call_id=event.callee_call_id,
            from_side=event.from_side,
            method=event.method,
            caller=event.caller,
            callee=event.callee,
        )
        # A Call-ID that already had a ladder (an attempt challenged or refused before) is
        # taken over: what follows belongs to the new call.
        self._claim(trace, event.call_id)
        self._claim(trace, event.callee_call_id)
        trace.entries.sort(key=lambda e: (e.time, e.seq))
        self._by_pair[event.pair] = trace
        self._active[id(trace)] = trace
        while len(self._active) > self.max_active:
            # Never told of its end (a core that forgot it): kept as finished, outcome unknown.
            oldest = next(iter(self._active.values()))
            self._finish(oldest, None, self._last_now)

    def _refused_event(self, event: CallRefused, now: float) -> None:
        trace = self._by_pair.get(event.pair) if event.pair is not None else None
        if trace is not None:
            if trace.answered and event.status != 0:
                return  # an offer inside an answered call was refused: the call goes on
            self._finish(trace, event.kind, now)
            return
        if event.pair is not None or event.call_id not in self._pending:
            return
        # Refused before it started: its messages make a ladder of their own.
        trace = _Trace(caller_call_id=event.call_id, caller=event.caller, callee=event.callee)
        self._claim(trace, event.call_id)
        first_in = next((e for e in trace.entries if e.direction == "in"), None)
        trace.from_side = first_in.side if first_in is not None else None
        trace.method = "INVITE"
        trace.ended = now
        trace.outcome = event.kind
        self._refused.append(trace)
        while len(self._refused) > self.keep_refused:
            self._forget(self._refused.popleft())

    def _finish(self, trace: _Trace, outcome: str | None, now: float) -> None:
        if trace.ended is not None:
            return
        trace.ended = now
        trace.outcome = outcome
        self._active.pop(id(trace), None)
        self._finished.append(trace)
        while len(self._finished) > self.keep_calls:
            self._forget(self._finished.popleft())

    def _forget(self, trace: _Trace) -> None:
        self._chars -= trace.chars
        if trace.pair is not None and self._by_pair.get(trace.pair) is trace:
            del self._by_pair[trace.pair]
        for call_id in trace.call_ids:
            if self._by_call_id.get(call_id) is trace:
                del self._by_call_id[call_id]

    @staticmethod
    def _summary(trace: _Trace, offset: float) -> LadderCall:
        lan: str | None = trace.caller_call_id
        wan = trace.callee_call_id
        if trace.from_side == "wan":
            lan, wan = wan, lan
        return LadderCall(
            pair=trace.pair,
            caller_call_id=trace.caller_call_id,
            callee_call_id=trace.callee_call_id,
            lan_call_id=lan,
            wan_call_id=wan,
            from_side=trace.from_side,
            method=trace.method,
            caller=trace.caller,
            callee=trace.callee,
            started=trace.started + offset,
            ended=trace.ended + offset if trace.ended is not None else None,
            outcome=trace.outcome,
            messages=len(trace.entries),
            dropped=trace.dropped,
        )
