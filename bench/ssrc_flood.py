"""Per-packet cost of a call under an SSRC flood, beside the same call without it.

Usage (from the repository root)::

    .venv/bin/python -m bench.ssrc_flood                   # 20,000 SSRCs, both loops
    .venv/bin/python -m bench.ssrc_flood --ssrcs 5000 --loops c --json out.json

What it does, per packet loop (the worker's pure-Python loop and its C fast path): a media worker
runs in this process with one call (SRTP keys both ways, AES_CM_128_HMAC_SHA1_80) on loopback
addresses 127.0.6.x. A phone socket sends the call's RTP (one SSRC) and, in the flooded run,
the flood: RTP from the phone's own address and port with a new SSRC in every packet (each one
a new libsrtp stream when nothing bounds them, RFC 3711 §3.2.3), one call packet among every 20.
The worker runs exactly one loop round per datagram (``_fast_round`` / ``_python_round``, the
bodies of its run loops), so a batch of datagrams queued on the LAN socket takes as many rounds
and the time of those rounds divided by the batch is the per-packet cost: epoll, recvfrom, the
relay's rules, SRTP and sendto.

Reported per loop: the call's per-packet cost after the flood (median of batches) against the
same call on a fresh worker that saw no flood, their ratio; the cost of one flood packet; the
worker's RSS growth over the flood (VmRSS; each loop is measured in a process of its own, so
that memory one run gave back to the allocator does not hide the next run's growth); and, on a
third worker, the same flood started before the call's first packet: whether the call's SSRC
got a slot, and how many packets were relayed in all (issue 13: the flood's first two SSRCs
used to take both slots and the call got none; with RFC 3550 probation the call gets all but
its first packet and the flood nothing). Nothing here asserts: it prints a table
and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from gateway.media import worker as worker_module
from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.suites import SrtpSuite
from gateway.media.worker import _snapshot, _Worker

LAN = "127.0.6.20"
WAN = "127.0.6.21"
PHONE = "127.0.6.10"
PROVIDER = "127.0.6.30"
CALL_SSRC = 0x5EED0001
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
#: Datagrams queued per batch: well inside the socket's receive buffer.
BATCH = 100
#: Flood packets per call packet while the flood runs (a phone sends 50 a second).
FLOOD_RATIO = 20


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + (
        b"\xd5" * 160
    )


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port_pair(address: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((address, 0))
            port = first.getsockname()[1]
            if port % 2 or port >= 65534:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((address, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port pair on {address}")


class Rig:
    """One worker (Python loop or C fast path) with one keyed call, and its phone."""

    def __init__(self, fast: bool) -> None:
        self.fast = fast
        self.control, self._other = socket.socketpair()
        self.worker = _Worker(
            self.control,
            lan_address=LAN,
            wan_address=WAN,
            inactivity_timeout=600.0,
            dscp=0,
            fast_path=fast,
        )
        if fast and self.worker._engine is None:
            raise SystemExit("the C fast path is not available here (setup.py build_ext)")
        self.phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.phone.bind((PHONE, 0))
        # The provider never reads: once its small buffer is full the kernel drops what the
        # worker sends there, which costs the worker the same sendto.
        self.provider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.provider.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.provider.bind((PROVIDER, 0))
        lan_port, wan_port = free_port_pair(LAN), free_port_pair(WAN)
        master = bytes(range(SUITE.master_length))
        spec = StreamSpec(
            lan_port=lan_port,
            wan_port=wan_port,
            phone_addr=self.phone.getsockname(),
            provider_addr=self.provider.getsockname(),
            wan_tx=SrtpKeying(suite=SUITE.value, master=master),
            wan_rx=SrtpKeying(suite=SUITE.value, master=master[::-1]),
        )
        error = self.worker._open("flood", 0, spec, time.monotonic())
        assert error is None, error
        self.stream = self.worker._calls["flood"].streams[0]
        self.target = (LAN, lan_port)
        self.seq = 0
        self.round = (
            (lambda: self.worker._fast_round(0, -1))
            if fast
            else (lambda: self.worker._python_round(0.0, -1))
        )

    def close(self) -> None:
        self.worker._close_call("flood")
        self.worker._epoll.close()
        for sock in (self.phone, self.provider, self.control, self._other):
            sock.close()

    def call_packet(self) -> bytes:
        self.seq += 1
        return rtp(self.seq, CALL_SSRC)

    def run_batch(self, packets: list[bytes]) -> float:
        """Queue ``packets`` on the LAN RTP socket, run one round per datagram; seconds."""
        send = self.phone.sendto
        for packet in packets:
            send(packet, self.target)
        step = self.round
        start = time.perf_counter()
        for _ in packets:
            step()
        return time.perf_counter() - start

    def call_cost(self, batches: int) -> float:
        """Median per-packet cost (µs) of the call's own packets over ``batches`` batches."""
        costs = [
            self.run_batch([self.call_packet() for _ in range(BATCH)]) / BATCH * 1e6
            for _ in range(batches)
        ]
        return statistics.median(costs)

    def flood(self, ssrcs: int) -> float:
        """Send ``ssrcs`` flood packets (one new SSRC each), with the call's packets among
        them; returns the mean cost (µs) of a datagram over the flood."""
        total = 0.0
        packets = 0
        ssrc = 0x10000000
        left = ssrcs
        while left:
            batch: list[bytes] = []
            while left and len(batch) < BATCH:
                if len(batch) % (FLOOD_RATIO + 1) == 0:
                    batch.append(self.call_packet())
                else:
                    batch.append(rtp(self.seq, ssrc))
                    ssrc += 1
                    left -= 1
            total += self.run_batch(batch)
            packets += len(batch)
        return total / packets * 1e6


def measure(fast: bool, ssrcs: int, batches: int) -> dict[str, float | int | str]:
    loop = "c" if fast else "python"
    clean = Rig(fast)
    try:
        clean.run_batch([clean.call_packet()])  # latch, and the C lane takes over
        clean.call_cost(3)  # warm-up
        baseline = clean.call_cost(batches)
    finally:
        clean.close()
    gc.collect()
    flooded = Rig(fast)
    try:
        flooded.run_batch([flooded.call_packet()])
        flooded.call_cost(3)
        before = flooded.call_cost(batches)
        gc.collect()
        rss_before = rss_kib()
        flood_cost = flooded.flood(ssrcs)
        gc.collect()
        rss_after = rss_kib()
        after = flooded.call_cost(batches)
        counters = _snapshot(flooded.stream)
        dropped = getattr(counters, "drop_ssrc", None)
    finally:
        flooded.close()
    gc.collect()
    first = Rig(fast)
    try:
        first.run_batch([rtp(i, 0x30000000 + i) for i in range(BATCH)])  # before the call
        first.flood(ssrcs)
        first_relayed = _snapshot(first.stream).wan_out_packets
        first_sent = first.seq
        first_kept = CALL_SSRC in first.stream.relay.lan_ssrcs.ssrcs
    finally:
        first.close()
    return {
        "loop": loop,
        "ssrcs": ssrcs,
        "call_us_clean_worker": round(baseline, 2),
        "call_us_before_flood": round(before, 2),
        "call_us_after_flood": round(after, 2),
        "ratio_after_flood_to_clean": round(after / baseline, 2),
        "flood_packet_us": round(flood_cost, 2),
        "rss_growth_kib": rss_after - rss_before,
        "drop_ssrc": -1 if dropped is None else dropped,
        "wan_out_packets": counters.wan_out_packets,
        "flood_first_call_sent": first_sent,
        "flood_first_call_kept": first_kept,
        "flood_first_relayed": first_relayed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ssrc_flood")
    parser.add_argument("--ssrcs", type=int, default=20000, help="distinct SSRCs in the flood")
    parser.add_argument("--batches", type=int, default=30, help="batches of 100 per figure")
    parser.add_argument("--loops", default="python,c", help="python, c or both")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--one", choices=("python", "c"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child run: one loop, its figures as JSON on stdout
        print(json.dumps(measure(args.one == "c", args.ssrcs, args.batches)))
        return 0
    loops = args.loops.split(",")
    if "c" in loops and worker_module._fastpath is None:
        print("the C fast path is not built: python loop only", file=sys.stderr)
        loops = [loop for loop in loops if loop != "c"]
    rows = []
    for loop in loops:
        child = [sys.executable, "-m", "bench.ssrc_flood", "--one", loop]
        child += ["--ssrcs", str(args.ssrcs), "--batches", str(args.batches)]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
    print(
        f"{'loop':7} {'clean µs':>9} {'after µs':>9} {'ratio':>6} {'flood µs':>9}"
        f" {'RSS +KiB':>9} {'drop_ssrc':>9}  flood first: call kept, relayed of call packets"
    )
    for row in rows:
        print(
            f"{row['loop']:7} {row['call_us_clean_worker']:>9} {row['call_us_after_flood']:>9}"
            f" {row['ratio_after_flood_to_clean']:>6} {row['flood_packet_us']:>9}"
            f" {row['rss_growth_kib']:>9} {row['drop_ssrc']:>9}"
            f"  {'yes' if row['flood_first_call_kept'] else 'no ':>16},"
            f" {row['flood_first_relayed']} of {row['flood_first_call_sent']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
