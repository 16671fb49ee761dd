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

Media sockets are marked DSCP EF (RFC 3246, ``46 << 2`` in IP_TOS) and get large buffers; the
heap built at start-up is frozen out of the garbage collector's view (``gc.freeze``) so
collections stay short while packets flow.

Run as ``python -m gateway.media.worker --control-fd N --lan-address A --wan-address B``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

import msgspec

from gateway.media.control import (
    COMMAND_DECODER,
    ENCODER,
    CallClosed,
    CloseCall,
    OpenStream,
    QueryStats,
    Shutdown,
    StreamIdle,
    StreamOpened,
    StreamSpec,
    UpdateStream,
    WorkerStats,
)
from gateway.media.relay import Address, Forward, RelayStream

__all__ = ["main", "media_socket", "run_worker"]

#: Receive size: larger than any sane RTP datagram (libsrtp's buffer is 1500 bytes anyway).
RECV_SIZE = 2048
#: Socket buffers: a few hundred milliseconds of many streams (the kernel caps at rmem_max).
SOCKET_BUFFER = 1 << 20
#: A control message longer than this means the framing is lost.
MAX_CONTROL_MESSAGE = 16 << 20

_Handler = Callable[[bytes, Address, float], Forward | None]


def media_socket(address: str, port: int, dscp: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``address:port``, marked with ``dscp``.

    Raises OSError (e.g. EADDRINUSE) when the bind fails.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        tos = dscp << 2  # DSCP sits in the upper six bits of the TOS / traffic class byte
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # a smaller buffer is not worth failing a call
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Stream:
    """A relay and the four sockets it uses, indexed like ``relay.LAN_RTP`` … ``WAN_RTCP``."""

    __slots__ = ("key", "relay", "sockets")

    def __init__(self, key: str, relay: RelayStream, sockets: tuple[socket.socket, ...]) -> None:
        self.key = key
        self.relay = relay
        self.sockets = sockets


class _Call:
    __slots__ = ("idle_reported", "opened_at", "streams")

    def __init__(self, now: float) -> None:
        self.streams: dict[int, _Stream] = {}
        self.opened_at = now
        self.idle_reported = False

    def last_activity(self) -> float:
        last = self.opened_at
        for stream in self.streams.values():
            c = stream.relay.counters
            last = max(last, c.last_lan_packet, c.last_wan_packet)
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
    ) -> None:
        self._control = control
        self._lan_address = lan_address
        self._wan_address = wan_address
        self._inactivity_timeout = inactivity_timeout
        self._check_interval = min(1.0, max(inactivity_timeout / 2, 0.05))
        self._dscp = dscp
        self._epoll = select.epoll()
        self._calls: dict[str, _Call] = {}
        # fd → (socket, relay handler, the stream's sockets to send from)
        self._handlers: dict[int, tuple[socket.socket, _Handler, tuple[socket.socket, ...]]] = {}
        self._in = bytearray()
        self._out = bytearray()
        self._running = True
        self._warned: set[str] = set()

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
            error = self._open(command.call_id, command.stream, command.spec, now)
            self._send(StreamOpened(call_id=command.call_id, stream=command.stream, error=error))
        elif isinstance(command, UpdateStream):
            call = self._calls.get(command.call_id)
            stream = call.streams.get(command.stream) if call else None
            if stream is None:
                self._warn("update for an unknown stream ignored")
                return
            try:
                stream.relay.update(command.spec)
            except ValueError as exc:  # bad keying: keep the stream as it was
                self._warn(f"update of {stream.key} refused: {exc}")
        elif isinstance(command, CloseCall):
            call = self._calls.get(command.call_id)
            streams = {s.key: s.relay.snapshot() for s in call.streams.values()} if call else {}
            self._close_call(command.call_id)
            self._send(CallClosed(call_id=command.call_id, streams=streams))
        elif isinstance(command, QueryStats):
            streams = {
                s.key: s.relay.snapshot()
                for call in self._calls.values()
                for s in call.streams.values()
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

    # -- streams -------------------------------------------------------------------------

    def _open(self, call_id: str, index: int, spec: StreamSpec, now: float) -> str | None:
        call = self._calls.get(call_id)
        if call is not None and index in call.streams:
            return f"stream {call_id}/{index} is already open"
        try:
            relay = RelayStream(spec)
        except ValueError as exc:
            return f"invalid stream spec: {exc}"
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
        call.streams[index] = stream
        handlers = (
            relay.from_lan_rtp,
            relay.from_lan_rtcp,
            relay.from_wan_rtp,
            relay.from_wan_rtcp,
        )
        for sock, handler in zip(stream.sockets, handlers, strict=True):
            self._handlers[sock.fileno()] = (sock, handler, stream.sockets)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        return None

    def _close_stream(self, stream: _Stream) -> None:
        for sock in stream.sockets:
            fd = sock.fileno()
            self._handlers.pop(fd, None)
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            sock.close()
        stream.relay.close()

    def _close_call(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        for stream in call.streams.values():
            self._close_stream(stream)

    def _check_idle(self, now: float) -> None:
        for call_id, call in self._calls.items():
            idle = now - call.last_activity()
            if idle < self._inactivity_timeout:
                call.idle_reported = False  # media came back: report again if it stops
            elif not call.idle_reported:
                call.idle_reported = True
                self._send(StreamIdle(call_id=call_id, idle_seconds=idle))

    # -- loop ----------------------------------------------------------------------------

    def run(self) -> None:
        control_fd = self._control.fileno()
        self._control.setblocking(False)
        self._epoll.register(control_fd, select.EPOLLIN)
        handlers = self._handlers
        poll = self._epoll.poll
        monotonic = time.monotonic
        next_check = monotonic() + self._check_interval
        gc.collect()
        gc.freeze()  # start-up objects never need collecting again
        try:
            while self._running:
                timeout = max(0.0, next_check - monotonic())
                events = poll(timeout)
                now = monotonic()
                for fd, mask in events:
                    entry = handlers.get(fd)
                    if entry is None:
                        if fd == control_fd:
                            if mask & select.EPOLLOUT:
                                self._flush()
                            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                                self._read_control(now)
                        continue
                    # One datagram per readiness report: epoll is level-triggered, so a
                    # socket with more queued is reported again by the next poll, which
                    # serves every ready socket once per round (fair, no burst limit needed).
                    # Draining until EAGAIN would cost a raised BlockingIOError per wake-up,
                    # and at 50 packets/s per socket nearly every wake-up finds one datagram.
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
                if now >= next_check:
                    self._check_idle(now)
                    next_check = now + self._check_interval
        finally:
            for call_id in list(self._calls):
                self._close_call(call_id)
            self._epoll.close()


def run_worker(
    control: socket.socket | int,
    *,
    lan_address: str,
    wan_address: str,
    inactivity_timeout: float,
    dscp: int = 46,
) -> None:
    """Run a media worker until Shutdown or until the control channel closes.

    ``control`` is a connected stream socket (or its file descriptor) to the signalling
    process; media sockets are bound on ``lan_address`` and ``wan_address``.
    """
    sock = socket.socket(fileno=control) if isinstance(control, int) else control
    try:
        _Worker(
            sock,
            lan_address=lan_address,
            wan_address=wan_address,
            inactivity_timeout=inactivity_timeout,
            dscp=dscp,
        ).run()
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
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the signalling process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(
        args.control_fd,
        lan_address=args.lan_address,
        wan_address=args.wan_address,
        inactivity_timeout=args.inactivity_timeout,
        dscp=args.dscp,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
