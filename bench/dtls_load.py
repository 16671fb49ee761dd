"""DTLS-SRTP measured in a running media worker process: handshakes per second beside relayed
calls, and the packet path's cost per packet for SDES- vs DTLS-keyed calls (RFC 5763, RFC 5764).

Usage (from the repository root)::

    .venv/bin/python -m bench.dtls_load                     # 200 calls, 10 s windows, sweep
    .venv/bin/python -m bench.dtls_load --calls 20 --seconds 1 --levels 10 --out /tmp

One media worker is started by :class:`gateway.media.controller.MediaController` (as the
gateway and ``gateway bench`` start it) on 127.0.73.120 (LAN) / .121 (WAN) and pinned to
``--media-cpu``; everything else (this driver, the far ends, the load generator) runs on
``--load-cpu``, so the worker's core is the one measured.

- Beside calls: ``--calls`` SDES-keyed calls are relayed by the worker, 50 packets a second
  each way, from the compiled load generator of ``gateway bench``
  (:mod:`gateway.bench.loadgen`: the phone sends RTP, the provider SRTP, and it measures one-way
  latency and RFC 3550 jitter). Three windows of ``--seconds``, in one run:
  ``quiet`` (the calls alone), ``alone`` (handshakes with no traffic) and ``loaded`` (calls and
  handshakes together). The handshakes: this driver opens DTLS-keyed streams on the worker (the
  worker as DTLS server, as for a provider's a=setup:active), ``--parallel`` at a time, and a
  far-end process (:class:`gateway.media.dtls.DtlsEndpoint` as client, on 127.0.73.131) does
  each handshake; each completed one (the worker's own ``DtlsKeyed`` report) is closed and the
  next opened. Reported: handshakes completed per second, the worker's CPU share over the
  window, and the calls' latency p50/p99 and jitter loaded / quiet as ratios.
- Sweep: per level of ``--levels`` calls, once with SDES keys and once with DTLS-SRTP keys
  (handshaken from the generator's provider address before the window, the exported keys then
  given to the generator), the same generator run as ``gateway bench``'s sweep; reported: the
  worker's CPU µs per relayed packet (its CPU share over the window / packets per second),
  latency, jitter, loss, and the DTLS/SDES ratio of µs per packet.

Nothing here asserts: it prints a table and writes the figures as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from gateway.bench.loadgen import (
    HIGH_PRIORITY_NICE,
    CallLeg,
    build_loadgen,
    proc_sample,
    raise_autogroup,
    run_load,
)
from gateway.bench.report import RunRecord, summarise
from gateway.bench.targets import DEFAULT_KEEP_CORE_AWAKE, new_key, pin
from gateway.media import worker as worker_module
from gateway.media.control import DtlsKeying, SrtpKeying, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.dtls import DtlsDone, DtlsEndpoint, DtlsFailure
from gateway.media.dtls_identity import DtlsIdentity
from gateway.media.suites import SrtpSuite

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
LAN = "127.0.73.120"
WAN = "127.0.73.121"
PHONE = ("127.0.73.110", 31100)
PROVIDER = ("127.0.73.130", 31102)
FAR = "127.0.73.131"
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PROFILE = 1  # the generator's number for AES_CM_128_HMAC_SHA1_80
PTIME_MS = 20.0
# Below Linux's ephemeral range, as gateway bench's workers target: relayed calls from 20000,
# handshake streams cycle through 16000-17998.
CALL_PORTS = 20000
HANDSHAKE_PORTS = 16000
HANDSHAKE_SLOTS = 1000


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Bench:
    """One worker process, its controller, and the gateway's and the far ends' identities."""

    def __init__(self, media_cpu: int, load_cpu: int) -> None:
        self.identity = DtlsIdentity()
        self.far_identity = DtlsIdentity()
        self.media_cpu = media_cpu
        self.load_cpu = load_cpu
        self.keyed: set[str] = set()
        #: Handshake streams whose DtlsKeyed (or DtlsFailed) is awaited.
        self.waiting: dict[str, asyncio.Future[bool]] = {}
        self.failed: dict[str, str] = {}
        self.keyed_changed = asyncio.Event()
        self.controller = MediaController(
            lan_address=LAN,
            wan_address=WAN,
            workers=1,
            inactivity_timeout=3600.0,
            keep_core_awake=DEFAULT_KEEP_CORE_AWAKE,
            dtls_identity=self.identity,
            on_dtls_keyed=self._keyed,
            on_dtls_failed=self._failed,
        )
        self.calls = 0

    def _keyed(self, call_id: str, stream: int, generation: int, suite: str) -> None:
        self.keyed.add(call_id)
        self.keyed_changed.set()
        waiter = self.waiting.get(call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _failed(self, call_id: str, reason: str) -> None:
        self.failed[call_id] = reason
        self.keyed_changed.set()
        waiter = self.waiting.get(call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    async def start(self) -> None:
        await self.controller.start()
        await self.controller.wait_running()
        pin(self.pid, self.media_cpu, realtime=True)

    async def stop(self) -> None:
        await self.controller.stop()

    @property
    def pid(self) -> int:
        [pid] = self.controller.worker_pids()
        if pid is None:
            raise RuntimeError("the media worker is not running")
        return pid

    def worker_cpu(self) -> float:
        sample = proc_sample(self.pid)
        if sample is None:
            raise RuntimeError("the media worker is gone")
        return sample.cpu

    def dtls_keying(self) -> DtlsKeying:
        return DtlsKeying(
            role="server",
            fingerprints=(("sha-256", self.far_identity.fingerprint()),),
            profiles=(SUITE.value,),
        )

    async def open_sdes(self, n: int) -> tuple[list[str], list[CallLeg]]:
        ids, legs = [], []
        for i in range(n):
            port = CALL_PORTS + 2 * i
            gateway_tx, gateway_rx = new_key(SUITE), new_key(SUITE)
            self.calls += 1
            call_id = f"sdes-{self.calls}"
            spec = StreamSpec(
                lan_port=port,
                wan_port=port,
                phone_addr=PHONE,
                provider_addr=PROVIDER,
                wan_rtcp_mux=True,
                wan_tx=SrtpKeying(SUITE.value, gateway_tx),
                wan_rx=SrtpKeying(SUITE.value, gateway_rx),
            )
            await self.controller.open_stream(call_id, 0, spec)
            ids.append(call_id)
            legs.append(CallLeg((LAN, port), (WAN, port), gateway_rx, gateway_tx))
        return ids, legs

    async def open_dtls(self, n: int) -> tuple[list[str], list[CallLeg]]:
        """``n`` DTLS-keyed calls, handshaken from the generator's provider address (before
        the generator binds it); the legs carry the far end's exported keys."""
        ids, ports = [], []
        for i in range(n):
            port = CALL_PORTS + 2 * i
            self.calls += 1
            call_id = f"dtls-{self.calls}"
            spec = StreamSpec(
                lan_port=port,
                wan_port=port,
                phone_addr=PHONE,
                provider_addr=PROVIDER,
                wan_rtcp_mux=True,
                wan_dtls=self.dtls_keying(),
            )
            await self.controller.open_stream(call_id, 0, spec)
            ids.append(call_id)
            ports.append(port)
        done = await asyncio.to_thread(self._handshake_all, ports)
        while not all(c in self.keyed or c in self.failed for c in ids):
            self.keyed_changed.clear()
            await asyncio.wait_for(self.keyed_changed.wait(), 30.0)
        failed = [c for c in ids if c in self.failed]
        if failed:
            raise RuntimeError(f"{len(failed)} handshakes failed: {self.failed[failed[0]]}")
        legs = [
            CallLeg((LAN, port), (WAN, port), done[port].tx.master, done[port].rx.master)
            for port in ports
        ]
        return ids, legs

    def _handshake_all(self, ports: list[int], batch: int = 50) -> dict[int, DtlsDone]:
        done: dict[int, DtlsDone] = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(PROVIDER)
            for first in range(0, len(ports), batch):
                done.update(
                    handshake_many(
                        sock,
                        ports[first : first + batch],
                        self.far_identity,
                        self.identity.fingerprint(),
                    )
                )
        return done

    async def close(self, ids: list[str]) -> None:
        for call_id in ids:
            await self.controller.close_call(call_id)
        await self.controller.stats()  # answered once every close before it was handled


def handshake_many(
    sock: socket.socket, ports: list[int], far: DtlsIdentity, worker_fingerprint: str
) -> dict[int, DtlsDone]:
    """Client handshakes from ``sock`` with the worker's streams on ``ports`` (blocking)."""
    now = time.monotonic()
    ends = {
        port: DtlsEndpoint(
            role="client",
            certificate=far.certificate_der,
            key=far.key_pem,
            fingerprints=(("sha-256", worker_fingerprint),),
            profiles=(SUITE.value,),
            now=now,
        )
        for port in ports
    }
    done: dict[int, DtlsDone] = {}
    while len(done) < len(ends):
        now = time.monotonic()
        timers = []
        for port, end in ends.items():
            if port in done:
                continue
            for datagram in end.datagrams_to_send():
                sock.sendto(datagram, (WAN, port))
            timer = end.get_timer(now)
            if timer is not None:
                timers.append(timer)
        ready, _, _ = select.select([sock], [], [], max(0.0, min(timers, default=now + 1) - now))
        now = time.monotonic()
        if ready:
            data, source = sock.recvfrom(4096)
            receiver = ends.get(source[1])
            if receiver is not None:
                receiver.receive(data, now)
        for port, end in ends.items():
            if port not in done:
                timer = end.get_timer(now)
                if timer is not None and timer <= now:
                    end.handle_timer(now)
                if isinstance(end.result, DtlsDone):
                    done[port] = end.result
                elif isinstance(end.result, DtlsFailure):
                    raise RuntimeError(f"handshake with port {port} failed: {end.result}")
    return done


# -- the far end process (handshakes beside calls) ---------------------------------------------


def isolate(cpu: int | None) -> None:
    """Pin this process to ``cpu`` at nice -20 (root), as the generator runs: the bench's
    own processes share the load core by weight, and a shared host's others barely delay them."""
    if cpu is not None and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, HIGH_PRIORITY_NICE)
    raise_autogroup(os.getpid())


def far_end(cpu: int | None) -> int:
    """Reads its identity and the worker's fingerprint (one JSON line), says its port, then
    handshakes as DTLS client with each ``go PORT``; answers ``done PORT`` or ``fail PORT``."""
    isolate(cpu)
    config = json.loads(sys.stdin.readline())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FAR, 0))
    sock.setblocking(False)
    out = sys.stdout
    out.write(f"port {sock.getsockname()[1]}\n")
    out.flush()
    certificate, key = bytes.fromhex(config["certificate"]), config["key"].encode()
    ends: dict[int, DtlsEndpoint] = {}
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        now = time.monotonic()
        timers = [t for end in ends.values() if (t := end.get_timer(now)) is not None]
        timeout = max(0.0, min(timers) - now) if timers else None
        ready, _, _ = select.select([sock, stdin], [], [], timeout)
        now = time.monotonic()
        if stdin in ready:
            chunk = os.read(stdin, 65536)
            if not chunk:
                return 0
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                port = int(line.split()[1])
                ends[port] = DtlsEndpoint(
                    role="client",
                    certificate=certificate,
                    key=key,
                    fingerprints=(("sha-256", config["fingerprint"]),),
                    profiles=(SUITE.value,),
                    now=now,
                )
        if sock in ready:
            while True:
                try:
                    data, source = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                end = ends.get(source[1])
                if end is not None:
                    end.receive(data, now)
        for port, end in list(ends.items()):
            timer = end.get_timer(now)
            if timer is not None and timer <= now:
                end.handle_timer(now)
            for datagram in end.datagrams_to_send():
                sock.sendto(datagram, (WAN, port))
            if end.result is not None:
                del ends[port]
                word = "done" if isinstance(end.result, DtlsDone) else "fail"
                if word == "fail":
                    print(f"far end, port {port}: {end.result}", file=sys.stderr)
                out.write(f"{word} {port}\n")
                out.flush()


class Handshakes:
    """Keeps ``parallel`` handshakes running on the worker until stopped."""

    def __init__(self, bench: Bench, parallel: int) -> None:
        self.bench = bench
        self.parallel = parallel
        self.completed = 0  # the worker's DtlsKeyed reports
        self.failed = 0
        self._free = [HANDSHAKE_PORTS + 2 * i for i in range(HANDSHAKE_SLOTS)]
        self._flight: dict[int, str] = {}
        self._count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._far_port = 0

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.dtls_load",
            "--far-end",
            "--load-cpu",
            str(self.bench.load_cpu),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        far = self.bench.far_identity
        config = {
            "certificate": far.certificate_der.hex(),
            "key": far.key_pem.decode(),
            "fingerprint": self.bench.identity.fingerprint(),
        }
        self._process.stdin.write(json.dumps(config).encode() + b"\n")
        line = await asyncio.wait_for(self._process.stdout.readline(), 30.0)
        self._far_port = int(line.split()[1])
        for _ in range(self.parallel):
            await self._open()
        self._task = asyncio.create_task(self._run())

    async def _open(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        port = self._free.pop(0)
        self._count += 1
        call_id = f"hs-{self._count}"
        spec = StreamSpec(
            lan_port=port,
            wan_port=port,
            phone_addr=PHONE,
            provider_addr=(FAR, self._far_port),
            wan_rtcp_mux=True,
            wan_dtls=self.bench.dtls_keying(),
        )
        self.bench.waiting[call_id] = asyncio.get_running_loop().create_future()
        await self.bench.controller.open_stream(call_id, 0, spec)
        self._flight[port] = call_id
        self._process.stdin.write(f"go {port}\n".encode())

    async def _run(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while not self._stop.is_set():
            line = await self._process.stdout.readline()
            if not line:
                raise RuntimeError("the far end ended")
            word, port_text = line.decode().split()
            port = int(port_text)
            call_id = self._flight.pop(port)
            # The far end is done once the worker's last flight arrived; the worker's own
            # report (its keys exported) may still be on its way to the controller.
            waiter = self.bench.waiting[call_id]
            keyed = False
            if word == "done":
                with contextlib.suppress(TimeoutError):
                    keyed = await asyncio.wait_for(waiter, 10.0)
            del self.bench.waiting[call_id]
            await self.bench.controller.close_call(call_id)
            self.bench.keyed.discard(call_id)
            reason = self.bench.failed.pop(call_id, None)
            if not keyed:
                print(f"handshake {call_id}: far end {word}, worker {reason}", file=sys.stderr)
            if keyed:
                self.completed += 1
            else:
                self.failed += 1
            self._free.append(port)
            if not self._stop.is_set():
                await self._open()

    async def wait_for(self, count: int) -> None:
        """Readiness: ``count`` handshakes completed (first contexts warmed up)."""
        while self.completed < count:
            if self._task is not None and self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            await self._process.wait()
        await self.bench.close(list(self._flight.values()))
        self._flight.clear()


def _record(name: str, result: Any, calls: int) -> dict[str, Any]:
    record: RunRecord = summarise(
        name,
        SUITE.value,
        result.raw,
        cpu_pct=result.cpu_pct,
        rss_mib=result.rss_mib,
        ptime_ms=PTIME_MS,
    )
    figures: dict[str, Any] = msgspec.to_builtins(record)
    figures["per_direction"] = [
        {k: v for k, v in d.items() if k not in ("latency_us", "slip_us")}
        for d in result.raw["dirs"]
    ]
    figures["worker_cpu_pct"] = round(record.media_cpu_pct, 2)
    figures["worker_us_per_packet"] = round(record.media_cpu_pct / 100 * 1e6 / record.pps, 3)
    return figures


async def _load(
    bench: Bench, exe: Path, legs: list[CallLeg], seconds: float, warmup: float, load_cpu: int
) -> Any:
    gc.collect()
    return await asyncio.to_thread(
        run_load,
        exe,
        legs,
        phone=PHONE,
        provider=PROVIDER,
        profile=PROFILE,
        duration=seconds,
        warmup=warmup,
        ptime_ms=PTIME_MS,
        load_cpu=load_cpu,
        watch={"media worker": bench.pid},
    )


async def beside_calls(bench: Bench, exe: Path, args: argparse.Namespace) -> dict[str, Any]:
    # Fresh calls (new keys) for each generator run: a second run over the same keys and
    # SSRCs would start its sequence numbers again and the worker would drop them as replays.
    ids, legs = await bench.open_sdes(args.calls)
    try:
        quiet_load = loadavg()
        quiet = _record(
            "quiet", await _load(bench, exe, legs, args.seconds, 1.0, args.load_cpu), args.calls
        )
    finally:
        await bench.close(ids)
    ids, legs = await bench.open_sdes(args.calls)
    try:
        handshakes = Handshakes(bench, args.parallel)
        await handshakes.start()
        try:
            await handshakes.wait_for(2 * args.parallel)
            # Handshakes alone (the calls open, no traffic).
            alone = await _window(bench, handshakes, args.seconds)
            # Handshakes beside the relayed calls: the window sits inside the generator's.
            load_task = asyncio.create_task(
                _load(bench, exe, legs, args.seconds + 1.0, 1.0, args.load_cpu)
            )
            await asyncio.sleep(1.5)  # the generator's warm-up second, and its start
            loaded_window = await _window(bench, handshakes, args.seconds)
            loaded = _record("loaded", await load_task, args.calls)
        finally:
            await handshakes.stop()
    finally:
        await bench.close(ids)

    # The handshakes-alone window: the worker's CPU there is the handshakes' (and their
    # streams' opens and closes) with no calls' share to take off.
    spent = alone["worker_cpu_pct"]
    derived = round(alone["handshakes_per_s"] * 100 / spent, 1) if spent > 0 else None

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "calls": args.calls,
        "parallel_handshakes": args.parallel,
        "window_s": args.seconds,
        "handshakes_per_s": loaded_window["handshakes_per_s"],
        "handshakes_failed": handshakes.failed,
        "worker_cpu_pct": loaded_window["worker_cpu_pct"],
        "worker_cpu_pct_calls_only": quiet["worker_cpu_pct"],
        # Below ~95 % the far ends (on the load core with the generator) set the pace, not the
        # worker; its ceiling then follows from its measured share with handshakes alone.
        "worker_saturated": loaded_window["worker_cpu_pct"] >= 95.0,
        "derived_handshakes_per_worker_core_s": derived,
        "handshakes_alone": alone,
        "latency_p50_ratio": ratio(loaded["latency_us"]["p50"], quiet["latency_us"]["p50"]),
        "latency_p99_ratio": ratio(loaded["latency_us"]["p99"], quiet["latency_us"]["p99"]),
        "jitter_ratio": ratio(loaded["jitter_us"], quiet["jitter_us"]),
        "quiet": quiet,
        "loaded": loaded,
        "loadavg_before": quiet_load,
        "loadavg_after": loadavg(),
    }


async def _window(bench: Bench, handshakes: Handshakes, seconds: float) -> dict[str, float]:
    start, count, cpu = time.monotonic(), handshakes.completed, bench.worker_cpu()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    return {
        "handshakes_per_s": round((handshakes.completed - count) / elapsed, 1),
        "worker_cpu_pct": round(100 * (bench.worker_cpu() - cpu) / elapsed, 1),
    }


async def packet_sweep(bench: Bench, exe: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for calls in args.levels:
        row: dict[str, Any] = {"calls": calls, "loadavg_before": loadavg()}
        for keying in ("sdes", "dtls"):
            opener = bench.open_sdes if keying == "sdes" else bench.open_dtls
            ids, legs = await opener(calls)
            try:
                result = await _load(bench, exe, legs, args.seconds, 1.0, args.load_cpu)
            finally:
                await bench.close(ids)
            row[keying] = _record(keying, result, calls)
        sdes, dtls = row["sdes"]["worker_us_per_packet"], row["dtls"]["worker_us_per_packet"]
        row["us_per_packet_ratio_dtls_sdes"] = round(dtls / sdes, 3) if sdes else None
        row["loadavg_after"] = loadavg()
        rows.append(row)
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    exe = await asyncio.to_thread(build_loadgen)
    isolate(args.load_cpu)
    bench = Bench(args.media_cpu, args.load_cpu)
    await bench.start()
    try:
        result: dict[str, Any] = {
            "benchmark": "dtls-load",
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "c_fast_path": worker_module._fastpath is not None,
            "suite": SUITE.value,
        }
        result["beside_calls"] = await beside_calls(bench, exe, args)
        result["sweep"] = await packet_sweep(bench, exe, args)
    finally:
        await bench.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dtls_load")
    parser.add_argument("--calls", type=int, default=200, help="SDES calls relayed meanwhile")
    parser.add_argument("--parallel", type=int, default=8, help="handshakes in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured window")
    parser.add_argument("--levels", default="200,500,1000", help="sweep: calls per level")
    parser.add_argument("--media-cpu", type=int, default=0, help="the worker's core")
    parser.add_argument("--load-cpu", type=int, default=1, help="everything else's core")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--far-end", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.far_end:
        return far_end(args.load_cpu)
    args.levels = [int(x) for x in args.levels.split(",") if x]
    result = asyncio.run(run(args))
    beside = result["beside_calls"]
    print(
        f"beside {beside['calls']} calls: {beside['handshakes_per_s']} handshakes/s, worker "
        f"{beside['worker_cpu_pct']} % (calls alone {beside['worker_cpu_pct_calls_only']} %; "
        f"handshakes alone {beside['handshakes_alone']['handshakes_per_s']}/s at "
        f"{beside['handshakes_alone']['worker_cpu_pct']} %)"
    )
    print(
        f"calls' latency loaded/quiet: p50 x{beside['latency_p50_ratio']}, "
        f"p99 x{beside['latency_p99_ratio']}, jitter x{beside['jitter_ratio']}"
    )
    print(f"{'calls':>6} {'SDES µs/pkt':>12} {'DTLS µs/pkt':>12} {'ratio':>6}")
    for row in result["sweep"]:
        print(
            f"{row['calls']:>6} {row['sdes']['worker_us_per_packet']:>12}"
            f" {row['dtls']['worker_us_per_packet']:>12} {row['us_per_packet_ratio_dtls_sdes']:>6}"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dtls-load-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
