"""Media worker process: the packet loop, driven by control messages (RFC 3550, RFC 3711).

One worker runs per core, without asyncio: a single ``select.epoll`` waits on every media socket
(four per stream: LAN RTP/RTCP and WAN RTP/RTCP) and on the control socket to the signalling
process. Each poll round reads one datagram from every socket it reports readable (epoll is
level-triggered, so a socket with more queued is reported again next round: fair to every
stream without a burst limit, and no EAGAIN exception per wake-up), each datagram goes through
its :class:`~gateway.media.relay.RelayStream`, and what comes back is sent with ``sendto``.
Nothing is logged per packet.

Control framing: a 4-byte big-endian length, then one msgspec msgpack message
(:data:`~gateway.media.control.COMMAND_DECODER` in, :data:`~gateway.media.control.ENCODER`
out). An undecodable message is reported once on stderr and ignored; a lost channel (the
signalling process is gone) ends the worker.

When the optional C extension ``gateway.media._fastpath`` is built (``pip install`` compiles
it with the machine's C compiler; without one the install carries on without it), the loop runs
in C: one ``epoll_wait`` per round, and every RTP socket of a stream in its steady state (port
latched, peer known, SRTP keys present) is read, checked, protected or unprotected by
pylibsrtp's own libsrtp, and sent without entering Python. Everything else (control, RTCP,
packets it declines: wrong source, malformed, RTCP muxed on the WAN RTP port) comes back to the
Python path below, which stays the reference. ``GATEWAY_MEDIA_FASTPATH=0`` turns it off.
The C lanes call libsrtp with libsrtp 2's signatures: at start-up the worker reads the version
of the libsrtp pylibsrtp loaded and, with another major version, runs the Python loop and says
so once on stderr (:func:`fastpath_refusal`). Packets the C loop hands back are decided by the
Python rules with the stream's C state (reception statistics, kept SSRCs) taken back first and
handed over again after.
The C loop returns to Python only with something for it or at the loop's next timer, and
with ``--keep-core-awake`` a SCHED_IDLE thread keeps the core out of idle while media is
dense (a vCPU's wake-up from idle cost 1-3 ms of latency). ``--cpu`` pins the worker.

The idle check (RFC 3550 §6.3.5-style inactivity, per call) reads each stream's last-packet
stamps without folding counters, a few dozen calls per loop round, so a pass over every call
never pauses the packet path.

Media sockets are marked DSCP EF (RFC 3246, ``46 << 2`` in IP_TOS) and get large buffers; the
heap built at start-up is frozen out of the garbage collector's view (``gc.freeze``) so
collections stay short while packets flow.

Run as ``python -m gateway.media.worker --control-fd N --lan-address A --wan-address B``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gc
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

import msgspec

from gateway.media import checkpoint
from gateway.media.control import (
    COMMAND_DECODER,
    ENCODER,
    CallClosed,
    Checkpoints,
    CloseCall,
    OpenStream,
    QueryStats,
    SetDtlsIdentity,
    Shutdown,
    StreamCheckpoint,
    StreamCounters,
    StreamIdle,
    StreamOpened,
    StreamSpec,
    UpdateStream,
    WorkerStats,
)
from gateway.media.dtls_streams import DtlsStreams
from gateway.media.relay import (
    LAN_RTP,
    MAX_DATAGRAM,
    SSRC_IDLE_S,
    WAN_RTCP,
    WAN_RTP,
    Address,
    Forward,
    RelayStream,
)
from gateway.media.sockets import media_socket
from gateway.media.srtp import NATIVE_REASONS, native_function

try:
    from gateway.media import _fastpath
except ImportError:  # not built (no C compiler at install time): the Python path does it all
    _fastpath = None  # type: ignore[assignment]

__all__ = ["LIBSRTP_MAJOR", "fastpath_refusal", "main", "media_socket", "run_worker"]

#: Receive size: one byte more than the relay accepts, so that a longer datagram, which the
#: kernel cuts to this size without a word, still shows as too long (relay.MAX_DATAGRAM).
RECV_SIZE = MAX_DATAGRAM + 1
#: A control message longer than this means the framing is lost.
MAX_CONTROL_MESSAGE = 16 << 20
#: Calls looked at per loop round by the idle check, and how long the loop waits between
#: those rounds: a pass over 1000 calls is spread over ~16 ms instead of one pause.
IDLE_CHECK_BATCH = 64
IDLE_CHECK_STEP_S = 0.001
#: The libsrtp major version whose ``srtp_protect`` / ``srtp_unprotect`` signatures (context,
#: buffer, int *length) the C lanes call. With another, the worker runs the Python loop.
LIBSRTP_MAJOR = 2

_Handler = Callable[[bytes, Address, float], Forward | None]
Restore = StreamCheckpoint | None


def fastpath_enabled() -> bool:
    """True when the C fast path is built and not turned off by ``GATEWAY_MEDIA_FASTPATH=0``."""
    return _fastpath is not None and os.environ.get("GATEWAY_MEDIA_FASTPATH", "1") != "0"


@functools.cache
def _libsrtp_version() -> tuple[int, str] | str:
    """(srtp_get_version(), its text) of the libsrtp whose srtp_protect the lanes would call,
    or why it cannot be read."""
    fn = native_function("srtp_protect")
    if fn is None or _fastpath is None:
        return "pylibsrtp's binding does not expose srtp_protect"
    try:
        return _fastpath.libsrtp_version(fn)
    except OSError as exc:
        return str(exc)


def fastpath_refusal() -> str | None:
    """Why the C fast path must not call the libsrtp that pylibsrtp loaded, or None."""
    found = _libsrtp_version()
    if isinstance(found, str):
        return f"libsrtp's version cannot be read ({found})"
    version, text = found
    major = version >> 24
    if major != LIBSRTP_MAJOR:
        return (
            f"{text or 'libsrtp'} (major version {major}) is loaded and the C lanes call"
            f" libsrtp {LIBSRTP_MAJOR}'s functions"
        )
    return None


def _ipv4(ip: str) -> bytes | None:
    """``ip`` packed, when it is an IPv4 address written as the kernel reports sources (the
    Python path compares source strings, so only that exact spelling may match in C)."""
    try:
        packed = socket.inet_aton(ip)
    except OSError:
        return None
    return packed if socket.inet_ntoa(packed) == ip else None


class _Stream:
    """A relay and the four sockets it uses, indexed like ``relay.LAN_RTP`` … ``WAN_RTCP``,
    and its two C fast-path lanes (LAN RTP → WAN, WAN RTP → LAN) when there is a fast path."""

    __slots__ = ("_python_turn", "key", "lanes", "relay", "restoring", "sockets", "updates")

    def __init__(self, key: str, relay: RelayStream, sockets: tuple[socket.socket, ...]) -> None:
        self.key = key
        self.updates = 0  # UpdateStream messages applied (StreamCheckpoint carries it)
        self.restoring = False  # a restored SSRC keeps the fast path off (python_turn)
        self.relay = relay
        self.sockets = sockets
        self.lanes: tuple[_fastpath.Lane, _fastpath.Lane] | None = None
        #: True while the Python rules handle a packet of an active lane: the relay's state
        #: is then the one that counts (see :meth:`python_turn`).
        self._python_turn = False

    def sync(self) -> None:
        """Fold what the fast path counted into the relay's counters, and (outside a Python
        turn) take back its reception statistics and SSRC last-heard times."""
        lanes = self.lanes
        if lanes is None:
            return
        relay = self.relay
        c = relay.counters
        lan, wan = lanes
        inp, inb, out, malformed, auth, replay, ssrc, last = lan.take()
        if inp or malformed:
            c.lan_in_packets += inp
            c.lan_in_bytes += inb
            c.wan_out_packets += out
            c.drop_malformed += malformed  # protect failures only: no auth/replay here
            c.drop_ssrc += ssrc
            c.last_lan_packet = max(c.last_lan_packet, last)
        if lan.active and not self._python_turn:
            relay.lan_reception.set_state(lan.get_reception())
            relay.lan_ssrcs.set_state(lan.get_ssrcs())
        inp, inb, out, malformed, auth, replay, ssrc, last = wan.take()
        if inp:
            c.wan_in_packets += inp
            c.wan_in_bytes += inb
            c.lan_out_packets += out
            c.drop_malformed += malformed
            c.drop_auth += auth
            c.drop_replay += replay
            c.drop_ssrc += ssrc
            c.last_wan_packet = max(c.last_wan_packet, last)
        if wan.active and not self._python_turn:
            relay.wan_reception.set_state(wan.get_reception())
            relay.wan_ssrcs.set_state(wan.get_ssrcs())

    def _hand_over(self) -> None:
        """Give the active lanes the relay's reception statistics and kept SSRCs."""
        lanes = self.lanes
        if lanes is None:
            return
        relay = self.relay
        for lane, reception, gate in (
            (lanes[0], relay.lan_reception, relay.lan_ssrcs),
            (lanes[1], relay.wan_reception, relay.wan_ssrcs),
        ):
            if lane.active:
                lane.set_reception(reception.state())
                lane.set_ssrcs(*gate.state())

    def python_turn(
        self, handler: _Handler, data: bytes, source: Address, now: float
    ) -> Forward | None:
        """:meth:`_turn`; the fast path takes a restored stream back at its ROCs' return."""
        forward = self._turn(handler, data, source, now)
        if self.restoring and not checkpoint.restoring(self.relay):
            self.restoring = False
            self.refresh()
        return forward

    def _turn(self, handler: _Handler, data: bytes, source: Address, now: float) -> Forward | None:
        """Run the Python rules on a packet of this stream while the fast path may hold the
        stream's state: take it back, decide, hand it over again (a packet the C loop declined,
        or RTCP from the phone, may admit an SSRC; RTP is counted in the reception stats)."""
        lanes = self.lanes
        if lanes is None or not (lanes[0].active or lanes[1].active):
            return handler(data, source, now)  # Python holds it all (a latch hands it over)
        # A flood of new SSRCs from the phone comes back here packet by packet while a slot is
        # free (RFC 3550 probation keeps them out of it): dropped without the exchange below.
        relay = self.relay
        if handler == relay.from_lan_rtp and relay.lan_rtp_refused(data, source, now):
            return None
        self.sync()
        self._python_turn = True
        try:
            return handler(data, source, now)
        finally:
            self._python_turn = False
            self._hand_over()

    def refresh(self) -> None:
        """Hand each direction to the fast path while it is in its steady state, take it back
        (counters and reception state with it) when it leaves it."""
        lanes = self.lanes
        if lanes is None:
            return
        relay = self.relay
        self.sync()
        wants = (
            (lanes[0], relay.fast_lan(), self.sockets[WAN_RTP]),
            (lanes[1], relay.fast_wan(), self.sockets[LAN_RTP]),
        )
        for lane, want, out in wants:
            config = None
            if want is not None:
                ip, dest, context = want
                native = context.native()
                src, dst = _ipv4(ip), _ipv4(dest[0])
                if native is not None and src is not None and dst is not None:
                    config = (out.fileno(), src, dst, dest[1], *native)
            if config is None:
                lane.disable()
            else:
                lane.configure(*config)
        self._hand_over()

    def release(self) -> None:
        """Stop the fast path for this stream (before its sockets close)."""
        self.relay.on_change = None  # also breaks the relay → stream reference cycle
        if self.lanes is not None:
            self.sync()
            for lane in self.lanes:
                lane.disable()


def _snapshot(stream: _Stream) -> StreamCounters:
    stream.sync()
    return stream.relay.snapshot()


class _Call:
    __slots__ = ("idle_reported", "opened_at", "streams")

    def __init__(self, now: float) -> None:
        self.streams: dict[int, _Stream] = {}
        self.opened_at = now
        self.idle_reported = False

    def last_activity(self) -> float:
        # Reads the fast path's last-packet stamps without folding its counters: this runs
        # for every call each check interval, and a full sync of every stream once a second
        # was a pause of milliseconds at 1000 calls (it showed as the p99.9 latency tail).
        last = self.opened_at
        for stream in self.streams.values():
            c = stream.relay.counters
            last = max(last, c.last_lan_packet, c.last_wan_packet)
            lanes = stream.lanes
            if lanes is not None:
                last = max(last, lanes[0].last_packet, lanes[1].last_packet)
        return last


class _Worker:
    def __init__(
        self,
        control: socket.socket,
        *,
        lan_address: str,
        wan_address: str,
        inactivity_timeout: float,
        dscp: int,
        keep_core_awake: bool = False,
        fast_path: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        ssrc_idle: float = SSRC_IDLE_S,
    ) -> None:
        """``fast_path`` None follows :func:`fastpath_enabled`; ``clock`` is the Python loop's
        time source (tests hand both loops the same times; the C loop reads CLOCK_MONOTONIC,
        which is what ``time.monotonic`` reads too); ``ssrc_idle`` is how long a kept SSRC
        must be silent before a new one may take its slot (relay.SsrcGate; tests shorten it)."""
        self._control = control
        self._clock = clock
        self._lan_address = lan_address
        self._wan_address = wan_address
        self._inactivity_timeout = inactivity_timeout
        self._check_interval = min(1.0, max(inactivity_timeout / 2, 0.05))
        self._idle_pending: list[str] = []  # calls the current idle-check pass has still to see
        self._dscp = dscp
        self._epoll = select.epoll()
        self._calls: dict[str, _Call] = {}
        self._ssrc_idle = ssrc_idle
        # fd → (socket, relay handler, the stream's sockets to send from, and the stream when
        # the C loop serves some of it)
        self._handlers: dict[
            int, tuple[socket.socket, _Handler, tuple[socket.socket, ...], _Stream | None]
        ] = {}
        self._in = bytearray()
        self._out = bytearray()
        self._running = True
        self._checkpoints = checkpoint.Checkpointer(clock())
        self._warned: set[str] = set()
        self._dtls = DtlsStreams(self._send, self._warn)  # handshakes of DTLS-keyed streams
        fast = fastpath_enabled() if fast_path is None else fast_path and _fastpath is not None
        if fast:
            refusal = fastpath_refusal()
            if refusal is not None:
                self._warn(f"C fast path off: {refusal}; the Python loop relays every packet")
                fast = False
        self._engine: _fastpath.Engine | None = (
            _fastpath.Engine(self._epoll.fileno(), keep_core_awake=keep_core_awake)
            if fast
            else None
        )

    # -- control channel -----------------------------------------------------------------

    def _warn(self, text: str) -> None:
        # Once per distinct text: a peer repeating a mistake must not flood stderr.
        if text not in self._warned:
            self._warned.add(text)
            print(f"media worker: {text}", file=sys.stderr, flush=True)

    def _send(self, message: msgspec.Struct) -> None:
        payload = ENCODER.encode(message)
        self._out += len(payload).to_bytes(4, "big")
        self._out += payload
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self._control.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._running = False  # the signalling process is gone
                return
            del self._out[:sent]
        events = select.EPOLLIN | (select.EPOLLOUT if self._out else 0)
        self._epoll.modify(self._control.fileno(), events)

    def _read_control(self, now: float) -> None:
        while True:
            try:
                chunk = self._control.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._running = False  # EOF: the signalling process closed or died
                return
            self._in += chunk
        while len(self._in) >= 4:
            length = int.from_bytes(self._in[:4], "big")
            if length > MAX_CONTROL_MESSAGE:
                self._warn(f"control framing lost (length {length}); stopping")
                self._running = False
                return
            if len(self._in) < 4 + length:
                break
            payload = bytes(self._in[4 : 4 + length])
            del self._in[: 4 + length]
            try:
                command = COMMAND_DECODER.decode(payload)
            except msgspec.DecodeError as exc:
                self._warn(f"invalid control message ignored: {exc}")
                continue
            self._handle(command, now)

    def _handle(self, command: object, now: float) -> None:
        if isinstance(command, OpenStream):
            error = self._open(command.call_id, command.stream, command.spec, now, command.restore)
            self._send(StreamOpened(call_id=command.call_id, stream=command.stream, error=error))
        elif isinstance(command, UpdateStream):
            call = self._calls.get(command.call_id)
            stream = call.streams.get(command.stream) if call else None
            if stream is None:
                self._warn("update for an unknown stream ignored")
                return
            stream.updates += 1
            if command.spec.wan_dtls is not None and stream.key not in self._dtls:
                self._dtls_take(stream, command.call_id, command.stream, now)
            try:  # a DTLS-keyed stream keeps its association's keys (dtls_streams)
                stream.relay.update(self._dtls.update(stream.key, command.spec, now))
            except ValueError as exc:  # bad keying: keep the stream as it was
                self._warn(f"update of {stream.key} refused: {exc}")
        elif isinstance(command, CloseCall):
            call = self._calls.get(command.call_id)
            streams = {s.key: _snapshot(s) for s in call.streams.values()} if call else {}
            self._close_call(command.call_id)
            self._send(CallClosed(call_id=command.call_id, streams=streams))
        elif isinstance(command, QueryStats):
            streams = {
                s.key: _snapshot(s) for call in self._calls.values() for s in call.streams.values()
            }
            self._send(
                WorkerStats(
                    request_id=command.request_id,
                    streams=streams,
                    cpu_seconds=time.process_time(),
                )
            )
        elif isinstance(command, Shutdown):
            self._running = False
        elif isinstance(command, SetDtlsIdentity):
            self._dtls.set_identity(command.certificate, command.key)

    # -- streams -------------------------------------------------------------------------

    def _open(
        self, call_id: str, index: int, spec: StreamSpec, now: float, restore: Restore = None
    ) -> str | None:
        call = self._calls.get(call_id)
        if call is not None and index in call.streams:
            return f"stream {call_id}/{index} is already open"
        try:
            relay = RelayStream(spec, ssrc_idle=self._ssrc_idle)
        except ValueError as exc:
            return f"invalid stream spec: {exc}"
        if restore is not None:  # a stream a dead worker held: before the fast path sees it
            checkpoint.restore(relay, restore, now)
        sockets: list[socket.socket] = []
        binds = (
            (self._lan_address, spec.lan_port),
            (self._lan_address, spec.lan_port + 1),
            (self._wan_address, spec.wan_port),
            (self._wan_address, spec.wan_port + 1),
        )
        try:
            for address, port in binds:
                try:
                    sockets.append(media_socket(address, port, self._dscp))
                except OSError as exc:
                    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
                    return f"cannot bind {address}:{port}: {reason}"
        finally:
            if len(sockets) != len(binds):
                for sock in sockets:
                    sock.close()
        if call is None:
            call = self._calls[call_id] = _Call(now)
        stream = _Stream(f"{call_id}/{index}", relay, tuple(sockets))
        stream.restoring = checkpoint.restoring(relay)
        call.streams[index] = stream
        handlers = (
            relay.from_lan_rtp,
            relay.from_lan_rtcp,
            relay.from_wan_rtp,
            relay.from_wan_rtcp,
        )
        engine = self._engine
        if engine is not None and all(s.family == socket.AF_INET for s in stream.sockets):
            assert _fastpath is not None
            idle = self._ssrc_idle
            stream.lanes = (
                _fastpath.Lane(_fastpath.PROTECT, NATIVE_REASONS, ssrc_idle=idle),
                _fastpath.Lane(_fastpath.UNPROTECT, NATIVE_REASONS, ssrc_idle=idle),
            )
            engine.attach(stream.sockets[LAN_RTP].fileno(), stream.lanes[0])
            engine.attach(stream.sockets[WAN_RTP].fileno(), stream.lanes[1])
            relay.on_change = stream.refresh
            stream.refresh()
        # Every socket of a stream with lanes: RTCP from the phone goes through the same SSRC
        # gate, whose last-heard times the C lanes hold.
        served = stream if stream.lanes is not None else None
        for sock, handler in zip(stream.sockets, handlers, strict=True):
            self._handlers[sock.fileno()] = (sock, handler, stream.sockets, served)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        if spec.wan_dtls is not None:
            self._dtls_take(stream, call_id, index, now)
        return None

    def _dtls_take(self, stream: _Stream, call_id: str, index: int, now: float) -> None:
        """DTLS-SRTP on the WAN RTP port (RFC 7983 demultiplexing), its RTCP rules on both."""
        wan = stream.sockets[WAN_RTP]
        rtcp = stream.sockets[WAN_RTCP]  # its own association without rtcp-mux (RFC 5764 §4.1)
        handlers = self._dtls.open(stream.key, call_id, index, stream.relay, wan, now, rtcp)
        for which, handler in handlers.items():
            sock = stream.sockets[which]
            entry = self._handlers[sock.fileno()]
            self._handlers[sock.fileno()] = (sock, handler, entry[2], entry[3])

    def _close_stream(self, stream: _Stream) -> None:
        stream.release()
        self._dtls.close(stream.key)
        for sock in stream.sockets:
            fd = sock.fileno()
            self._handlers.pop(fd, None)
            if self._engine is not None:
                self._engine.detach(fd)
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            sock.close()
        stream.relay.close()

    def _close_call(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        for index, stream in call.streams.items():
            self._close_stream(stream)
            self._checkpoints.forget(call_id, index)

    def _check_idle(self, now: float) -> None:
        """Look at the next few calls of the current pass (see ``IDLE_CHECK_BATCH``)."""
        pending = self._idle_pending
        for _ in range(min(len(pending), IDLE_CHECK_BATCH)):
            call_id = pending.pop()
            call = self._calls.get(call_id)
            if call is None:
                continue  # closed since the pass began
            idle = now - call.last_activity()
            if idle < self._inactivity_timeout:
                call.idle_reported = False  # media came back: report again if it stops
            elif not call.idle_reported:
                call.idle_reported = True
                self._send(StreamIdle(call_id=call_id, idle_seconds=idle))

    # -- loop ----------------------------------------------------------------------------

    def _wake_at(self, next_check: float) -> float:
        """When the loop must come back even without packets: the next idle-check pass, or
        the next batch of the pass under way."""
        next_check = min(next_check, self._checkpoints.next_due, self._dtls.next_due)
        if self._idle_pending or self._checkpoints.busy:
            return min(next_check, self._clock() + IDLE_CHECK_STEP_S)
        return next_check

    def _idle_step(self, now: float, next_check: float) -> float:
        """Start a pass over every call when one is due, check the next batch; returns when
        the next pass is due."""
        if now >= next_check:
            self._idle_pending = list(self._calls)
            next_check = now + self._check_interval
        if self._idle_pending:
            self._check_idle(now)
        if self._dtls.pending or now >= self._dtls.next_due:
            self._dtls.step(now)  # handshakes that progressed or whose timer is due
        changed = self._checkpoints.step(now, self._calls)
        if changed:
            self._send(Checkpoints(checkpoints=changed))
        return next_check

    def _control_event(self, mask: int, now: float) -> None:
        if mask & select.EPOLLOUT:
            self._flush()
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read_control(now)

    def run(self) -> None:
        control_fd = self._control.fileno()
        self._control.setblocking(False)
        self._epoll.register(control_fd, select.EPOLLIN)
        gc.collect()
        gc.freeze()  # start-up objects never need collecting again
        try:
            if self._engine is not None:
                self._run_fast(control_fd)
            else:
                self._run_python(control_fd)
        finally:
            for call_id in list(self._calls):
                self._close_call(call_id)
            self._epoll.close()

    def _run_fast(self, control_fd: int) -> None:
        """The loop with the C fast path: Python sees only what it does not serve."""
        fast_round = self._fast_round
        clock = self._clock
        ceil = math.ceil
        next_check = clock() + self._check_interval
        while self._running:
            timeout_ms = max(0, ceil((self._wake_at(next_check) - clock()) * 1000.0))
            now = fast_round(timeout_ms, control_fd)
            next_check = self._idle_step(now, next_check)

    def _fast_round(self, timeout_ms: int, control_fd: int) -> float:
        """One return of the C loop (it stays in C while it serves everything): relay what
        it hands back, and return the time it read after its last wait."""
        handlers = self._handlers
        assert self._engine is not None
        now, events, packets = self._engine.poll(timeout_ms)
        for fd, data, source in packets:
            # Read by the fast path but declined before it changed anything: the full
            # rules decide (and count) as if the Python loop had read it.
            entry = handlers.get(fd)
            if entry is None:
                continue
            served = entry[3]
            if served is not None:
                forward = served.python_turn(entry[1], data, source, now)
            else:  # only lane sockets hand packets back; kept for safety
                forward = entry[1](data, source, now)
            if forward is not None:
                try:  # noqa: SIM105 - suppress() builds a context manager per packet
                    entry[2][forward[2]].sendto(forward[0], forward[1])
                except OSError:
                    pass
        for fd, mask in events:
            entry = handlers.get(fd)
            if entry is None:
                if fd == control_fd:
                    self._control_event(mask, now)
                continue
            try:
                data, source = entry[0].recvfrom(RECV_SIZE)
            except OSError:
                continue
            served = entry[3]
            if served is not None:  # the C lanes may hold state these rules read
                forward = served.python_turn(entry[1], data, source, now)
            else:
                forward = entry[1](data, source, now)
            if forward is not None:
                try:  # noqa: SIM105
                    entry[2][forward[2]].sendto(forward[0], forward[1])
                except OSError:
                    pass
        return now

    def _run_python(self, control_fd: int) -> None:
        python_round = self._python_round
        clock = self._clock
        next_check = clock() + self._check_interval
        while self._running:
            now = python_round(max(0.0, self._wake_at(next_check) - clock()), control_fd)
            next_check = self._idle_step(now, next_check)

    def _python_round(self, timeout: float, control_fd: int) -> float:
        """One epoll round of the pure-Python loop; returns the time the packets were
        handled at."""
        handlers = self._handlers
        events = self._epoll.poll(timeout)
        now = self._clock()
        for fd, mask in events:
            entry = handlers.get(fd)
            if entry is None:
                if fd == control_fd:
                    self._control_event(mask, now)
                continue
            # One datagram per readiness report: epoll is level-triggered, so a socket
            # with more queued is reported again by the next poll, which serves every ready
            # socket once per round (fair, no burst limit needed). Draining until EAGAIN
            # would cost a raised BlockingIOError per wake-up, and at 50 packets/s per
            # socket nearly every wake-up finds one datagram.
            try:
                data, source = entry[0].recvfrom(RECV_SIZE)
            except OSError:
                continue  # EAGAIN after all, or a queued ICMP error: read on later
            forward = entry[1](data, source, now)
            if forward is not None:
                try:  # noqa: SIM105 - suppress() builds a context manager per packet
                    entry[2][forward[2]].sendto(forward[0], forward[1])
                except OSError:
                    pass  # a full send buffer drops the packet, as the network would
        return now


def run_worker(
    control: socket.socket | int,
    *,
    lan_address: str,
    wan_address: str,
    inactivity_timeout: float,
    dscp: int = 46,
    keep_core_awake: bool = False,
    cpu: int | None = None,
    realtime_priority: int = 0,
) -> None:
    """Run a media worker until Shutdown or until the control channel closes.

    ``control`` is a connected stream socket (or its file descriptor) to the signalling
    process; media sockets are bound on ``lan_address`` and ``wan_address``. ``cpu`` pins the
    worker to that core (ignored when not allowed). With the C fast path, ``keep_core_awake``
    runs a SCHED_IDLE thread on the worker's core that keeps it out of idle while media is
    dense (see ``keeper_main`` in ``_fastpath.c``). ``realtime_priority`` > 0 runs the packet
    loop's thread (only: the keeper stays SCHED_IDLE) at that SCHED_FIFO priority.
    """
    if cpu is not None:
        with contextlib.suppress(OSError):  # a core outside our cpuset: run unpinned
            os.sched_setaffinity(0, {cpu})
    sock = socket.socket(fileno=control) if isinstance(control, int) else control
    try:
        worker = _Worker(
            sock,
            lan_address=lan_address,
            wan_address=wan_address,
            inactivity_timeout=inactivity_timeout,
            dscp=dscp,
            keep_core_awake=keep_core_awake,
        )
        if realtime_priority:
            # After the keeper thread exists: a thread inherits its creator's policy.
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))
            except OSError as exc:
                print(
                    f"media worker: real-time priority {realtime_priority} refused "
                    f"({exc.strerror}); running with normal scheduling. Grant CAP_SYS_NICE "
                    "or LimitRTPRIO= in the service unit, or set media.realtime_priority = 0.",
                    file=sys.stderr,
                    flush=True,
                )
        worker.run()
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point used by the controller to spawn a worker."""
    parser = argparse.ArgumentParser(prog="python -m gateway.media.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--lan-address", required=True)
    parser.add_argument("--wan-address", required=True)
    parser.add_argument("--inactivity-timeout", type=float, default=60.0)
    parser.add_argument("--dscp", type=int, default=46)
    parser.add_argument("--keep-core-awake", action="store_true")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--realtime-priority", type=int, default=0)
    args = parser.parse_args(argv)
    # Ctrl-C and a service manager's SIGTERM reach the whole process group (systemd's
    # KillMode=control-group does so): the signalling process decides when we stop (Shutdown,
    # or its end closing the control channel), so calls keep their media through its drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run_worker(
        args.control_fd,
        lan_address=args.lan_address,
        wan_address=args.wan_address,
        inactivity_timeout=args.inactivity_timeout,
        dscp=args.dscp,
        keep_core_awake=args.keep_core_awake,
        cpu=args.cpu,
        realtime_priority=args.realtime_priority,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
