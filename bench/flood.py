"""Floods while calls run: what each costs the other calls and a well-behaved phone.

Usage (from the repository root, as root: pinning, priorities and spoofed sources need it)::

    .venv/bin/python -m bench.flood                          # 200 calls, every scenario
    .venv/bin/python -m bench.flood --smoke --json out.json  # 5 calls, a few seconds a window
    .venv/bin/python -m bench.flood --scenarios a,d --seconds 8 --rounds 3

The real ``gateway run`` (lab provider over verified TLS answering with SDES, its WAN TLS
listener on, admin and /metrics on) carries ``--calls`` calls set up by SIP from UDP phones
(:class:`~gateway.bench.sip.SipGatewayTarget`); the compiled generator
(``gateway/bench/loadgen.c``) sends their media at 20 ms both ways and measures one-way latency
and RFC 3550 jitter at the receivers. A separate phone REGISTERs through the gateway to the
provider every ~100 ms with a fresh CSeq (RFC 3261 §10.2.4 refreshes) and the bench times each
round trip. Per scenario, baseline and flood windows alternate (baseline, flood, baseline,
flood ...) so that the host's other load falls on both alike; each window sets its calls up
afresh (the generator restarts its sequence numbers, which an SRTP replay window would refuse
on calls kept from the window before, RFC 3711 §3.3.2).

Scenarios (issue 13), floods from ``bench/flood_senders.py`` child processes:

- ``a``: 10,000 SIP requests/s over UDP from one LAN source (OPTIONS/INVITE/REGISTER to a
  sweep of extensions); the flood defence bans it: how many were answered, and when the last.
- ``b-handshake``: TCP connects with a ClientHello, then a reset, at the WAN TLS listener.
- ``b-slowloris``: connections that send their ClientHello a byte every 2 s.
- ``c-wrong-source``: RTP at one call's LAN port from another address.
- ``c-random-ssrc``: RTP at that port from the phone's own address and port (a raw socket),
  a new SSRC in every packet.
- ``d``: SRTP with bad authentication tags at one call's WAN port, from the provider's own
  address and port, with the call's SSRC.

Writes JSON (``--json``, default ``bench/results/flood-<date>.json``): per scenario each
window's latency p50/p99, jitter, loss, CPU, REGISTER round trips, the flood's rate and result,
and the gateway's counters that moved (from /metrics); the flood/baseline ratios over the
windows. Nothing here asserts: the smoke test checks the JSON's shape only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import secrets
import socket
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.bench.loadgen import (
    PHONE_MEDIA_PORT,
    PROVIDER_MEDIA_PORT,
    CallLeg,
    build_loadgen,
    run_load,
)
from gateway.bench.report import summarise
from gateway.bench.sip import SipGatewayTarget
from gateway.media.suites import SrtpSuite

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# Loopback addresses of this bench's own (127.0.22.0/24), apart from every other bench and test.
NET = "127.0.22"
LAN = f"{NET}.120"
WAN = f"{NET}.121"
PHONE = f"{NET}.110"
PROVIDER = f"{NET}.130"
REGISTER_PHONE = f"{NET}.111"
SCANNER_FIRST = 50  # scenario (a): one fresh scanner address per flood window, .50 upwards
WRONG_SOURCE = f"{NET}.60"
TLS_FLOODER = f"{NET}.70"  # and the next three
SLOWLORIS = f"{NET}.80"
#: The generator's SSRC of call 0's provider → gateway stream (``SSRC_BASE + 1`` in loadgen.c).
CALL0_WAN_SSRC = 0x42000001
#: Cores: the media worker on 0 (SCHED_FIFO 1, as in bench/harness.py), the generator and the
#: floods on 1, all at the default nice value; the signalling process and this bench (the
#: REGISTER probe) are not pinned. The generator at nice -20 on the signalling's core (the
#: harness's layout) left the signalling process so little time that REGISTER round trips of
#: the baseline windows took 60-300 ms: that measured the generator, not the floods.
MEDIA_CPU, LOAD_CPU = 0, 1
REGISTER_INTERVAL = 0.1
REGISTER_TIMEOUT = 2.0

SCENARIOS = ("a", "b-handshake", "b-slowloris", "c-wrong-source", "c-random-ssrc", "d")

#: Per-source limits of the bench's gateway. One phone address sets up every call of a window
#: (INVITE, ACK, BYE each: 600 requests for 200 calls within a second or two) and the probe
#: REGISTERs ten times a second, so the defaults (20/s, burst 60; REGISTER 1/s) would refuse
#: them; these still ban a 10,000/s source within a fraction of a second.
FLOOD_POLICY = """\
[policy.allowlist]
lan = ["{net}.0/24"]

[policy.flood]
per_source = {{ rate = 1000.0, burst = 3000.0 }}
register = {{ rate = 20.0, burst = 40.0 }}
invite = {{ rate = 1000.0, burst = 3000.0 }}
site = {{ rate = 0.0, burst = 0.0 }}
never_ban = ["{phone}/32", "{register}/32"]

"""


def _free_port(address: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


class FloodGateway(SipGatewayTarget):
    """The benchmark's gateway, plus its WAN TLS listener, the admin API and /metrics."""

    def __init__(self, suite: SrtpSuite, max_calls: int) -> None:
        super().__init__(
            suite,
            PHONE_MEDIA_PORT,
            PROVIDER_MEDIA_PORT,
            media_cpu=MEDIA_CPU,
            other_cpu=None,
            max_calls=max_calls,
            realtime_priority=1,
            lan_address=LAN,
            wan_address=WAN,
            phone_address=PHONE,
            provider_address=PROVIDER,
        )
        self.listen_port = _free_port(WAN)
        self.admin_port = _free_port(LAN)
        self.metrics_port = _free_port(LAN)
        self.token = secrets.token_hex(16)
        os.environ["GATEWAY_ADMIN_TOKEN"] = self.token  # read by the gateway child

    @property
    def lan_sip(self) -> tuple[str, int]:
        return (LAN, self._lan_port)

    def config_text(self, provider_port: int, lan_port: int) -> str:
        text = super().config_text(provider_port, lan_port)
        text = re.sub(
            r"(srtp_suites = .*\n)", rf"\1listen_port = {self.listen_port}\n", text, count=1
        )
        policy = FLOOD_POLICY.format(net=NET, phone=PHONE, register=REGISTER_PHONE)
        text = re.sub(r"\[policy\.allowlist\].*?(?=\[policy\.caps\])", policy, text, flags=re.S)
        text += (
            "\n[admin]\nenabled = true\n"
            f'listen = "{LAN}:{self.admin_port}"\n'
            f'metrics_listen = "{LAN}:{self.metrics_port}"\n'
        )
        if "[control]" not in text:
            # The default control socket is the host's one gateway's: ours sits in its folder.
            text += '\n[control]\nsocket = "control.sock"\n'
        return text

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by name and labels."""
        url = f"http://{LAN}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://{LAN}:{self.admin_port}{path}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters (``*_total``) that changed between two scrapes, and the ban gauge."""
    out = {}
    for key, value in after.items():
        if "_total" in key or key.startswith("gateway_bans "):
            delta = value - before.get(key, 0.0)
            if delta:
                out[key] = round(delta, 3)
    return out


# ----------------------------------------------------------------------------- REGISTER probe


@dataclass
class RegisterProbe(asyncio.DatagramProtocol):
    """A well-behaved phone: a REGISTER refresh every ~100 ms, each one timed to its answer."""

    proxy: tuple[str, int]
    user: str = "2999"
    sent: dict[int, float] = field(default_factory=dict)
    #: (send time, round trip in seconds or None for no answer, status)
    samples: list[tuple[float, float | None, int]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    _cseq: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        head = data.split(b"\r\n\r\n", 1)[0]
        if not head.startswith(b"SIP/2.0 "):
            return
        status = int(head[8:11])
        if status < 200:
            return
        found = re.search(rb"\r\nCSeq:\s*(\d+)", head, re.I)
        if found is None:
            return
        cseq = int(found.group(1))
        started = self.sent.pop(cseq, None)
        if started is not None:
            self.samples.append((started, now - started, status))

    def error_received(self, exc: Exception) -> None:
        return None

    def send(self) -> None:
        assert self.transport is not None
        self._cseq += 1
        host, port = self.transport.get_extra_info("sockname")[:2]
        message = (
            f"REGISTER sip:{self.proxy[0]}:{self.proxy[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-reg-{self._cseq};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{self.user}@{self.proxy[0]}>;tag=probe\r\n"
            f"To: <sip:{self.user}@{self.proxy[0]}>\r\n"
            f"Call-ID: register-probe@{host}\r\n"
            f"CSeq: {self._cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@{host}:{port}>\r\n"
            "Expires: 3600\r\n"
            "User-Agent: bench-register-probe\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self.sent[self._cseq] = time.monotonic()
        self.transport.sendto(message.encode(), self.proxy)

    def expire(self) -> None:
        limit = time.monotonic() - REGISTER_TIMEOUT
        for cseq, started in list(self.sent.items()):
            if started < limit:
                del self.sent[cseq]
                self.samples.append((started, None, 0))

    async def run(self) -> None:
        while True:
            self.send()
            self.expire()
            await asyncio.sleep(REGISTER_INTERVAL)

    def window(self, start: float, stop: float) -> dict[str, Any]:
        rtts = sorted(
            rtt * 1000 for t, rtt, _ in self.samples if start <= t < stop and rtt is not None
        )
        lost = sum(1 for t, rtt, _ in self.samples if start <= t < stop and rtt is None)
        statuses: dict[str, int] = {}
        for t, _, status in self.samples:
            if start <= t < stop:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "answered": len(rtts),
            "unanswered": lost,
            "status": statuses,
            "rtt_ms_p50": round(_pct(rtts, 50), 3) if rtts else None,
            "rtt_ms_p99": round(_pct(rtts, 99), 3) if rtts else None,
            "rtt_ms_max": round(rtts[-1], 3) if rtts else None,
        }


def _pct(values: list[float], p: float) -> float:
    index = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[index]


# ----------------------------------------------------------------------------- floods


@dataclass
class Flood:
    """One running flood child: started before the generator, collected after it."""

    process: asyncio.subprocess.Process

    async def result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        out, err = await self.process.communicate()
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        if self.process.returncode != 0 or not lines:
            raise RuntimeError(f"flood sender failed: {err.decode().strip()}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def flood_argv(
    scenario: str, gateway: FloodGateway, leg: CallLeg, round_: int, args: argparse.Namespace
) -> list[str]:
    """The flood child's command line for ``scenario`` aimed at this window's calls."""
    if scenario == "a":
        lan_host, lan_port = gateway.lan_sip
        kind = ["sip", "--source", f"{NET}.{SCANNER_FIRST + round_}"]
        kind += ["--target", f"{lan_host}:{lan_port}", "--rate", str(args.sip_rate)]
    elif scenario == "b-handshake":
        kind = ["tls", "--source", TLS_FLOODER, "--target", f"{WAN}:{gateway.listen_port}"]
        kind += ["--rate", str(args.tls_rate)]
    elif scenario == "b-slowloris":
        kind = ["slowloris", "--source", SLOWLORIS, "--target", f"{WAN}:{gateway.listen_port}"]
        kind += ["--connections", str(args.slowloris), "--interval", "2"]
    elif scenario == "c-wrong-source":
        kind = ["rtp", "--source", WRONG_SOURCE, "--target", f"{leg.lan[0]}:{leg.lan[1]}"]
        kind += ["--rate", str(args.rtp_rate)]
    elif scenario == "c-random-ssrc":
        kind = ["rtp", "--source", PHONE, "--spoof-port", str(PHONE_MEDIA_PORT)]
        kind += ["--target", f"{leg.lan[0]}:{leg.lan[1]}", "--rate", str(args.rtp_rate)]
    elif scenario == "d":
        kind = ["srtp", "--source", PROVIDER, "--spoof-port", str(PROVIDER_MEDIA_PORT)]
        kind += ["--target", f"{leg.wan[0]}:{leg.wan[1]}", "--rate", str(args.rtp_rate)]
        kind += ["--ssrc", hex(CALL0_WAN_SSRC)]
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    # The flood begins once the calls' media flows (half-way through the generator's warm-up)
    # and lasts past its measured window. Starting before a call's first packet is another
    # attack: docs/robustness.md, "Floods".
    delay = args.warmup / 2
    seconds = args.warmup / 2 + args.seconds + 0.5
    return [
        sys.executable, "-m", "bench.flood_senders", *kind,
        "--seconds", str(seconds), "--cpu", str(LOAD_CPU), "--delay", str(delay),
    ]  # fmt: skip


async def start_flood(argv: list[str]) -> Flood:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30.0)
    if line.strip() != b"ready":
        _, err = await process.communicate()
        raise RuntimeError(f"flood sender did not start: {line!r} {err.decode().strip()}")
    return Flood(process)


# ----------------------------------------------------------------------------- windows


async def window(
    exe: Path,
    gateway: FloodGateway,
    probe: RegisterProbe,
    scenario: str,
    flooded: bool,
    round_: int,
    args: argparse.Namespace,
    suite: SrtpSuite,
) -> dict[str, Any]:
    legs = await gateway.open_calls(args.calls)
    if not legs:
        raise RuntimeError("no call was set up")
    before = await asyncio.to_thread(gateway.metrics)
    flood = None
    if flooded:
        flood = await start_flood(flood_argv(scenario, gateway, legs[0], round_, args))
    started = time.monotonic()
    try:
        load = await asyncio.to_thread(
            run_load,
            exe,
            legs,
            phone=(PHONE, PHONE_MEDIA_PORT),
            provider=(PROVIDER, PROVIDER_MEDIA_PORT),
            profile=suite.libsrtp_profile,
            duration=args.seconds,
            warmup=args.warmup,
            load_cpu=LOAD_CPU,
            watch=gateway.watched(),
            realtime=False,
        )
    finally:
        flood_result = await flood.result() if flood is not None else None
    stopped = time.monotonic()
    after = await asyncio.to_thread(gateway.metrics)
    bans = await asyncio.to_thread(gateway.api, "/api/bans") if scenario == "a" else None
    await gateway.close_calls()
    record = summarise(
        "gateway",
        suite.value,
        load.raw,
        cpu_pct=load.cpu_pct,
        rss_mib=load.rss_mib,
        ptime_ms=20.0,
        calls_failed=args.calls - len(legs),
    )
    out: dict[str, Any] = {
        "window": "flood" if flooded else "baseline",
        "round": round_,
        "calls": len(legs),
        "latency_us": {"p50": record.latency_us.p50, "p99": record.latency_us.p99},
        "jitter_us": round(record.jitter_us, 2),
        "loss_pct": round(record.loss_pct, 4),
        "srtp_failures": record.srtp_failures,
        "cpu_pct": {k: round(v, 1) for k, v in record.cpu_pct.items()},
        "generator_ok": record.generator_ok,
        # The probe's REGISTERs over the generator's whole run (warm-up included).
        "register": probe.window(started, stopped),
        "gateway_counted": moved(before, after),
        # The host is shared: its 1-minute load average as the window ends, to read each
        # window's figures against.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if flood_result is not None:
        out["flood"] = flood_result
    if bans is not None:
        out["bans"] = [
            {k: b.get(k) for k in ("address", "rule", "offences", "remaining_seconds")}
            for b in (bans.get("bans", bans) if isinstance(bans, dict) else bans)
        ]
    return out


def ratios(windows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Flood over baseline, means over the rounds: latency p50/p99, jitter, REGISTER p99."""

    def mean(kind: str, pick: Any) -> float | None:
        values = [pick(w) for w in windows if w["window"] == kind]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    picks = {
        "latency_p50": lambda w: w["latency_us"]["p50"],
        "latency_p99": lambda w: w["latency_us"]["p99"],
        "jitter": lambda w: w["jitter_us"],
        "register_rtt_p99": lambda w: w["register"]["rtt_ms_p99"],
    }
    out: dict[str, float | None] = {}
    for name, pick in picks.items():
        base, flood = mean("baseline", pick), mean("flood", pick)
        out[name] = round(flood / base, 3) if base and flood is not None else None
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    exe = build_loadgen()
    gateway = FloodGateway(suite, args.calls)
    await gateway.start()
    loop = asyncio.get_running_loop()
    _, probe = await loop.create_datagram_endpoint(
        lambda: RegisterProbe(gateway.lan_sip), local_addr=(REGISTER_PHONE, 0)
    )
    probe_task = loop.create_task(probe.run())
    results: dict[str, Any] = {}
    try:
        for scenario in args.scenarios:
            print(f"scenario {scenario}", flush=True)
            windows = []
            for round_ in range(args.rounds):
                for flooded in (False, True):
                    w = await window(exe, gateway, probe, scenario, flooded, round_, args, suite)
                    windows.append(w)
                    _progress(w)
            results[scenario] = {"windows": windows, "ratio_flood_to_baseline": ratios(windows)}
    finally:
        probe_task.cancel()
        if probe.transport is not None:
            probe.transport.close()
        await gateway.stop()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "kernel": os.uname().release,
            "load_average_at_start": args.load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "method": {
            "calls": args.calls,
            "seconds_per_window": args.seconds,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "suite": suite.value,
            "media_cpu": MEDIA_CPU,
            "load_cpu": LOAD_CPU,
            "register_interval_s": REGISTER_INTERVAL,
            "sip_rate": args.sip_rate,
            "tls_rate": args.tls_rate,
            "slowloris_connections": args.slowloris,
            "rtp_rate": args.rtp_rate,
            "policy": FLOOD_POLICY.format(net=NET, phone=PHONE, register=REGISTER_PHONE),
        },
        "scenarios": results,
    }


def _progress(w: dict[str, Any]) -> None:
    reg = w["register"]
    flood = w.get("flood", {})
    print(
        f"  {w['window']:<8} r{w['round']} calls {w['calls']:>4}"
        f"  p50 {w['latency_us']['p50']:>7.1f} µs  p99 {w['latency_us']['p99']:>8.1f} µs"
        f"  jitter {w['jitter_us']:>6.1f} µs  loss {w['loss_pct']:.3f}%"
        f"  REGISTER p50/p99 {reg['rtt_ms_p50']}/{reg['rtt_ms_p99']} ms"
        f" ({reg['unanswered']} unanswered)" + (f"  flood {flood.get('rate')}/s" if flood else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, help="baseline/flood pairs per scenario")
    parser.add_argument("--scenarios", default="a,b,c,d", help="a, b, c, d or full names")
    parser.add_argument("--sip-rate", type=float, default=10000.0)
    parser.add_argument("--tls-rate", type=float, default=1000.0)
    parser.add_argument("--slowloris", type=int, default=500, help="slow-loris connections")
    parser.add_argument("--rtp-rate", type=float, default=20000.0)
    parser.add_argument("--smoke", action="store_true", help="5 calls, a few seconds a window")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.scenarios = [s for s in SCENARIOS if any(s == w or s.startswith(w + "-") for w in wanted)]
    if not args.scenarios:
        parser.error(f"no scenario in {wanted}; known: {', '.join(SCENARIOS)}")
    if args.smoke:
        args.calls = min(args.calls, 5)
        args.slowloris = min(args.slowloris, 20)
        args.warmup = 0.5
    args.seconds = args.seconds or (2.0 if args.smoke else 10.0)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    args.load_at_start = [round(x, 2) for x in os.getloadavg()]
    if os.geteuid() != 0 and any(s in args.scenarios for s in ("c-random-ssrc", "d")):
        print("not root: the spoofed-source floods (c-random-ssrc, d) need a raw socket")
    result = asyncio.run(run(args))
    path = args.json or RESULTS / f"flood-{datetime.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(msgspec.to_builtins(result), indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
