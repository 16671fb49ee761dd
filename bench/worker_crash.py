"""Audio gap when a media worker is killed (issue 14, item 1: worker crash recovery).

Usage (from the repository root)::

    .venv/bin/python -m bench.worker_crash                    # 50 calls, both loops
    .venv/bin/python -m bench.worker_crash --calls 200 --loops c --json out.json
    .venv/bin/python -m bench.worker_crash --smoke --json out.json

What it does, per packet loop (C fast path, Python loop): a MediaController in this process
starts one media worker on loopback (127.0.32.x); N calls are opened with SRTP keys both ways
(AES_CM_128_HMAC_SHA1_80). A sender thread plays each call's phone (plain RTP to the LAN port)
and provider (SRTP, from its own libsrtp session, to the WAN port) every 20 ms, and reads what
arrives: the provider unprotects with its own independent session (an authentication or replay
failure is counted), the phone checks the payload. After a warm-up the worker is killed with
SIGKILL; the controller restarts it and re-opens every stream from its checkpoint.

Reported per loop and direction: the audio gap of each call (the time between the last packet
received before the kill and the first one after it, at the receiving end), p50 and max over
the calls; calls kept (both directions received packets after the kill) over calls up; far-end
SRTP failures after the kill. Nothing here asserts: a table, and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pylibsrtp

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.suites import SrtpSuite

LAN = "127.0.32.120"
WAN = "127.0.32.121"
PHONE_IP = "127.0.32.110"
PROVIDER_IP = "127.0.32.130"
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PTIME = 0.020
RESULTS = Path(__file__).resolve().parent / "results"


def _rtp(seq: int, ssrc: int) -> bytes:
    head = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc)
    return head + b"\xd5" * 160


def _keying() -> SrtpKeying:
    return SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))


def _session(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=SUITE.libsrtp_profile)
    return pylibsrtp.Session(policy)


def _udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


class _Call:
    def __init__(self, index: int, lan_port: int, wan_port: int) -> None:
        self.name = f"crash-{index}"
        self.phone, self.provider = _udp(PHONE_IP), _udp(PROVIDER_IP)
        up, down = _keying(), _keying()
        self.provider_rx = _session(up, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.provider_tx = _session(down, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.ssrc = 0x10000 + index
        # Sequence numbers near the wrap: the ROC changes during the run.
        self.seq = 65535 - 100 - index
        self.spec = StreamSpec(
            lan_port=lan_port,
            wan_port=wan_port,
            phone_addr=self.phone.getsockname(),
            provider_addr=self.provider.getsockname(),
            wan_tx=up,
            wan_rx=down,
        )
        #: Arrival times at the provider (phone → provider) and at the phone.
        self.up: list[float] = []
        self.down: list[float] = []
        self.failures = 0

    def send(self) -> None:
        self.seq += 1
        self.phone.sendto(_rtp(self.seq, self.ssrc), (LAN, self.spec.lan_port))
        packet = self.provider_tx.protect(_rtp(self.seq, self.ssrc + 0x1000))
        self.provider.sendto(packet, (WAN, self.spec.wan_port))

    def close(self) -> None:
        self.phone.close()
        self.provider.close()


def _traffic(calls: list[_Call], stop: threading.Event) -> None:
    """Every 20 ms one packet each way per call; in between, read what arrives."""
    owner: dict[int, tuple[_Call, bool]] = {}
    for call in calls:
        owner[call.provider.fileno()] = (call, True)
        owner[call.phone.fileno()] = (call, False)
    poller = select.epoll()
    for fd in owner:
        poller.register(fd, select.EPOLLIN)
    next_tick = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                for call in calls:
                    call.send()
                next_tick += PTIME
            for fd, _ in poller.poll(max(0.0, next_tick - time.monotonic())):
                call, at_provider = owner[fd]
                sock = call.provider if at_provider else call.phone
                while True:
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        break
                    arrived = time.monotonic()
                    if at_provider:
                        try:
                            call.provider_rx.unprotect(data)
                        except pylibsrtp.Error:
                            call.failures += 1
                            continue
                        call.up.append(arrived)
                    else:
                        call.down.append(arrived)
    finally:
        poller.close()


def _gap(arrivals: list[float], killed: float) -> float | None:
    before = [t for t in arrivals if t <= killed]
    after = [t for t in arrivals if t > killed]
    if not before or not after:
        return None
    return after[0] - before[-1]


def _free_pair(address: str, taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
            port = probe.getsockname()[1] & ~1
        if port in taken or port < 1024:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
                a.bind((address, port))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind((address, port + 1))
        except OSError:
            continue
        taken.add(port)
        return port


async def _run(calls_up: int, warmup: float, after: float) -> dict[str, object]:
    taken_lan: set[int] = set()
    taken_wan: set[int] = set()
    calls = [
        _Call(i, _free_pair(LAN, taken_lan), _free_pair(WAN, taken_wan)) for i in range(calls_up)
    ]
    lost: list[str] = []
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, on_worker_lost=lost.extend
    ) as controller:
        for call in calls:
            await controller.open_stream(call.name, 0, call.spec)
        stop = threading.Event()
        thread = threading.Thread(target=_traffic, args=(calls, stop), daemon=True)
        thread.start()
        await asyncio.sleep(warmup)  # a benchmark's warm-up, not a readiness wait
        (pid,) = controller.worker_pids()
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            while controller.worker_states()[0]["restarts"] == 0:
                await asyncio.sleep(0.01)
        restored = time.monotonic()
        await asyncio.sleep(after)
        stop.set()
        await asyncio.to_thread(thread.join)
        failures_after = sum(c.failures for c in calls)
        for call in calls:
            await controller.close_call(call.name)
    gaps_up = [_gap(c.up, killed) for c in calls]
    gaps_down = [_gap(c.down, killed) for c in calls]
    kept = sum(
        1 for u, d in zip(gaps_up, gaps_down, strict=True) if u is not None and d is not None
    )
    for call in calls:
        call.close()

    def summary(gaps: list[float | None]) -> dict[str, float | None]:
        known = [g for g in gaps if g is not None]
        return {
            "p50_ms": round(statistics.median(known) * 1000, 1) if known else None,
            "max_ms": round(max(known) * 1000, 1) if known else None,
        }

    return {
        "calls_up": calls_up,
        "calls_kept": kept,
        "calls_reported_lost": len(lost),
        "srtp_failures_at_far_end": failures_after,
        "restart_ms": round((restored - killed) * 1000, 1),
        "gap_phone_to_provider": summary(gaps_up),
        "gap_provider_to_phone": summary(gaps_down),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_crash")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--loops", choices=["both", "c", "python"], default="both")
    parser.add_argument("--smoke", action="store_true", help="5 calls, short windows")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    calls, warmup, after = (5, 1.5, 1.5) if args.smoke else (args.calls, 3.0, 3.0)
    loops = {"both": ["c", "python"], "c": ["c"], "python": ["python"]}[args.loops]
    result: dict[str, object] = {"calls": calls, "loops": {}}
    for loop in loops:
        if len(loops) > 1:  # each loop in a process of its own (one event loop per process)
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "loop.json"
                argv_loop = [sys.executable, "-m", "bench.worker_crash", "--loops", loop]
                argv_loop += ["--smoke"] if args.smoke else ["--calls", str(calls)]
                subprocess.run([*argv_loop, "--json", str(out)], check=True)
                figures = json.loads(out.read_text())["loops"][loop]
            result["loops"][loop] = figures  # type: ignore[index]
            continue
        os.environ["GATEWAY_MEDIA_FASTPATH"] = "1" if loop == "c" else "0"
        figures = asyncio.run(_run(calls, warmup, after))
        result["loops"][loop] = figures  # type: ignore[index]
        up, down = figures["gap_phone_to_provider"], figures["gap_provider_to_phone"]
        print(
            f"{loop:>6}: kept {figures['calls_kept']}/{calls}, restart"
            f" {figures['restart_ms']} ms, gap phone→provider p50 {up['p50_ms']} ms"  # type: ignore[index]
            f" max {up['max_ms']} ms, provider→phone p50 {down['p50_ms']} ms"  # type: ignore[index]
            f" max {down['max_ms']} ms, far-end SRTP failures"  # type: ignore[index]
            f" {figures['srtp_failures_at_far_end']}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
