"""DTLS-SRTP in a media worker: what a handshake costs one core, and whether a DTLS-keyed call
costs more per packet than an SDES-keyed one (it must not: the same SRTP contexts).

Usage (from the repository root)::

    .venv/bin/python -m bench.dtls                       # 200 handshakes per role, both loops
    .venv/bin/python -m bench.dtls --handshakes 50 --out /tmp

What it does: a media worker (:class:`gateway.media.worker._Worker`) runs in this process on
loopback addresses 127.0.66.x, driven round by round as in ``bench/ssrc_flood.py``.

- Handshakes: a stream keyed with DTLS-SRTP is opened, and a far end (a
  :class:`gateway.media.dtls.DtlsEndpoint` on the provider's socket, in this same thread)
  handshakes with it; only the worker's own rounds and its DTLS step are timed (the far end's
  work and the stream's open and close are not), so the figure is the worker's CPU per
  handshake: receive, OpenSSL (ECDHE P-256, ECDSA sign and verify), the fingerprint check, the
  key export and the keys' way into the relay (and the C lanes). Both roles: the worker as
  DTLS server (the provider sends the ClientHello) and as client. ``handshakes_per_core_s`` is
  1 s divided by the median; ``handshakes_per_core_s_with_calls`` takes off the share of the
  core that ``--calls`` relayed calls (50 packets a second each way) use at the measured
  per-packet cost: what is left for handshakes while those calls are relayed.
- Per packet: one call SDES-keyed and one DTLS-keyed (after its handshake), AES_CM_128_HMAC_
  SHA1_80 both, phone → provider, batches of 100 datagrams queued and one loop round per
  datagram (epoll, recvfrom, the relay's rules, SRTP, sendto); median µs per packet.

Nothing here asserts: it prints a table and writes the figures as JSON (``--out``).

``handshakes_per_core_s_with_calls`` is derived, not measured; ``bench/dtls_load.py`` measures
handshakes per second in a worker process beside relayed calls, the calls' latency with and
without them, and µs per packet SDES vs DTLS-keyed under the sweep's load generator.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import platform
import select
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msgspec import structs

from gateway.media import worker as worker_module
from gateway.media.control import DtlsKeying, SrtpKeying, StreamSpec, UpdateStream
from gateway.media.dtls import DtlsDone, DtlsEndpoint
from gateway.media.dtls_identity import DtlsIdentity
from gateway.media.suites import SrtpSuite
from gateway.media.worker import _snapshot, _Worker

RESULTS = Path(__file__).resolve().parent / "results"
LAN = "127.0.66.120"
WAN = "127.0.66.121"
PHONE = "127.0.66.110"
PROVIDER = "127.0.66.130"
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
BATCH = 100
PACKETS_PER_CALL_S = 100  # 50 a second each way


def rtp(seq: int, ssrc: int = 0x5EED0001) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + (
        b"\xd5" * 160
    )


def free_port_pair(address: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((address, 0))
            port = first.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((address, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port pair on {address}")


class Rig:
    """One worker (Python loop or C fast path), its phone and its provider socket."""

    def __init__(self, fast: bool) -> None:
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
        # The worker reports each handshake's keys (DtlsKeyed) as to a controller: its
        # channel is registered as run() does, and this end drains it untimed.
        self.control.setblocking(False)
        self._other.setblocking(False)
        self.worker._epoll.register(self.control.fileno(), select.EPOLLIN)
        self.identity = DtlsIdentity()
        self.far_identity = DtlsIdentity()
        self.worker._dtls.set_identity(self.identity.certificate_der, self.identity.key_pem)
        self.phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.phone.bind((PHONE, 0))
        self.provider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.provider.bind((PROVIDER, 0))
        self.provider.setblocking(False)
        self.round = (
            (lambda: self.worker._fast_round(0, -1))
            if fast
            else (lambda: self.worker._python_round(0.0, -1))
        )
        self.calls = 0
        self.seq = 0
        self.specs: dict[str, StreamSpec] = {}

    def close(self) -> None:
        for call_id in list(self.worker._calls):
            self.worker._close_call(call_id)
        self.worker._epoll.close()
        for sock in (self.phone, self.provider, self.control, self._other):
            sock.close()

    def open(self, dtls_role: str | None, provider: bool = True) -> tuple[str, int, int]:
        """Open a call (SDES keys, or DTLS-SRTP with the worker in ``dtls_role``); without
        ``provider`` its address is not known yet (a client waits for it to say hello)."""
        self.calls += 1
        call_id = f"bench-{self.calls}"
        master = bytes(range(SUITE.master_length))
        lan_port, wan_port = free_port_pair(LAN), free_port_pair(WAN)
        keys: dict[str, Any] = (
            {
                "wan_dtls": DtlsKeying(
                    role=dtls_role,
                    fingerprints=(("sha-256", self.far_identity.fingerprint()),),
                    profiles=(SUITE.value,),
                )
            }
            if dtls_role is not None
            else {
                "wan_tx": SrtpKeying(SUITE.value, master),
                "wan_rx": SrtpKeying(SUITE.value, master[::-1]),
            }
        )
        spec = StreamSpec(
            lan_port=lan_port,
            wan_port=wan_port,
            phone_addr=self.phone.getsockname(),
            provider_addr=self.provider.getsockname() if provider else None,
            wan_rtcp_mux=True,
            **keys,
        )
        self.specs[call_id] = spec
        error = self.worker._open(call_id, 0, spec, time.monotonic())
        assert error is None, error
        return call_id, lan_port, wan_port

    def handshake(self, dtls_role: str) -> float:
        """Open a DTLS-keyed call and handshake; returns the worker's seconds for it."""
        far_role = "client" if dtls_role == "server" else "server"
        spent = 0.0
        # Opened untimed (binds, the relay); a client learns the provider's address from the
        # answer, an update: its ClientHello goes out then, timed.
        call_id, _, wan_port = self.open(dtls_role, provider=dtls_role == "server")
        stream = self.worker._calls[call_id].streams[0]
        far = DtlsEndpoint(
            role=far_role,
            certificate=self.far_identity.certificate_der,
            key=self.far_identity.key_pem,
            fingerprints=(("sha-256", self.identity.fingerprint()),),
            profiles=(SUITE.value,),
            now=time.monotonic(),
        )
        if dtls_role == "client":
            spec = structs.replace(self.specs[call_id], provider_addr=self.provider.getsockname())
            start = time.perf_counter()
            self.worker._handle(UpdateStream(call_id, 0, spec), time.monotonic())
            spent += time.perf_counter() - start
        for _ in range(50):
            for datagram in far.datagrams_to_send():
                self.provider.sendto(datagram, (WAN, wan_port))
            start = time.perf_counter()
            for _ in range(4):
                self.round()
            self.worker._dtls.step(time.monotonic())
            spent += time.perf_counter() - start
            while True:
                try:
                    data = self.provider.recv(4096)
                except BlockingIOError:
                    break
                far.receive(data, time.monotonic())
            if isinstance(far.result, DtlsDone) and stream.relay.counters.dtls_handshakes:
                break
        else:
            raise RuntimeError(f"handshake did not complete: {far.result}")
        self.worker._close_call(call_id)
        del self.specs[call_id]
        with contextlib.suppress(BlockingIOError):
            while self._other.recv(65536):
                pass
        return spent

    def packet_cost(self, call_id: str, lan_port: int, batches: int) -> float:
        """Median µs per phone → provider packet over ``batches`` batches."""
        costs = []
        for _ in range(batches + 3):  # three warm-up batches
            for _ in range(BATCH):
                self.seq += 1
                self.phone.sendto(rtp(self.seq), (LAN, lan_port))
            start = time.perf_counter()
            for _ in range(BATCH):
                self.round()
            costs.append((time.perf_counter() - start) / BATCH * 1e6)
            while True:  # the provider's socket is drained untimed
                try:
                    self.provider.recv(4096)
                except BlockingIOError:
                    break
        relayed = _snapshot(self.worker._calls[call_id].streams[0]).wan_out_packets
        assert relayed >= BATCH * batches, f"only {relayed} packets relayed"
        return statistics.median(costs[3:])

    def dtls_call(self) -> tuple[str, int]:
        """A DTLS-keyed call past its handshake (the worker as server)."""
        call_id, lan_port, wan_port = self.open("server")
        stream = self.worker._calls[call_id].streams[0]
        far = DtlsEndpoint(
            role="client",
            certificate=self.far_identity.certificate_der,
            key=self.far_identity.key_pem,
            fingerprints=(("sha-256", self.identity.fingerprint()),),
            profiles=(SUITE.value,),
            now=time.monotonic(),
        )
        while not stream.relay.counters.dtls_handshakes:
            for datagram in far.datagrams_to_send():
                self.provider.sendto(datagram, (WAN, wan_port))
            self.round()
            self.worker._dtls.step(time.monotonic())
            while True:
                try:
                    far.receive(self.provider.recv(4096), time.monotonic())
                except BlockingIOError:
                    break
        return call_id, lan_port


def measure(loop: str, handshakes: int, batches: int, calls: int) -> dict[str, Any]:
    rig = Rig(loop == "c")
    try:
        rig.handshake("server")  # warm-up (imports, first contexts)
        figures: dict[str, Any] = {"loop": loop}
        for role in ("server", "client"):
            costs = [rig.handshake(role) * 1e6 for _ in range(handshakes)]
            figures[f"handshake_us_{role}"] = round(statistics.median(costs), 1)
        sdes_call, sdes_port = rig.open(None)[:2]
        # The first packet of the phone's SSRC is on probation: send two before measuring.
        figures["packet_us_sdes"] = round(rig.packet_cost(sdes_call, sdes_port, batches), 3)
        rig.worker._close_call(sdes_call)
        dtls_call, dtls_port = rig.dtls_call()
        figures["packet_us_dtls"] = round(rig.packet_cost(dtls_call, dtls_port, batches), 3)
        rig.worker._close_call(dtls_call)
    finally:
        rig.close()
    gc.collect()
    worst = max(figures["handshake_us_server"], figures["handshake_us_client"])
    load = calls * PACKETS_PER_CALL_S * figures["packet_us_sdes"] / 1e6  # share of the core
    figures["handshakes_per_core_s"] = round(1e6 / worst, 1)
    figures["calls_relayed"] = calls
    figures["core_share_of_calls"] = round(load, 3)
    figures["handshakes_per_core_s_with_calls"] = round(max(0.0, 1 - load) * 1e6 / worst, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dtls")
    parser.add_argument("--handshakes", type=int, default=200, help="per role and loop")
    parser.add_argument("--batches", type=int, default=30, help="batches of 100 packets")
    parser.add_argument("--calls", type=int, default=200, help="calls relayed meanwhile")
    parser.add_argument("--loops", default="python,c", help="python, c or both")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    args = parser.parse_args(argv)
    loops = args.loops.split(",")
    if "c" in loops and worker_module._fastpath is None:
        print("the C fast path is not built: python loop only", file=sys.stderr)
        loops = [loop for loop in loops if loop != "c"]
    rows = [measure(loop, args.handshakes, args.batches, args.calls) for loop in loops]
    print(
        f"{'loop':7} {'hs srv µs':>10} {'hs cli µs':>10} {'hs/s':>7} "
        f"{'hs/s w/ calls':>13} {'SDES µs/pkt':>12} {'DTLS µs/pkt':>12}"
    )
    for row in rows:
        print(
            f"{row['loop']:7} {row['handshake_us_server']:>10} {row['handshake_us_client']:>10}"
            f" {row['handshakes_per_core_s']:>7} {row['handshakes_per_core_s_with_calls']:>13}"
            f" {row['packet_us_sdes']:>12} {row['packet_us_dtls']:>12}"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dtls-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "dtls",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "handshakes_per_role": args.handshakes,
                "batches": args.batches,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
