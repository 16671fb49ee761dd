"""SRTP and SRTCP crypto contexts for the packet path (RFC 3711, RFC 7714, RFC 4568 §7.1.4).

Thin wrappers over pylibsrtp (libsrtp): an :class:`SrtpProtector` for what the gateway sends to
the provider and an :class:`SrtpUnprotector` for what it receives, each built from one
direction's :class:`~gateway.media.control.SrtpKeying`. One libsrtp session serves both RTP and
RTCP of a direction, so SRTP and SRTCP share the master key as RFC 3711 §4.3 derives them.

Rollover counters (RFC 3711 §3.3.1) and replay windows (§3.3.2) live inside the libsrtp session,
per SSRC. They survive only as long as the session does, which is why a context is kept for as
long as its keying (suite, master key and salt, generation) is unchanged: a re-INVITE or hold
that repeats the same ``a=crypto`` must not reset the ROC, while a new key (RFC 4568 §7.1.4)
means a new crypto context.

libsrtp reports failures as :class:`pylibsrtp.Error` carrying a message; they are mapped here to
:class:`SrtpAuthError` (authentication or cipher failure) and :class:`SrtpReplayError` (replay
window) so the packet path can count them apart (docs/design.md §3.2). A ``TypeError`` from the
binding (a pylibsrtp whose libsrtp functions take other arguments) becomes a
:class:`SrtpBindingError`, counted like any refused packet instead of ending the worker.

A stream carried on by a new media worker after a crash (docs/high-availability.md) gets its
per-SSRC indexes back: :meth:`SrtpProtector.restore` / :meth:`SrtpUnprotector.restore` keep the
checkpointed (ROC, highest sequence number) per SSRC, and the first packet of that SSRC estimates
its index from them as RFC 3711 §3.3.1 does, adds an SSRC-specific libsrtp stream under the
same key and sets its ROC (``srtp_set_stream_roc``, called through ctypes on the library
pylibsrtp loaded, whose cffi binding does not declare it). :func:`estimate_roc` is that rule.

SRTCP's index (RFC 3711 §3.4) is not the phone's: it is the sender's own 31-bit counter, kept by
libsrtp per SSRC, starting at 1 in every new context. An :class:`SrtpProtector` counts, per SSRC,
the highest SRTCP index it used (:meth:`SrtpProtector.srtcp_index`, checkpointed); a restored
one (:meth:`SrtpProtector.restore_srtcp`) moves libsrtp's counter past the checkpointed index
plus :data:`SRTCP_MARGIN` before the SSRC's first SRTCP packet, by protecting throw-away empty
receiver reports of that SSRC (libsrtp has no call that sets the index; each
``srtp_protect_rtcp`` raises it by one), and refuses (:class:`SrtcpIndexError`) RTCP of an SSRC
the checkpoint did not name: the same key and index twice is a two-time pad (§9.1).

Each SSRC seen by a session is a libsrtp stream; :meth:`SrtpProtector.forget` and
:meth:`SrtpUnprotector.forget` remove one (``srtp_remove_stream``) when the relay gives its slot
to another SSRC (see :class:`~gateway.media.relay.SsrcGate`).
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import pylibsrtp

from gateway.media.control import SrtpKeying
from gateway.media.suites import SrtpSuite

try:
    # pylibsrtp's cffi binding: calling libsrtp through it directly skips the wrapper's two
    # Python frames, its isinstance check and a ``ffi.new("int *")`` per packet (about a
    # third of the per-packet cost of protect/unprotect). Falls back to the public API when a
    # future pylibsrtp lays itself out differently.
    from pylibsrtp._binding import ffi as _ffi
    from pylibsrtp._binding import lib as _lib

    _FAST = True
except ImportError:  # pragma: no cover - depends on pylibsrtp's internals
    _ffi = _lib = None
    _FAST = False

#: libsrtp's working buffer size (pylibsrtp's too) and the largest trailers it may append.
_BUFFER = 1500
_RTP_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN
_RTCP_TRAILER = pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN

#: How far past a checkpointed SRTCP index a restored context starts. What it must cover is what
#: the old context sent after the checkpoint its successor got: a worker's checkpoint is about
#: CHECKPOINT_INTERVAL (0.5 s) old, an HA standby's about a second or two (gateway/ha/node.py).
#: RTCP (RFC 3550 §6.2) comes every 5 s on average and never twice within about 2 s; 1024
#: packets cover half an hour of that, or a phone sending 100 a second for ten seconds. The cost:
#: 1024 more throw-away packets (about 2 ms) once per restored SSRC, 1024 of 2^31 indexes.
SRTCP_MARGIN = 1024
#: Most throw-away packets one SRTCP packet's advance protects (about 1.6 µs each: at most some
#: 50 ms of the worker's loop); a farther target is reached over the next packets, each dropped
#: until it is. A 24-hour call at one RTCP packet per 5 s has used about 17,280 indexes.
SRTCP_STEP = 1 << 15
#: The last SRTCP index (31 bits, RFC 3711 §3.4): libsrtp refuses to go beyond.
SRTCP_MAX = 0x7FFFFFFF

__all__ = [
    "NATIVE_REASONS",
    "SRTCP_MARGIN",
    "SRTCP_MAX",
    "SRTCP_STEP",
    "NativeHandle",
    "SrtcpIndexError",
    "SrtpAuthError",
    "SrtpBindingError",
    "SrtpError",
    "SrtpProtector",
    "SrtpReplayError",
    "SrtpUnprotector",
    "estimate_roc",
    "native_function",
    "same_keying",
]


class SrtpError(Exception):
    """libsrtp refused a packet for a reason other than authentication or replay."""


class SrtpAuthError(SrtpError):
    """The packet failed SRTP/SRTCP authentication (forged, tampered or wrong key)."""


class SrtpReplayError(SrtpError):
    """The packet's index was already seen or is behind the replay window."""


class SrtcpIndexError(SrtpError):
    """An SRTCP packet refused because its index could repeat one used under the same key (an
    SSRC a restored context has no checkpointed index for, or one not yet moved past it)."""


class SrtpBindingError(SrtpError):
    """pylibsrtp's binding refused the call itself (``TypeError``: another libsrtp API)."""


#: What pylibsrtp may raise for one packet: libsrtp's status, its buffer limit, its binding.
_FAILURES = (pylibsrtp.Error, ValueError, TypeError)


# Messages from pylibsrtp's table of libsrtp status codes. A GCM tag mismatch surfaces as a
# cipher failure, so it counts as an authentication failure too (RFC 7714 §9.1).
_AUTH_MESSAGES = frozenset({"authentication failure", "cipher failure"})
_REPLAY_MESSAGES = frozenset(
    {
        "replay check failed (bad index)",
        "replay check failed (index too old)",
        "packet index is too old to consider",
    }
)


def _mapped(exc: Exception) -> SrtpError:
    """Turn a pylibsrtp failure into the matching SrtpError subclass."""
    if isinstance(exc, TypeError):
        return SrtpBindingError(f"libsrtp binding refused the call: {exc}")
    message = str(exc)
    if message in _AUTH_MESSAGES:
        return SrtpAuthError(message)
    if message in _REPLAY_MESSAGES:
        return SrtpReplayError(message)
    # ValueError from pylibsrtp means a packet longer than its 1500-byte working buffer.
    return SrtpError(message)


def same_keying(a: SrtpKeying | None, b: SrtpKeying | None) -> bool:
    """True when two keyings would build the same crypto context (so an existing one is kept)."""
    if a is None or b is None:
        return a is b
    return a.suite == b.suite and a.master == b.master and a.generation == b.generation


def _session(keying: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    suite = SrtpSuite.from_name(keying.suite)  # NULL suites are unknown here: never plaintext
    if len(keying.master) != suite.master_length:
        raise ValueError(
            f"{suite.value} needs {suite.master_length} bytes of master key and salt,"
            f" got {len(keying.master)}"
        )
    policy = pylibsrtp.Policy(
        key=keying.master, ssrc_type=ssrc_type, srtp_profile=suite.libsrtp_profile
    )
    # Index reuse under one key is a two-time pad (RFC 3711 §9.1): libsrtp refuses a repeated
    # outbound sequence number, and we keep it that way.
    policy.allow_repeat_tx = False
    return pylibsrtp.Session(policy)


def _status_error(status: int) -> SrtpError:
    """The SrtpError for a libsrtp status code, with pylibsrtp's message for it."""
    messages = pylibsrtp.ERRORS
    message = messages[status] if 0 <= status < len(messages) else f"libsrtp status {status}"
    return _mapped(pylibsrtp.Error(message))


_SHARED: tuple[Any, Any, Any] | None = None


def _shared_buffer() -> tuple[Any, Any, Any]:
    global _SHARED
    if _SHARED is None:
        cdata = _ffi.new("unsigned char[]", _BUFFER)
        _SHARED = (cdata, _ffi.buffer(cdata), _ffi.new("int *"))
    return _SHARED


class _Direct:
    """libsrtp called through pylibsrtp's binding, with buffers allocated once per context.

    Each call copies the packet into the (process-wide) buffer, lets libsrtp work in place and
    returns the result as new bytes (the caller may keep it; one small copy is cheaper than
    anything that would track the buffer's reuse). Not for concurrent threads: every user of
    these contexts (the media worker, the lab's asyncio peers) runs them on one thread.
    """

    __slots__ = ("_buf", "_cdata", "_handle", "_length", "_session")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # keeps the libsrtp context alive (freed with the session)
        self._handle: Any = session._srtp[0]
        # One working buffer for every context of the process (a media worker is single-
        # threaded and run() copies the result out before returning): 3 KiB less per call.
        self._cdata, self._buf, self._length = _shared_buffer()

    def run(self, function: Any, packet: bytes, trailer: int) -> bytes:
        n = len(packet)
        if n > _BUFFER - trailer:
            raise SrtpError("packet is too long")
        buf = self._buf
        buf[0:n] = packet
        length = self._length
        length[0] = n
        try:
            status = function(self._handle, self._cdata, length)
        except TypeError as exc:  # free unless raised (zero-cost try in CPython 3.11)
            raise _mapped(exc) from None
        if status:
            raise _status_error(status)
        return buf[0 : length[0]]


#: What the C fast path (``gateway.media._fastpath``) needs to call libsrtp itself: the
#: session handle's address, the address of ``srtp_protect`` or ``srtp_unprotect``, the longest
#: packet accepted (as :class:`_Direct` accepts it), and the object keeping the session alive.
NativeHandle = tuple[int, int, int, object]


def _address(pointer: Any) -> int:
    return int(_ffi.cast("uintptr_t", pointer))


def native_function(name: str) -> int | None:
    """The address of libsrtp's ``name`` in the library pylibsrtp loaded, or None."""
    if not _FAST:
        return None
    try:
        return _address(_ffi.addressof(_lib, name))
    except (AttributeError, TypeError):  # pragma: no cover - pylibsrtp changed
        return None


def _native(direct: _Direct | None, function: str, trailer: int) -> NativeHandle | None:
    if direct is None:
        return None
    fn = native_function(function)
    if fn is None:  # pragma: no cover - pylibsrtp changed
        return None
    try:
        return _address(direct._handle), fn, _BUFFER - trailer, direct
    except TypeError:  # pragma: no cover - pylibsrtp changed
        return None


def _forget(session: pylibsrtp.Session, ssrc: int) -> None:
    # No stream for it (never protected, or never authenticated): nothing to free.
    with contextlib.suppress(*_FAILURES):
        session.remove_stream(ssrc)


def _native_reasons() -> bytes:
    """Per libsrtp status code, the drop reason the Python path counts for it: 0 malformed,
    1 authentication, 2 replay (so the C path counts failures exactly as :func:`_mapped`)."""
    out = bytearray()
    for status in range(64):
        error = _status_error(status)
        if isinstance(error, SrtpAuthError):
            out.append(1)
        elif isinstance(error, SrtpReplayError):
            out.append(2)
        else:
            out.append(0)
    return bytes(out)


def _direct(session: pylibsrtp.Session) -> _Direct | None:
    if not _FAST:
        return None
    try:
        return _Direct(session)
    except (AttributeError, TypeError, IndexError):  # pragma: no cover - pylibsrtp changed
        return None


def estimate_roc(roc: int, highest: int, seq: int) -> int:
    """The ROC of a packet with sequence number ``seq``, given the ROC and highest sequence
    number known before it (RFC 3711 §3.3.1's guess: the index closest to the last one). A
    ``highest`` of -1 (unknown) keeps ``roc``. The result may be ``roc`` - 1 (a late packet
    from before a wrap), ``roc`` or ``roc`` + 1 (the sequence wrapped since); never below 0."""
    if highest < 0:
        return roc
    if highest < 0x8000:
        return roc - 1 if seq - highest > 0x8000 and roc > 0 else roc
    return roc + 1 if highest - 0x8000 > seq else roc


def _roc_functions() -> tuple[Any, Any] | None:
    """libsrtp's srtp_get_stream_roc and srtp_set_stream_roc from the library pylibsrtp
    loaded (the same process-wide copy its sessions live in), or None."""
    try:
        from pylibsrtp import _binding

        library = ctypes.CDLL(_binding.__file__)
        get_roc = library.srtp_get_stream_roc
        set_roc = library.srtp_set_stream_roc
    except (ImportError, OSError, AttributeError):  # pragma: no cover - pylibsrtp changed
        return None
    get_roc.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
    get_roc.restype = ctypes.c_int
    set_roc.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    set_roc.restype = ctypes.c_int
    return get_roc, set_roc


_ROC = _roc_functions() if _FAST else None


class _Indexes:
    """Reading and restoring a session's per-SSRC rollover counters (see the module doc).

    ``_pending`` maps an SSRC to the (ROC, highest sequence number) it had in a dead worker,
    until that SSRC's first packet here: while any is pending, :meth:`native` (the C fast
    path's handle) is None so every packet comes through :meth:`_resume`."""

    __slots__ = ()
    _session: pylibsrtp.Session
    _pending: dict[int, tuple[int, int]]
    keying: SrtpKeying

    @property
    def restoring(self) -> bool:
        """True while a restored SSRC has not had its first packet yet."""
        return bool(self._pending)

    def roc(self, ssrc: int) -> int | None:
        """libsrtp's rollover counter for ``ssrc`` (None: no stream for it, or unreadable)."""
        if _ROC is None:
            return None
        pending = self._pending.get(ssrc)
        if pending is not None:
            return pending[0]
        value = ctypes.c_uint32()
        status = _ROC[0](_address(self._session._srtp[0]), ssrc, ctypes.byref(value))
        return value.value if status == 0 else None

    def highest(self, ssrc: int) -> int:
        """The checkpointed sequence number of a still pending SSRC, else -1."""
        pending = self._pending.get(ssrc)
        return pending[1] if pending is not None else -1

    def restore(self, indexes: list[tuple[int, int, int]]) -> None:
        """Carry on each (SSRC, ROC, highest sequence number) from a dead worker's context
        under the same keys; applied at that SSRC's first packet."""
        if _ROC is None:
            return  # pragma: no cover - the streams start at ROC 0, as a new context would
        for ssrc, roc, seq in indexes:
            self._pending[ssrc] = (roc, seq)

    def _resume(self, packet: bytes, outbound: bool) -> tuple[int, int] | None:
        """Before the first packet of a pending SSRC: add its stream with the estimated ROC.
        Returns what was pending (to put back if the packet fails), or None."""
        if len(packet) < 12:
            return None
        ssrc = int.from_bytes(packet[8:12], "big")
        state = self._pending.pop(ssrc, None)
        if state is None:
            return None
        roc, highest = state
        seq = packet[2] << 8 | packet[3]
        v = estimate_roc(roc, highest, seq)
        if highest >= 0 and (v << 16 | seq) <= (roc << 16 | highest):
            # At or before the checkpointed index: already used under this key (outbound:
            # protecting it again would be a two-time pad) or already accepted (inbound).
            self._pending[ssrc] = state
            raise SrtpReplayError("index at or before the restored checkpoint")
        suite = SrtpSuite.from_name(self.keying.suite)
        policy = pylibsrtp.Policy(
            key=self.keying.master,
            ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC,
            ssrc_value=ssrc,
            srtp_profile=suite.libsrtp_profile,
        )
        policy.allow_repeat_tx = False
        _forget(self._session, ssrc)
        try:
            self._session.add_stream(policy)
        except _FAILURES as exc:
            self._pending[ssrc] = state
            raise _mapped(exc) from None
        assert _ROC is not None
        _ROC[1](_address(self._session._srtp[0]), ssrc, v)
        return state

    def _failed(self, packet: bytes, state: tuple[int, int]) -> None:
        """An inbound first packet failed: forget the stream it set up, so a forged packet
        cannot fix a wrong ROC for the genuine ones (they try again from the checkpoint)."""
        ssrc = int.from_bytes(packet[8:12], "big")
        _forget(self._session, ssrc)
        self._pending[ssrc] = state


class SrtpProtector(_Indexes):
    """Outbound SRTP/SRTCP for one direction: protects what the gateway sends to the provider.

    Raises ``ValueError`` on construction for an unknown or NULL suite or a key of the wrong
    length. libsrtp accepts any outbound SSRC and keeps a ROC per SSRC.
    """

    __slots__ = (
        "_direct",
        "_pending",
        "_protect",
        "_protect_rtcp",
        "_session",
        "_srtcp",
        "_srtcp_at",
        "_srtcp_restored",
        "keying",
    )

    def __init__(self, keying: SrtpKeying) -> None:
        session = _session(keying, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._session = session
        self._pending = {}
        #: Per SSRC, the highest SRTCP index used (or, restored, reserved) under this key.
        self._srtcp: dict[int, int] = {}
        #: Per SSRC, the index libsrtp's stream last used (absent: 0, a new libsrtp stream).
        self._srtcp_at: dict[int, int] = {}
        #: Restored from a checkpoint: an SSRC not in ``_srtcp`` gets no SRTCP.
        self._srtcp_restored = False
        #: The keying this context was built from (compared on update, never logged).
        self.keying = keying
        # Bound methods looked up once: the packet path calls them per packet.
        self._protect = session.protect
        self._protect_rtcp = session.protect_rtcp
        self._direct = _direct(session)

    def native(self) -> NativeHandle | None:
        """libsrtp handle and ``srtp_protect`` for the C fast path (None without the fast path,
        and while a restored SSRC waits for its first packet)."""
        if self._pending:
            return None
        return _native(self._direct, "srtp_protect", _RTP_TRAILER)

    def forget(self, ssrc: int) -> None:
        """Drop the stream (ROC, sequence state) libsrtp keeps for ``ssrc``, if any. Its SRTCP
        index is kept: a new libsrtp stream for it would be moved past it first."""
        _forget(self._session, ssrc)
        self._srtcp_at.pop(ssrc, None)

    def protect(self, packet: bytes) -> bytes:
        """RTP → SRTP. Raises SrtpError (SrtpReplayError for a repeated sequence number)."""
        if self._pending and self._resume(packet, True) is not None:
            # A new libsrtp stream for the SSRC: its SRTCP index starts again at 0.
            self._srtcp_at.pop(int.from_bytes(packet[8:12], "big"), None)
        direct = self._direct
        if direct is not None:
            return direct.run(_lib.srtp_protect, packet, _RTP_TRAILER)
        try:
            return self._protect(packet)
        except _FAILURES as exc:
            raise _mapped(exc) from None

    def srtcp_index(self, ssrc: int) -> int:
        """The highest SRTCP index used (or reserved) for ``ssrc`` under this key (0: none)."""
        return self._srtcp.get(ssrc, 0)

    def restore_srtcp(self, indexes: list[tuple[int, int]]) -> None:
        """Carry on from a dead worker's context under the same keys: each (SSRC, highest SRTCP
        index it used) starts past that index plus :data:`SRTCP_MARGIN`; any other SSRC's RTCP
        is refused from now on (it may have sent SRTCP after the checkpoint)."""
        self._srtcp_restored = True
        srtcp = self._srtcp
        for ssrc, index in indexes:
            srtcp[ssrc] = max(srtcp.get(ssrc, 0), min(index + SRTCP_MARGIN, SRTCP_MAX))

    def protect_rtcp(self, packet: bytes) -> bytes:
        """RTCP → SRTCP (RFC 3711 §3.4, always encrypted with the E flag set). Raises
        SrtcpIndexError when the index libsrtp would use could repeat one used before."""
        if len(packet) < 8:
            raise SrtpError("RTCP packet too short")
        ssrc = int.from_bytes(packet[4:8], "big")  # the sender's: libsrtp's stream (§3.4)
        used = self._srtcp.get(ssrc)
        if used is None:
            if self._srtcp_restored:
                raise SrtcpIndexError("no checkpointed SRTCP index for this SSRC")
            used = 0
        at = self._srtcp_at.get(ssrc, 0)
        if used >= SRTCP_MAX or at >= SRTCP_MAX:
            raise SrtcpIndexError("SRTCP index exhausted under this key")
        if at < used:
            at = self._advance(ssrc, at, used)
        # Counted before libsrtp runs: a failure may still have used the index.
        self._srtcp[ssrc] = self._srtcp_at[ssrc] = at + 1
        try:
            return self._protect_rtcp(packet)
        except _FAILURES as exc:
            raise _mapped(exc) from None

    def _advance(self, ssrc: int, at: int, target: int) -> int:
        """Move libsrtp's SRTCP index of ``ssrc`` from ``at`` toward ``target`` by protecting
        throw-away empty receiver reports of it (RFC 3550 §6.4.2), at most
        :data:`SRTCP_STEP`; returns ``target`` or raises SrtcpIndexError short of it."""
        steps = min(target - at, SRTCP_STEP)
        filler = b"\x80\xc9\x00\x01" + ssrc.to_bytes(4, "big")
        done = 0
        try:
            direct = self._direct
            if direct is not None:
                # In place: SRTCP leaves the first eight bytes as they are and only appends its
                # trailer, so the buffer holds the same empty report again for the next call.
                function, handle, cdata, length = (
                    _lib.srtp_protect_rtcp,
                    direct._handle,
                    direct._cdata,
                    direct._length,
                )
                direct._buf[0:8] = filler
                while done < steps:
                    length[0] = 8
                    status = function(handle, cdata, length)
                    if status:
                        raise _status_error(status)
                    done += 1
            else:
                while done < steps:
                    self._protect_rtcp(filler)
                    done += 1
        except (SrtpError, *_FAILURES):
            # Where libsrtp's index stands is not known now: no more SRTCP for this SSRC.
            self._srtcp[ssrc] = self._srtcp_at[ssrc] = SRTCP_MAX
            raise SrtcpIndexError("SRTCP index could not be moved past the checkpoint") from None
        at += steps
        self._srtcp_at[ssrc] = at
        if at < target:
            raise SrtcpIndexError("SRTCP index still short of the restored checkpoint")
        return at


class SrtpUnprotector(_Indexes):
    """Inbound SRTP/SRTCP for one direction: verifies and decrypts what the provider sends.

    libsrtp creates a stream (ROC, replay window) per SSRC from the first packet that
    authenticates, so a provider that changes SSRC mid-call keeps working under the same key.
    """

    __slots__ = ("_direct", "_pending", "_session", "_unprotect", "_unprotect_rtcp", "keying")

    def __init__(self, keying: SrtpKeying) -> None:
        session = _session(keying, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._session = session
        self._pending = {}
        #: The keying this context was built from (compared on update, never logged).
        self.keying = keying
        self._unprotect = session.unprotect
        self._unprotect_rtcp = session.unprotect_rtcp
        self._direct = _direct(session)

    def native(self) -> NativeHandle | None:
        """libsrtp handle and ``srtp_unprotect`` for the C fast path (None without it, and
        while a restored SSRC waits for its first packet)."""
        if self._pending:
            return None
        return _native(self._direct, "srtp_unprotect", 0)

    def forget(self, ssrc: int) -> None:
        """Drop the stream (ROC, replay window) libsrtp keeps for ``ssrc``, if any."""
        _forget(self._session, ssrc)

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP → RTP. Raises SrtpAuthError, SrtpReplayError or SrtpError."""
        if self._pending:
            state = self._resume(packet, False)
            if state is not None:
                try:
                    return self._unprotect_now(packet)
                except SrtpError:
                    self._failed(packet, state)
                    raise
        return self._unprotect_now(packet)

    def _unprotect_now(self, packet: bytes) -> bytes:
        direct = self._direct
        if direct is not None:
            return direct.run(_lib.srtp_unprotect, packet, 0)
        try:
            return self._unprotect(packet)
        except _FAILURES as exc:
            raise _mapped(exc) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP → RTCP. Raises SrtpAuthError, SrtpReplayError or SrtpError."""
        try:
            return self._unprotect_rtcp(packet)
        except _FAILURES as exc:
            raise _mapped(exc) from None


#: Drop reason per libsrtp status code, for the C fast path (see :func:`_native_reasons`).
NATIVE_REASONS = _native_reasons()
