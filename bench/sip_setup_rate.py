"""SIP call set-ups per second through the gateway, beside kamailio alone, in one run.

Every call is INVITE -> 180 -> 200 -> ACK -> BYE -> 200, from a sipp UAC over UDP to one
provider-side TLS user agent server (sipp over TCP behind stunnel) registered at kamailio as
``7000``:

    gateway   UAC -UDP-> gateway LAN | gateway WAN -TLS-> kamailio -TLS-> stunnel -> UAS
    kamailio  UAC -UDP-> kamailio (its UDP listener)  ------> kamailio -TLS-> stunnel -> UAS

Both flows reach the same UAS through the same kamailio, so the ratio is what the gateway costs
on top of a proxy hop that kamailio makes anyway: a B2BUA with two transaction layers, SDP
rewriting with fresh SDES keys and a media allocation in its worker for every call. The
gateway runs as in production (``gateway run``; log level info; policy limits that would
refuse a benchmark's burst turned off: flood buckets, caps and spike lock) and writes its
per-call event lines; kamailio runs at debug level 1 (no log line per request) with enough
shared memory for its transactions at this rate.

Each flow gets a short warm-up (TLS connections up), then ``--calls`` calls offered at
``--rate`` per second with at most ``--limit`` in progress; the rate reported is successful
calls divided by the time sipp took to run them all. The defaults offer more than either side
takes, so the load is closed-loop: a new call starts when one ends, and each side runs at its
own pace with 40 calls in progress (an open-loop overload only measures how each side
collapses under SIP retransmissions). ``--hold-ms`` (20) separates ACK and BYE: with none,
kamailio's parallel UDP workers now and then relay a BYE ahead of its ACK.

Run from the repository root::

    python -m bench.sip_setup_rate                     # 2000 calls per flow, 40 at a time
    python -m bench.sip_setup_rate --calls 200 --rate 50 --limit 10

Writes a table to stdout and JSON to ``bench/results/sip-setup-<date>.json`` (``--out`` for
another folder). Needs sipp, kamailio (with its TLS module) and stunnel: the Debian packages
sip-tester, kamailio, kamailio-tls-modules and stunnel4 (.ci/run installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gateway_config import merge
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Kamailio,
    ManagedProcess,
    PeerError,
    Sipp,
    Stunnel,
    client_ssl_context,
    free_port,
    read_sip_message,
    sip_register_request,
    status_code,
)
from tests.pki import TestPki, make_test_pki

RESULTS = Path(__file__).resolve().parent / "results"
PHONE = "127.0.0.150"
GATEWAY_LAN = "127.0.0.151"
GATEWAY_WAN = "127.0.0.152"
PROVIDER = "127.0.0.1"
CALLEE = "7000"
BINARIES = ("sipp", "kamailio", "stunnel")
KAMAILIO_SHM_MB = 1024
KAMAILIO_PKG_MB = 32

PATHS = {
    "gateway": "sipp UAC -UDP-> gateway LAN | WAN -TLS-> kamailio -TLS-> stunnel -> sipp UAS",
    "kamailio": "sipp UAC -UDP-> kamailio -TLS-> stunnel -> sipp UAS",
}

#: Policy limits that would refuse a benchmark's burst from one phone: all off.
_OFF = {"rate": 0.0, "burst": 0.0}
_NO_CAPS = {
    "concurrent": 0,
    "calls_per_hour": 0,
    "minutes_per_day": 0.0,
    "international_minutes_per_day": 0.0,
}
UNLIMITED_POLICY = {
    "policy": {
        "flood": {"per_source": _OFF, "register": _OFF, "invite": _OFF, "site": _OFF},
        "caps": {"phone": _NO_CAPS, "site": _NO_CAPS, "spike": {"enabled": False}},
    }
}

#: sipp options that log every message or screen: off, so the load generator is not the limit.
_TRACE_OPTIONS = {"-trace_msg": 0, "-message_file": 1, "-trace_screen": 0, "-screen_file": 1}


@dataclass
class FlowResult:
    """One flow's outcome."""

    name: str
    path: str
    calls: int
    successful: int
    failed: int
    elapsed_s: float
    rate_cps: float
    offered_rate_cps: float
    max_concurrent: int


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def quiet(sipp: Sipp) -> Sipp:
    """Drop sipp's per-message and screen traces (statistics and errors stay)."""
    argv: list[str] = []
    skip = 0
    for arg in sipp.argv:
        if skip:
            skip -= 1
            continue
        if arg in _TRACE_OPTIONS:
            skip = _TRACE_OPTIONS[arg]
            continue
        argv.append(arg)
    sipp.argv = argv
    return sipp


def register_at(kam: Kamailio, pki: TestPki, user: str, contact: str) -> None:
    """REGISTER ``user`` -> ``contact`` at kamailio over verified TLS."""
    ctx = client_ssl_context(pki)
    with (
        socket.create_connection(kam.tls_address, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=kam.host) as tls,
    ):
        local = tls.getsockname()
        tls.sendall(
            sip_register_request(
                user=user,
                domain=PROVIDER,
                transport="TLS",
                local=(local[0], local[1]),
                contact=contact,
                expires=3600,
            )
        )
        while True:
            reply = read_sip_message(tls, 5)
            if status_code(reply) >= 200:
                if status_code(reply) != 200:
                    raise PeerError(f"kamailio refused the REGISTER of {user}: {reply}")
                return


def _elapsed(raw: dict[str, str]) -> float | None:
    """sipp's ElapsedTime(C) ("HH:MM:SS:usec") in seconds."""
    value = raw.get("ElapsedTime(C)", "")
    parts = value.split(":")
    if len(parts) != 4:
        return None
    try:
        h, m, s, us = (int(p) for p in parts)
    except ValueError:
        return None
    return h * 3600 + m * 60 + s + us / 1e6


class Bench:
    """The peers of one run; :meth:`close` stops them all (newest first)."""

    def __init__(self, workdir: Path, *, limit: int, hold_ms: int) -> None:
        self.workdir = workdir
        self.limit = limit
        self.hold_ms = hold_ms
        self.procs: list[ManagedProcess] = []
        self.pki = make_test_pki(workdir / "pki")
        self.kamailio: Kamailio | None = None
        self.gateway: GatewayProcess | None = None
        self.uas: Sipp | None = None

    def start(self, proc: ManagedProcess) -> Any:
        self.procs.append(proc)
        proc.start()
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()

    def bring_up(self, total_calls: int) -> None:
        """kamailio (TLS + UDP), the TLS UAS registered as 7000, and the gateway."""
        udp_port = free_port(PROVIDER, proto="udp")
        kam = Kamailio(
            self.workdir / "kamailio", self.pki, host=PROVIDER, udp_port=udp_port, debug=1
        )
        # The test harness's 64 MB of shared memory runs out at a few hundred calls per second
        # (transactions linger for their timers; the TLS module then refuses to send: 477).
        kam.argv[kam.argv.index("-m") + 1] = str(KAMAILIO_SHM_MB)
        kam.argv[kam.argv.index("-M") + 1] = str(KAMAILIO_PKG_MB)
        self.kamailio = self.start(kam)
        uas_port = free_port(PROVIDER, proto="tcp")
        tunnel = Stunnel(self.workdir / "stunnel", self.pki)
        tls_in = tunnel.add_server((PROVIDER, uas_port))
        contact = f"sip:uas@{PROVIDER}:{tls_in.accept[1]};transport=tls"
        self.uas = self.start(
            quiet(
                Sipp(
                    self.workdir / "uas",
                    "wan_uas_answer",
                    host=PROVIDER,
                    port=uas_port,
                    transport="t1",
                    calls=total_calls,
                    timeout=600,
                    contact=contact,
                    name="uas",
                    params={"crypto_key": b64encode(secrets.token_bytes(30)).decode()},
                    extra_args=["-max_socket", "4096"],
                )
            )
        )
        self.start(tunnel)
        register_at(self.kamailio, self.pki, CALLEE, contact)

        layout = GatewayLayout(
            lan_address=GATEWAY_LAN,
            wan_address=GATEWAY_WAN,
            provider_host=PROVIDER,
            provider_port=self.kamailio.tls_port,
            domain=PROVIDER,
            # Room for every call the limit lets be in progress (and calls still closing).
            lan_media=(40000, 41999),
            wan_media=(42000, 43999),
            # The debug log of the interop tests would cost the gateway more than the calls.
            config=merge(UNLIMITED_POLICY, {"log": {"level": "info"}}),
        )
        self.gateway = self.start(GatewayProcess(self.workdir / "gateway", layout, self.pki))
        self.gateway.wait_provider_up()

    def run_flow(
        self, name: str, target: tuple[str, int], calls: int, rate: float, *, warmup: int
    ) -> FlowResult:
        """``warmup`` calls, then ``calls`` at ``rate`` with at most ``limit`` in progress."""
        for label, n, r in (("warmup", warmup, min(rate, 20.0)), ("run", calls, rate)):
            if n <= 0:
                continue
            uac = self.start(
                quiet(
                    Sipp(
                        self.workdir / f"{name}-{label}",
                        "uac_invite",
                        host=PHONE,
                        remote=target,
                        user="1001",
                        to_user=CALLEE,
                        domain=target[0],
                        calls=n,
                        rate=r,
                        limit=self.limit,
                        timeout=max(60.0, 4 * n / max(r, 1.0)),
                        name=f"{name}-{label}",
                        params={"hold_ms": str(self.hold_ms)},
                    )
                )
            )
            t0 = time.monotonic()
            rc = uac.wait_exit(timeout=max(120.0, 6 * n / max(r, 1.0)))
            wall = time.monotonic() - t0
            stats = uac.stats()
            if stats.successful + stats.failed == 0:
                raise uac.fail(f"sipp ran no call (exit {rc})")
        elapsed = _elapsed(stats.raw) or wall
        return FlowResult(
            name=name,
            path=PATHS[name],
            calls=calls,
            successful=stats.successful,
            failed=stats.failed,
            elapsed_s=round(elapsed, 3),
            rate_cps=round(stats.successful / elapsed, 1) if elapsed > 0 else 0.0,
            offered_rate_cps=rate,
            max_concurrent=self.limit,
        )


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="bench-sip-setup-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table(results: list[FlowResult], ratio: float | None) -> str:
    lines = [
        f"{'flow':<10} {'calls':>6} {'ok':>6} {'failed':>6} {'seconds':>8} {'setups/s':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<10} {r.calls:>6} {r.successful:>6} {r.failed:>6} "
            f"{r.elapsed_s:>8.2f} {r.rate_cps:>9.1f}"
        )
    if ratio is not None:
        lines.append(f"gateway / kamailio alone: {ratio:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per flow (default 2000)")
    parser.add_argument(
        "--rate",
        type=float,
        default=3000.0,
        help="offered call rate per second (default 3000: more than either side takes, so "
        "the concurrency limit sets the pace)",
    )
    parser.add_argument(
        "--limit", type=int, default=40, help="calls in progress at most (default 40)"
    )
    parser.add_argument(
        "--hold-ms",
        type=int,
        default=20,
        help="time between ACK and BYE (default 20 ms; with 0, kamailio's parallel workers "
        "sometimes relay the BYE before the ACK and the UAS aborts the call)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="warm-up calls per flow")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument("--workdir", type=Path, help="keep peers' files and logs here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rate <= 0 or args.limit < 1:
        parser.error("--calls, --rate and --limit must be positive")
    missing = missing_binaries()
    if missing:
        print(f"error: missing peer binaries: {', '.join(missing)}", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.UTC)
    with workspace(args.workdir) as workdir:
        bench = Bench(workdir, limit=args.limit, hold_ms=args.hold_ms)
        try:
            bench.bring_up(total_calls=2 * (args.calls + args.warmup))
            assert bench.gateway is not None and bench.kamailio is not None
            assert bench.kamailio.udp_port is not None
            results = [
                bench.run_flow(
                    "gateway", bench.gateway.lan, args.calls, args.rate, warmup=args.warmup
                ),
                bench.run_flow(
                    "kamailio",
                    (PROVIDER, bench.kamailio.udp_port),
                    args.calls,
                    args.rate,
                    warmup=args.warmup,
                ),
            ]
        except PeerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.close()

    gw, kam = results
    ratio = round(gw.rate_cps / kam.rate_cps, 3) if kam.rate_cps > 0 else None
    record = {
        "benchmark": "sip-setup-rate",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "call": "INVITE, 180, 200, ACK, BYE, 200 (no media packets; SDP offered and answered)",
        "hold_ms": args.hold_ms,
        "calls_per_flow": args.calls,
        "offered_rate_cps": args.rate,
        "max_concurrent": args.limit,
        "warmup_calls": args.warmup,
        "gateway": asdict(gw),
        "kamailio": asdict(kam),
        "gateway_rate_cps": gw.rate_cps,
        "kamailio_rate_cps": kam.rate_cps,
        "ratio": ratio,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    print(table(results, ratio))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sip-setup-{started:%Y-%m-%d}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    complete = all(r.failed == 0 and r.successful == r.calls for r in results)
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
