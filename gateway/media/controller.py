"""Signalling-process side of the media workers (asyncio; RFC 3550/3711 media, RFC 4568 keys).

:class:`MediaController` starts N worker processes (``python -m gateway.media.worker``), each with
a socketpair as its control channel, and drives them with the length-prefixed msgspec messages
of :mod:`gateway.media.control`. A call's streams all live on one worker, chosen by a stable hash
of the Call-ID (CRC-32, not Python's salted ``hash``), so every message about a call reaches the
worker that holds its sockets and keys.

Workers are separate programs started with ``asyncio.create_subprocess_exec``: no fork of a
process that runs uvloop, TLS and threads, and nothing inherited but the control socket. A
worker that dies is logged at error level and restarted in the same slot (so the hash still
points there).

Calls survive a worker's crash: the controller keeps, per stream, the last spec it sent and the
latest :class:`~gateway.media.control.StreamCheckpoint` the worker reported (latches, kept
SSRCs, SRTP indexes: see :mod:`gateway.media.checkpoint`), and re-opens every stream of the
dead worker on its successor with them. Only the calls whose streams could not be re-opened
are handed to ``on_worker_lost``. A slot whose worker dies ``restart_limit`` times within
``restart_window`` seconds is in a crash loop: it is not restarted again, its calls are handed
to ``on_worker_lost``, and :meth:`MediaController.worker_states` shows it as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from gateway.media.control import (
    ENCODER,
    REPORT_DECODER,
    CallClosed,
    Checkpoints,
    CloseCall,
    DtlsFailed,
    DtlsKeyed,
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
from gateway.media.dtls_identity import DtlsIdentity
from gateway.state.calls import ReplicatedStream
from gateway.transport import freebind

__all__ = ["MediaController", "MediaError"]

log = logging.getLogger(__name__)

#: How long a worker may take to answer OpenStream or QueryStats.
REPLY_TIMEOUT = 5.0
#: A worker that dies sooner than this after starting is restarted after a pause, not at once.
_CRASH_LOOP_SECONDS = 1.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


#: What a media worker inherits of the signalling process's environment, by name and prefix.
#: Nothing else: the admin token, the state key, trunk passwords and systemd's notify socket
#: live in the same environment, and a worker parsing hostile packets all day must hold none.
_WORKER_ENV_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD"}
)
_WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "GATEWAY_MEDIA_", "ASAN_", "UBSAN_")


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a media worker is started with (an allowlist)."""
    return {
        name: value
        for name, value in environ.items()
        if name in _WORKER_ENV_NAMES or name.startswith(_WORKER_ENV_PREFIXES)
    }


class MediaError(Exception):
    """A media operation failed (bind refused, worker gone, no reply)."""

    #: The SIP status the signalling layer should answer with when this stops a call.
    status_hint = 500


class _Record:
    """What re-opens one stream on a new worker: its spec, the UpdateStream messages sent
    (a checkpoint names how many it had applied) and its latest checkpoint."""

    __slots__ = ("checkpoint", "dtls_keys", "spec", "updates")

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.updates = 0
        self.checkpoint: StreamCheckpoint | None = None
        #: The WAN keys the worker's DTLS-SRTP handshake gave (gateway/media/dtls_streams.py).
        self.dtls_keys: DtlsKeyed | None = None

    def update(self, spec: StreamSpec) -> None:
        old, self.spec = self.spec, spec
        keys = self.dtls_keys
        if keys is not None and (
            spec.wan_dtls is None or spec.wan_dtls.generation != keys.generation
        ):
            self.dtls_keys = None  # a new association: its handshake gives new keys
        self.updates += 1
        cp = self.checkpoint
        if cp is not None and (old.wan_tx != spec.wan_tx or old.wan_rx != spec.wan_rx):
            # New keys are a new crypto context (RFC 4568 §7.1.4): its indexes start afresh.
            tx = cp.tx if old.wan_tx == spec.wan_tx else ()
            rx = cp.rx if old.wan_rx == spec.wan_rx else ()
            self.checkpoint = msgspec.structs.replace(cp, tx=tx, rx=rx, updates=self.updates)

    def restore(self, call_id: str, stream: int) -> OpenStream:
        cp = self.checkpoint or StreamCheckpoint(call_id=call_id, stream=stream)
        self.updates = 0  # the new worker counts its own updates from here
        spec = self.carried_spec()
        return OpenStream(call_id=call_id, stream=stream, spec=spec, restore=cp)

    def carried_spec(self) -> StreamSpec:
        """The spec a successor (a restarted worker, the other gateway of a pair) opens the
        stream with: a DTLS-keyed one with its association's keys, so no new handshake."""
        spec, keys = self.spec, self.dtls_keys
        if keys is not None:  # without rtcp-mux, the RTCP port's association's keys too
            rtcp = {"wan_rtcp_tx": keys.rtcp_tx, "wan_rtcp_rx": keys.rtcp_rx}
            spec = msgspec.structs.replace(spec, wan_tx=keys.tx, wan_rx=keys.rx, **rtcp)
        return spec

    @classmethod
    def carried(cls, call_id: str, stream: int, spec: StreamSpec) -> _Record:
        """The record of a stream taken over with :meth:`carried_spec`'s spec: the keys go
        back into ``dtls_keys`` and the spec is the one the signalling sends (no keys), so
        its later updates compare as on the old gateway."""
        dtls, tx, rx = spec.wan_dtls, spec.wan_tx, spec.wan_rx
        if dtls is None or tx is None or rx is None:
            return cls(spec)
        rtcp_tx, rtcp_rx = spec.wan_rtcp_tx, spec.wan_rtcp_rx
        spec = msgspec.structs.replace(spec, wan_rtcp_tx=None, wan_rtcp_rx=None)
        record = cls(msgspec.structs.replace(spec, wan_tx=None, wan_rx=None))
        record.dtls_keys = DtlsKeyed(call_id, stream, dtls.generation, tx, rx, rtcp_tx, rtcp_rx)
        return record


class _WorkerHandle:
    """One worker slot: its process, control channel and what is pending on it."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.calls: set[str] = set()
        #: Monotonic times of this slot's recent worker deaths (crash-loop detection).
        self.deaths: list[float] = []
        self.restarts = 0
        #: Calls the last restart re-opened on the successor / handed to ``on_worker_lost``.
        self.last_restored: int | None = None
        self.last_lost: int | None = None
        #: Set when the slot is in a crash loop and no longer restarted.
        self.failed: str | None = None
        self.running = asyncio.Event()
        self.pending_open: dict[tuple[str, int], asyncio.Future[str | None]] = {}
        self.pending_stats: dict[int, asyncio.Future[dict[str, StreamCounters]]] = {}
        self.pending_close: dict[str, asyncio.Future[dict[str, StreamCounters]]] = {}

    @property
    def alive(self) -> bool:
        return self.writer is not None


class MediaController:
    """Starts, drives and supervises the media worker processes."""

    def __init__(
        self,
        *,
        lan_address: str,
        wan_address: str,
        workers: int | None = None,
        inactivity_timeout: float = 60.0,
        dscp: int = 46,
        keep_core_awake: bool = False,
        pin_workers: bool = False,
        realtime_priority: int = 0,
        on_idle: Callable[[str], None] | None = None,
        on_worker_lost: Callable[[list[str]], None] | None = None,
        on_worker_restarted: Callable[[int, int, int], None] | None = None,
        restart_limit: int = 3,
        restart_window: float = 60.0,
        dtls_identity: DtlsIdentity | None = None,
        on_dtls_failed: Callable[[str, str], None] | None = None,
        on_dtls_keyed: Callable[[str, int, int, str], None] | None = None,
    ) -> None:
        """``workers`` defaults to one per core but one (the signalling process's own).

        ``on_worker_restarted(slot, calls_restored, calls_lost)`` is called after a dead
        worker's successor took its calls back; ``restart_limit`` deaths of one slot within
        ``restart_window`` seconds stop its restarts (a crash loop)."""
        count = workers if workers is not None else max(1, (os.cpu_count() or 1) - 1)
        if count < 1:
            raise ValueError("at least one media worker is needed")
        self._lan_address = lan_address
        self._wan_address = wan_address
        self._inactivity_timeout = inactivity_timeout
        self._dscp = dscp
        self._keep_core_awake = keep_core_awake
        self._pin_workers = pin_workers
        self._realtime_priority = realtime_priority
        self.on_idle = on_idle
        self.on_worker_lost = on_worker_lost
        self.on_worker_restarted = on_worker_restarted
        #: The certificate every worker's DTLS-SRTP handshakes present (None: no DTLS).
        self.dtls_identity = dtls_identity
        #: ``on_dtls_failed(call_id, reason)``: a stream's DTLS-SRTP handshake failed.
        self.on_dtls_failed = on_dtls_failed
        #: ``on_dtls_keyed(call_id, stream, generation, suite)``: a handshake agreed a suite.
        self.on_dtls_keyed = on_dtls_keyed
        self._restart_limit = max(1, restart_limit)
        self._restart_window = restart_window
        #: Per call, its streams' records by index: a call's look-ups (replication each
        #: second, a close, a restore) cost its own streams, not every call's.
        self._records: dict[str, dict[int, _Record]] = {}
        self._workers = [_WorkerHandle(slot) for slot in range(count)]
        self._request_ids = itertools.count(1)
        self._stopping = False
        #: Stream sockets bind with IP_FREEBIND (an HA pair: gateway.transport.freebind).
        self.freebind = False
        #: Calls carried over to a restarted worker, since start (for operators' metrics).
        self.calls_restored = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker process."""
        self._stopping = False
        for handle in self._workers:
            await self._spawn(handle)

    async def stop(self) -> None:
        """Ask every worker to shut down, wait for it (bounded), kill a worker that hangs."""
        self._stopping = True
        for handle in self._workers:
            writer = handle.writer
            if writer is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    self._write(handle, Shutdown())
                    await writer.drain()
        for handle in self._workers:
            process = handle.process
            if process is not None:
                try:
                    await asyncio.wait_for(process.wait(), REPLY_TIMEOUT)
                except TimeoutError:
                    log.error("media worker %d ignored Shutdown; killing it", handle.slot)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            if handle.reader_task is not None:
                handle.reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handle.reader_task
            self._detach(handle, "media controller stopped")

    async def __aenter__(self) -> MediaController:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_running(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Wait until every worker slot runs (after start or a restart); MediaError on timeout."""
        try:
            async with asyncio.timeout(timeout):
                for handle in self._workers:
                    await handle.running.wait()
        except TimeoutError:
            raise MediaError("media workers did not come up") from None

    def worker_pids(self) -> list[int | None]:
        """Process ids per slot (None for a slot that is not running), for operators."""
        return [h.process.pid if h.process and h.alive else None for h in self._workers]

    def worker_states(self) -> list[dict[str, object]]:
        """Per slot, for operators: pid (None when down), state ("running", "restarting" or
        "failed"), restarts so far, the last restart's calls restored and lost (None before
        any restart), and why it is failed (None when it is not in a crash loop)."""
        return [
            {
                "slot": h.slot,
                "pid": h.process.pid if h.process and h.alive else None,
                "state": "failed" if h.failed else "running" if h.alive else "restarting",
                "restarts": h.restarts,
                "last_restored": h.last_restored,
                "last_lost": h.last_lost,
                "failed": h.failed,
            }
            for h in self._workers
        ]

    # -- commands ------------------------------------------------------------------------

    def _worker_for(self, call_id: str) -> _WorkerHandle:
        return self._workers[zlib.crc32(call_id.encode()) % len(self._workers)]

    def submit(self, command: OpenStream | UpdateStream | CloseCall) -> Awaitable[None]:
        """Write ``command`` to its worker now and return an awaitable for the outcome.

        Writing happens before this returns, so a caller that sends SIP right after (the 200
        that makes the provider start sending media) knows the worker sees the command first:
        the control channel is ordered, and the worker binds before it reads anything else.
        """
        if isinstance(command, OpenStream):
            handle = self._live(command.call_id)
            key = (command.call_id, command.stream)
            if key in handle.pending_open:
                raise MediaError(
                    f"stream {command.call_id}/{command.stream} is already being opened"
                )
            future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            handle.pending_open[key] = future
            try:
                self._write(handle, command)
            except MediaError:
                handle.pending_open.pop(key, None)
                raise
            self._records.setdefault(command.call_id, {})[command.stream] = _Record(command.spec)
            return self._opened(handle, key, future)
        if isinstance(command, UpdateStream):
            handle = self._live(command.call_id)
            self._write(handle, command)
            record = self._record(command.call_id, command.stream)
            if record is not None:
                record.update(command.spec)
            return self._drain(handle)
        handle = self._worker_for(command.call_id)
        handle.calls.discard(command.call_id)
        self._forget(command.call_id)
        if not handle.alive:
            return _done()  # its worker died: sockets and keys went with it
        self._write(handle, command)
        return self._drain(handle)

    async def _opened(
        self, handle: _WorkerHandle, key: tuple[str, int], future: asyncio.Future[str | None]
    ) -> None:
        try:
            error = await asyncio.wait_for(future, REPLY_TIMEOUT)
        except TimeoutError:
            self._drop(key)
            raise MediaError(f"media worker {handle.slot} did not answer OpenStream") from None
        except MediaError:
            self._drop(key)
            raise
        finally:
            handle.pending_open.pop(key, None)
        if error is not None:
            self._drop(key)
            raise MediaError(error)
        handle.calls.add(key[0])

    async def open_stream(self, call_id: str, index: int, spec: StreamSpec) -> None:
        """Bind a stream's sockets and start relaying; raises MediaError with the reason."""
        await self.submit(OpenStream(call_id=call_id, stream=index, spec=spec))

    async def close_call(self, call_id: str) -> None:
        """Close every stream of a call: ports released, keys forgotten by the worker."""
        await self.submit(CloseCall(call_id=call_id))

    def submit_close(self, call_id: str) -> Awaitable[dict[str, StreamCounters] | None]:
        """Close a call now (written before this returns) and get its last counters later:
        None when its worker is gone, or did not answer."""
        handle = self._worker_for(call_id)
        handle.calls.discard(call_id)
        self._forget(call_id)
        if not handle.alive:
            return _nothing()
        future: asyncio.Future[dict[str, StreamCounters]] = (
            asyncio.get_running_loop().create_future()
        )
        handle.pending_close[call_id] = future
        try:
            self._write(handle, CloseCall(call_id=call_id))
        except MediaError:
            handle.pending_close.pop(call_id, None)
            return _nothing()
        return self._closed(handle, call_id, future)

    async def _closed(
        self,
        handle: _WorkerHandle,
        call_id: str,
        future: asyncio.Future[dict[str, StreamCounters]],
    ) -> dict[str, StreamCounters] | None:
        try:
            return await asyncio.wait_for(future, REPLY_TIMEOUT)
        except (TimeoutError, MediaError):
            return None
        finally:
            handle.pending_close.pop(call_id, None)

    async def stats(self) -> dict[str, StreamCounters]:
        """Counters of every stream on every live worker, keyed ``"call_id/stream"``."""
        loop = asyncio.get_running_loop()
        waits = []
        for handle in self._workers:
            if not handle.alive:
                continue
            request_id = next(self._request_ids)
            future: asyncio.Future[dict[str, StreamCounters]] = loop.create_future()
            handle.pending_stats[request_id] = future
            self._write(handle, QueryStats(request_id=request_id))
            waits.append((handle, request_id, future))
        merged: dict[str, StreamCounters] = {}
        for handle, request_id, future in waits:
            try:
                merged.update(await asyncio.wait_for(future, REPLY_TIMEOUT))
            except TimeoutError:
                raise MediaError(f"media worker {handle.slot} did not answer QueryStats") from None
            finally:
                handle.pending_stats.pop(request_id, None)
        return merged

    # -- plumbing ------------------------------------------------------------------------

    def _forget(self, call_id: str) -> None:
        """A call ends: its streams' records go."""
        self._records.pop(call_id, None)

    def _record(self, call_id: str, stream: int) -> _Record | None:
        streams = self._records.get(call_id)
        return streams.get(stream) if streams is not None else None

    def _drop(self, key: tuple[str, int]) -> None:
        streams = self._records.get(key[0])
        if streams is not None:
            streams.pop(key[1], None)
            if not streams:
                del self._records[key[0]]

    def checkpoint(self, call_id: str, stream: int) -> StreamCheckpoint | None:
        """The latest checkpoint the controller holds for a stream (for tests and operators)."""
        record = self._record(call_id, stream)
        return record.checkpoint if record is not None else None

    def stream_records(self, call_id: str) -> list[tuple[int, StreamSpec, StreamCheckpoint | None]]:
        """Per stream of a call: its index, the spec its worker runs and the latest
        checkpoint (None before the first): what another gateway needs to carry it on. A
        DTLS-keyed stream's spec carries the keys its handshake gave (DtlsKeyed) in
        ``wan_tx``/``wan_rx``, so the other gateway carries the association on."""
        streams = self._records.get(call_id, {})
        return [(i, streams[i].carried_spec(), streams[i].checkpoint) for i in sorted(streams)]

    async def restore_streams(
        self,
        call_id: str,
        streams: Sequence[ReplicatedStream | tuple[int, StreamSpec, StreamCheckpoint | None]],
    ) -> bool:
        """Open a call's streams taken over from another gateway on the worker the call
        hashes to, each carried on from its checkpoint (latches, SRTP indexes) as after a
        worker crash. False (the call's streams closed again) when one could not be opened,
        the worker is down, or the call has streams here already."""
        handle = self._worker_for(call_id)
        if not streams or not handle.alive or call_id in self._records:
            return False
        for entry in streams:
            if isinstance(entry, ReplicatedStream):
                index, spec, checkpoint = entry.index, entry.spec, entry.checkpoint
            else:
                index, spec, checkpoint = entry
            record = _Record.carried(call_id, index, spec)
            if checkpoint is not None and (checkpoint.call_id, checkpoint.stream) == (
                call_id,
                index,
            ):
                record.checkpoint = checkpoint
            self._records.setdefault(call_id, {})[index] = record
        restored, _failed = await self._restore(handle, [call_id])
        if call_id in restored:
            return True
        handle.calls.discard(call_id)
        self._forget(call_id)
        if handle.alive:
            # Streams that did open must not hold their ports (and keys) for nothing.
            with contextlib.suppress(MediaError):
                self._write(handle, CloseCall(call_id=call_id))
        return False

    def _live(self, call_id: str) -> _WorkerHandle:
        handle = self._worker_for(call_id)
        if not handle.alive:
            raise MediaError(f"media worker {handle.slot} is not running")
        return handle

    def _write(self, handle: _WorkerHandle, message: msgspec.Struct) -> None:
        writer = handle.writer
        if writer is None:
            raise MediaError(f"media worker {handle.slot} is not running")
        payload = ENCODER.encode(message)
        writer.write(len(payload).to_bytes(4, "big") + payload)

    async def _drain(self, handle: _WorkerHandle) -> None:
        writer = handle.writer
        if writer is None:
            raise MediaError(f"media worker {handle.slot} is not running")
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise MediaError(f"media worker {handle.slot}: {exc}") from None

    def _worker_options(self, slot: int) -> list[str]:
        """Worker command-line options beyond addresses and timers."""
        options = ["--keep-core-awake"] if self._keep_core_awake else []
        if self._realtime_priority:
            options += ["--realtime-priority", str(self._realtime_priority)]
        if self._pin_workers:
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) > 1:
                # Core 0 of the allowed set stays with the signalling process and the system;
                # workers take the others in turn (and share them when there are more).
                options += ["--cpu", str(cores[1 + slot % (len(cores) - 1)])]
        return options

    async def _spawn(self, handle: _WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = worker_environment(os.environ)
            if self.freebind:
                env[freebind.MEDIA_ENV] = "1"
            # The worker must import this very package, installed or not.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p
            )
            handle.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.media.worker",
                "--control-fd",
                str(child.fileno()),
                "--lan-address",
                self._lan_address,
                "--wan-address",
                self._wan_address,
                "--inactivity-timeout",
                repr(self._inactivity_timeout),
                "--dscp",
                str(self._dscp),
                *self._worker_options(handle.slot),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        handle.writer = writer
        self._send_identity(handle)
        handle.started_at = time.monotonic()
        handle.running.set()
        handle.reader_task = asyncio.create_task(
            self._read_reports(handle, reader), name=f"media-worker-{handle.slot}"
        )
        log.info("media worker %d started (pid %d)", handle.slot, handle.process.pid)

    def _send_identity(self, handle: _WorkerHandle, *, previous: bool = True) -> None:
        identity = self.dtls_identity
        if identity is not None and handle.writer is not None:
            # A fresh worker gets the replaced certificate first: calls whose SDP named it
            # still handshake with it (the worker keeps both; the last one sent is current).
            if previous and identity.previous is not None:
                self._write(handle, SetDtlsIdentity(*identity.previous))
            self._write(handle, SetDtlsIdentity(identity.certificate_der, identity.key_pem))

    def renew_dtls_identity(self) -> bool:
        """Replace the DTLS certificate when it nears its end and hand it to every worker."""
        if self.dtls_identity is None or not self.dtls_identity.current():
            return False
        for handle in self._workers:
            self._send_identity(handle, previous=False)
        return True

    async def _read_reports(self, handle: _WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                payload = await reader.readexactly(int.from_bytes(header, "big"))
                try:
                    report = REPORT_DECODER.decode(payload)
                except msgspec.DecodeError as exc:
                    log.error("media worker %d sent an invalid report: %s", handle.slot, exc)
                    continue
                self._dispatch(handle, report)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        if not self._stopping:
            await self._worker_lost(handle)

    def _dispatch(self, handle: _WorkerHandle, report: object) -> None:
        if isinstance(report, StreamOpened):
            future = handle.pending_open.get((report.call_id, report.stream))
            if future is not None and not future.done():
                future.set_result(report.error)
        elif isinstance(report, WorkerStats):
            stats_future = handle.pending_stats.get(report.request_id)
            if stats_future is not None and not stats_future.done():
                stats_future.set_result(report.streams)
        elif isinstance(report, CallClosed):
            closed = handle.pending_close.pop(report.call_id, None)
            if closed is not None and not closed.done():
                closed.set_result(report.streams)
        elif isinstance(report, Checkpoints):
            for cp in report.checkpoints:
                record = self._record(cp.call_id, cp.stream)
                # Taken before the worker saw an update the controller has since sent: stale.
                if record is not None and cp.updates == record.updates:
                    record.checkpoint = cp
        elif isinstance(report, DtlsKeyed):
            record = self._record(report.call_id, report.stream)
            dtls = record.spec.wan_dtls if record is not None else None
            if record is not None and dtls is not None and dtls.generation == report.generation:
                first, record.dtls_keys = record.dtls_keys is None, report  # again with RTCP's
                if first and self.on_dtls_keyed is not None:
                    try:
                        self.on_dtls_keyed(
                            report.call_id, report.stream, report.generation, report.tx.suite
                        )
                    except Exception:
                        log.exception("on_dtls_keyed callback failed for call %s", report.call_id)
        elif isinstance(report, DtlsFailed):
            log.warning(
                "call %s stream %d: DTLS-SRTP failed: %s",
                report.call_id,
                report.stream,
                report.reason,
            )
            if self.on_dtls_failed is not None:
                try:
                    self.on_dtls_failed(report.call_id, report.reason)
                except Exception:
                    log.exception("on_dtls_failed callback failed for call %s", report.call_id)
        elif isinstance(report, StreamIdle) and self.on_idle is not None:
            try:
                self.on_idle(report.call_id)
            except Exception:
                log.exception("on_idle callback failed for call %s", report.call_id)

    def _detach(self, handle: _WorkerHandle, reason: str) -> list[str]:
        """Forget a worker's channel; fail what waits on it; return the calls it carried."""
        handle.running.clear()
        if handle.writer is not None:
            handle.writer.close()
            handle.writer = None
        futures: list[asyncio.Future[Any]] = [
            *handle.pending_open.values(),
            *handle.pending_stats.values(),
        ]
        for future in futures:
            if not future.done():
                future.set_exception(MediaError(reason))
        handle.pending_open.clear()
        handle.pending_stats.clear()
        lost = sorted(handle.calls)
        handle.calls.clear()
        return lost

    async def _worker_lost(self, handle: _WorkerHandle) -> None:
        process = handle.process
        lost = self._detach(handle, f"media worker {handle.slot} died")
        code: int | None = None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # a worker that closed its channel but lingers is no use
            code = await process.wait()
        now = time.monotonic()
        handle.deaths = [t for t in handle.deaths if now - t < self._restart_window]
        handle.deaths.append(now)
        log.error(
            "MEDIA WORKER %d DIED (exit status %s) carrying %d call(s): %s",
            handle.slot,
            code,
            len(lost),
            ", ".join(lost) or "none",
        )
        if len(handle.deaths) >= self._restart_limit:
            handle.failed = (
                f"died {len(handle.deaths)} times within {self._restart_window:g} s; not restarted"
            )
            log.critical(
                "MEDIA WORKER %d IS IN A CRASH LOOP (%s): %d call(s) lost their media",
                handle.slot,
                handle.failed,
                len(lost),
            )
            handle.last_restored, handle.last_lost = 0, len(lost)
            self._lose(lost)
            return
        if now - handle.started_at < _CRASH_LOOP_SECONDS:
            await asyncio.sleep(_CRASH_LOOP_SECONDS)  # do not spin if it dies at start-up
        if self._stopping:
            return
        try:
            await self._spawn(handle)
        except Exception:
            log.exception("media worker %d could not be restarted", handle.slot)
            self._lose(lost)
            return
        restored, failed = await self._restore(handle, lost)
        handle.last_restored, handle.last_lost = len(restored), len(failed)
        self.calls_restored += len(restored)
        handle.restarts += 1  # counted once the calls are back (tests wait on it)
        log.warning(
            "media worker %d restarted (pid %s): %d call(s) restored, %d lost",
            handle.slot,
            handle.process.pid if handle.process else None,
            len(restored),
            len(failed),
        )
        self._lose(failed)
        if self.on_worker_restarted is not None:
            try:
                self.on_worker_restarted(handle.slot, len(restored), len(failed))
            except Exception:
                log.exception("on_worker_restarted callback failed")

    async def _restore(
        self, handle: _WorkerHandle, calls: list[str]
    ) -> tuple[list[str], list[str]]:
        """Re-open every stream of ``calls`` on the slot's new worker from its record; returns
        (calls restored, calls that could not be)."""
        waits = []
        for call_id in calls:
            streams = self._records.get(call_id, {})
            if not streams:
                continue  # still being set up when the worker died: its open failed
            for index in sorted(streams):
                key = (call_id, index)
                future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
                handle.pending_open[key] = future
                try:
                    self._write(handle, streams[index].restore(*key))
                except MediaError:
                    handle.pending_open.pop(key, None)
                    future.set_result("worker gone again")
                waits.append((call_id, key, future))
        failed: set[str] = set()
        for call_id, key, future in waits:
            try:
                error = await asyncio.wait_for(future, REPLY_TIMEOUT)
            except (TimeoutError, MediaError):
                error = "no answer"
            finally:
                handle.pending_open.pop(key, None)
            if error is not None:
                log.error("stream %s/%d not restored: %s", key[0], key[1], error)
                failed.add(call_id)
        restored = sorted({c for c, _, _ in waits} - failed)
        for call_id in restored:
            handle.calls.add(call_id)
        for call_id in failed:
            self._forget(call_id)
        return restored, sorted(failed)

    def _lose(self, calls: list[str]) -> None:
        """Hand calls whose media is gone to ``on_worker_lost``."""
        for call_id in calls:
            self._forget(call_id)
        if calls and self.on_worker_lost is not None:
            try:
                self.on_worker_lost(calls)
            except Exception:
                log.exception("on_worker_lost callback failed")


async def _done() -> None:
    return None


async def _nothing() -> None:
    return None
