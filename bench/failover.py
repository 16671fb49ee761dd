"""Failover figures of an active/standby pair (issue 14): audio gap, new calls, replication cost.

Usage (from the repository root, as root: it builds network namespaces)::

    .venv/bin/python -m bench.failover                      # 4 calls per drill, 300 set-ups
    .venv/bin/python -m bench.failover --calls 6 --setups 600 --drills kill-gateway
    .venv/bin/python -m bench.failover --smoke --json out.json
    .venv/bin/python -m bench.failover --drills --setups 600 --rounds 6 --hold-ms 500  # cost

**Drills** run in the HA lab of the interop tests (tests/interop/ha_lab.py, ha_pair.py): two
gateways with ``[ha] enabled`` in their own namespaces, keepalived (VRRPv3, 0.2 s adverts,
unicast, both virtual addresses in one sync group, a check script every second that fails when
the node's gateway is gone, the gateway reading keepalived's notify FIFO), Redis on a UNIX socket,
kamailio over TLS with srtp-mand baresips, plain baresips on the LAN bridge; tshark on both
bridges. With N calls up (440 Hz from each plain phone, 1000 Hz from each SRTP phone) one of:

- ``kill-gateway``: SIGKILL to the active gateway's main process,
- ``links-down``: the active node's LAN and WAN interfaces go down,
- ``kill-worker``: SIGKILL to one media worker of the active gateway (no switchover).

Reported per drill: the audio gap of each call per direction (the longest silence in the
capture across the failure: to the phones on the LAN bridge, to the provider on the WAN bridge,
decrypted), p50 and max over the calls; calls kept over calls up (streams that still carry
audio both ways after the takeover); the time from the failure until a new call succeeds (a
spare plain phone dials a spare SRTP phone from the moment of the failure, each attempt given
one second); the takeover's timeline (the new master's keepalived notify, the gateway's
"promoted" line, its role active); and what leaked on the WAN bridge (packets from a gateway
that are not SRTP under a gateway's key, plain SIP, TCP that is not TLS: all must be 0).

**Replication cost**: one kamailio (TLS), one sipp UAS behind stunnel registered as 7000, and two
gateways on loopback in front of them, identical but for Redis: gateway A keeps its state in
its folder only, gateway B has ``[state] redis_url`` and ``[ha] enabled`` (told ``master``, so it
writes every call's record to Redis). sipp calls through both (a warm-up: TLS up, caches
filled), both are watched 5 s without a call (idle CPU), then ``--rounds`` rounds of
``--setups / --rounds`` calls through each, interleaved (A B, B A, A B, ...) so that the host's
drift and the other load hit both alike (INVITE, 200, ACK, ``--hold-ms``, BYE; 10 at a time,
50 per second at most). Measured: the signalling process's CPU (schedstat, nanoseconds, every
thread of the main process: media workers are children) per call set-up, per round and side;
reported as median, min and max per side, the extra of B's median over A's in percent, and
B over A per round. Gateway B runs under bench/ha_cost_probe.py, which adds up the CPU its
replication itself spends over the measured rounds (collecting and encoding changed calls,
sealing their keys, the Redis pipeline, the marker check) and counts the writes; Redis' own
CPU is reported beside it. With the default 20 ms calls most calls end within one replicate
round and are never written; ``--hold-ms 500`` has every call written while it is up.

By default each gateway reads keepalived's notify FIFO itself (``[ha] keepalived_fifo``, as
deploy/ha/keepalived.conf has it; results in ``failover-<date>-fifo``). ``--notify cli`` runs
``gateway ha notify`` from keepalived's notify script instead (results in
``failover-<date>``), ``--notify socket`` posts the word to the control socket with curl
(``failover-<date>-socket-notify``). ``--check script`` tracks the gateway with
deploy/ha/ha-check and the deployed timing instead of the process's state.

Writes a table to stdout and JSON to ``bench/results/failover-<date>.json`` (``--json`` for
another file). Nothing here asserts: CI's smoke run (tests/test_bench_failover.py) checks the
figures exist.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sip_setup_rate import UNLIMITED_POLICY, Bench, quiet
from tests.gateway_config import merge
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.ha_lab import LAN_VIP, HaLab, lab_pki
from tests.interop.ha_pair import (
    FAILURES,
    Drill,
    Failure,
    Pair,
    gateway_cli,
    ha_missing,
    ha_status,
)
from tests.interop.ha_wan import MIN_PACKETS, phone_keys, to_phones, to_provider, wan_leaks
from tests.interop.peers import Baresip, ManagedProcess, PeerError, Sipp
from tests.interop.peers import free_port as _free_port

RESULTS = Path(__file__).resolve().parent / "results"
BINARIES = ("ip", "keepalived", "redis-server", "kamailio", "baresip", "tshark", "sipp", "stunnel")
#: Seconds of audio before the failure and after the takeover.
AUDIO = 3.0
#: Replication flow: the phone and gateway B on loopback addresses of this benchmark's own.
PHONE = "127.0.14.10"
GATEWAY_B = ("127.0.14.22", "127.0.14.23")
TICKS = os.sysconf("SC_CLK_TCK")
Notify = Literal["fifo", "cli", "socket"]
Check = Literal["proc", "gateway", "script"]


def missing_binaries() -> list[str]:
    return [
        b
        for b in BINARIES
        if shutil.which(b) is None and not any(Path(d, b).exists() for d in ("/usr/sbin", "/sbin"))
    ]


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "max_ms": None}
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _log_time(gw: GatewayProcess, pattern: str) -> float | None:
    """Unix time of the first JSON log line of ``gw`` whose message matches ``pattern``."""
    for line in gw.stderr().splitlines():
        if line.startswith("{") and re.search(pattern, line):
            try:
                return float(json.loads(line)["time"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def _established(phone: Baresip) -> int:
    return len(re.findall(r"Call established", phone.output()))


def first_new_call(lab: HaLab, caller: Baresip, callee: Baresip, since: float) -> float | None:
    """Seconds from ``since`` until a call from ``caller`` to ``callee`` is answered, dialling
    again every second until one is (None after 30 s)."""
    ns = lab.ns["lan"]
    before = _established(caller)
    while time.time() - since < 30.0:
        with contextlib.suppress(PeerError):  # a refused dial is one more failed attempt
            caller.dial(ns, f"sip:{callee.user}@{LAN_VIP}:5060")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if _established(caller) > before:
                took = time.time() - since
                time.sleep(0.5)
                caller.hangup(ns)
                return took
            time.sleep(0.02)
        with contextlib.suppress(PeerError):
            caller.hangup(ns)  # give up this attempt (CANCEL), dial again
    return None


def run_drill(
    failure: Failure, calls: int, workdir: Path, notify_via: Notify, check_via: Check
) -> dict[str, Any]:
    """One drill in a lab of its own; its figures."""
    pki = lab_pki(workdir / "pki")
    with HaLab(workdir / "lab", pki) as lab:
        pair = Pair.start(lab, notify_via, check_via)
        drill = Drill(pair, calls=calls)
        drill.set_up()
        callee = lab.provider_phone("3009")
        caller = lab.legacy_phone("2009")
        time.sleep(AUDIO)
        drill.fail(failure)
        new_call = first_new_call(lab, caller, callee, drill.event_at)
        recovered = drill.wait_recovered()
        time.sleep(AUDIO)
        active = drill.active
        timeline: dict[str, float | None] = {"recovered_s": round(recovered, 3)}
        if drill.new_active != "gwa":
            roles = lab.notify_log(drill.new_active).read_text().splitlines()
            master_at = [float(r.split()[0]) for r in roles if r.endswith(" master")]
            timeline["keepalived_master_s"] = round(master_at[-1] - drill.event_at, 3)
            promoted = _log_time(active, r"HA: promoted")
            timeline["promoted_s"] = round(promoted - drill.event_at, 3) if promoted else None
        status = ha_status(active)
        drill.hang_up()
        drill.stop_captures()
        callee.stop()
        caller.stop()
        assert drill.wan is not None and drill.lan is not None
        wan, lan = drill.wan.packets(), drill.lan.packets()
        keys = phone_keys([*drill.secures, callee])
        window = (drill.event_at, drill.event_at + recovered + AUDIO)
        after = drill.event_at + recovered
        directions: dict[str, Any] = {}
        kept = []
        for name, streams in (
            ("to_phones", to_phones(lan)),
            ("to_provider", to_provider(wan, keys)),
        ):
            across = [s for s in streams if s.gap(*window) is not None]
            gaps = [g for s in across if (g := s.gap(*window)) is not None]
            directions[name] = _ms(gaps)
            kept.append(sum(1 for s in across if len(s.after(after)) > MIN_PACKETS))
        return {
            "failure": failure,
            "calls_up": calls,
            "calls_kept": min(kept),
            "gap_to_phones": directions["to_phones"],
            "gap_to_provider": directions["to_provider"],
            "new_call_after_s": round(new_call, 3) if new_call is not None else None,
            "timeline": timeline,
            "new_active": drill.new_active,
            "new_active_role": status.get("role"),
            "takeover": status.get("takeover") if drill.new_active != "gwa" else None,
            "wan_bridge": wan_leaks(wan, keys),
        }


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


class _Redis(ManagedProcess):
    def __init__(self, workdir: Path) -> None:
        self.socket_path = workdir / "redis.sock"
        argv = ["redis-server", "--port", "0", "--unixsocket", str(self.socket_path),
                "--save", "", "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
        super().__init__(argv, name="redis", logdir=workdir)

    def start(self) -> _Redis:
        super().start()
        self.wait_ready(self.socket_path.exists, timeout=15)
        return self


def _cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s threads in nanoseconds (schedstat: no 10 ms clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _probe(gw: GatewayProcess, out: Path, last: int) -> dict[str, Any]:
    """Ask the probe wrapping ``gw`` (SIGUSR1) for its totals; wait for the new ones."""
    os.kill(gw.pid, signal.SIGUSR1)

    def fresh() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(out.read_text())["n"]) > last
        return False

    gw.wait_ready(fresh, timeout=10)
    return dict(json.loads(out.read_text()))


#: Seconds both gateways are watched with no call, for their idle CPU.
IDLE = 5.0
#: What bench/ha_cost_probe.py counts of the active's writes.
COUNTS = ("rounds", "flushes", "encoded", "written", "deleted", "deleted_never_written")


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def replication_cost(
    workdir: Path,
    setups: int,
    rounds: int = 6,
    hold_ms: int = 20,
    profile: Path | None = None,
) -> dict[str, Any]:
    """CPU of the signalling process per call set-up, without and with Redis replication.

    After a warm-up through both, ``rounds`` rounds of ``setups // rounds`` set-ups through
    each gateway, interleaved (A then B, then B then A, ...) so that drift in the host's load
    hits both alike; each round gives a figure per side. Gateway B runs under
    bench/ha_cost_probe.py, which adds up the CPU its replication spends (collect, encode,
    seal, flush) over the measured rounds."""
    warm = max(5, setups // 4)
    per_round = max(1, setups // rounds)
    bench = Bench(workdir, limit=10, hold_ms=hold_ms)
    try:
        bench.bring_up(total_calls=2 * (rounds * per_round + warm) + 10)
        assert bench.gateway is not None and bench.kamailio is not None
        redis = bench.start(_Redis(workdir / "redis"))
        ha = ha_missing() is None
        config: dict[str, Any] = {"state": {"redis_url": f"unix://{redis.socket_path}"}}
        if ha:
            config["ha"] = {"enabled": True, "node": "b", "peer": "a", "replicate_interval": 0.2}
        layout = GatewayLayout(
            lan_address=GATEWAY_B[0],
            wan_address=GATEWAY_B[1],
            lan_port=_free_port(GATEWAY_B[0]),
            wan_listen_port=_free_port(GATEWAY_B[1], proto="tcp"),
            provider_host=bench.kamailio.host,
            provider_port=bench.kamailio.tls_port,
            domain=bench.kamailio.host,
            lan_media=(44000, 45999),
            wan_media=(46000, 47999),
            config=merge(UNLIMITED_POLICY, {"log": {"level": "info"}}, config),
        )
        gw_b = GatewayProcess(workdir / "gateway-b", layout, bench.pki)
        probe_out = workdir / "gateway-b" / "probe.json"
        probe = Path(__file__).resolve().parent / "ha_cost_probe.py"
        gw_b.argv = [
            sys.executable,
            str(probe),
            str(probe_out),
            *gw_b.argv[3:],
        ]  # after "-m gateway"
        gw_b.env = {"GATEWAY_STATE_KEY": os.urandom(32).hex()}
        if profile is not None:  # cProfile of B over the measured rounds (a separate run)
            gw_b.env["HA_COST_PROFILE"] = str(profile.resolve())
        bench.procs.append(gw_b)
        if ha:
            ManagedProcess.start(gw_b)
            gw_b.wait_ready(lambda: ha_status(gw_b).get("role") == "standby", timeout=30)
            gateway_cli(gw_b, "ha", "notify", "master")
            gw_b.wait_ready(lambda: ha_status(gw_b).get("role") == "active", timeout=30)
            gw_b.wait_ready(port=layout.lan_port, host=layout.lan_address, proto="udp")
        else:
            gw_b.start()
        gw_b.wait_provider_up()
        targets = {"without_redis": bench.gateway, "with_redis": gw_b}
        # Per measured round and side: CPU ms per call set-up (schedstat), and the totals.
        per_round_ms: dict[str, list[float]] = {name: [] for name in targets}
        ns = dict.fromkeys(targets, 0)
        ticks = dict.fromkeys(targets, 0)
        ok = dict.fromkeys(targets, 0)
        redis_ns = 0
        probe_before: dict[str, Any] = {}
        order = list(targets)
        # Idle CPU of each gateway (no call): what B's timers (writer rounds, marker, state
        # keeper's heartbeat) cost per second whatever the call rate.
        idle_before = {name: _cpu_ns(gw.pid) for name, gw in targets.items()}
        idle_started = time.monotonic()
        time.sleep(IDLE)
        idle_took = time.monotonic() - idle_started
        idle_ms_per_s = {
            name: round((_cpu_ns(gw.pid) - idle_before[name]) / 1e6 / idle_took, 3)
            for name, gw in targets.items()
        }
        seconds = dict.fromkeys(targets, 0.0)
        for round_ in range(rounds + 1):  # round 0 warms both up (TLS, caches)
            if round_ == 1:
                probe_before = _probe(gw_b, probe_out, 0)
            for name in order if round_ % 2 else reversed(order):
                gw = targets[name]
                uac = bench.start(
                    quiet(
                        Sipp(
                            workdir / f"{name}-{round_}",
                            "uac_invite",
                            host=PHONE,
                            remote=gw.lan,
                            user="1001",
                            to_user="7000",
                            domain=gw.lan[0],
                            calls=per_round if round_ else warm,
                            rate=50.0,
                            limit=10,
                            timeout=120,
                            name=f"{name}-{round_}",
                            params={"hold_ms": str(hold_ms)},
                        )
                    )
                )
                before, t_before, r_before = _cpu_ns(gw.pid), _cpu_ticks(gw.pid), _cpu_ns(redis.pid)
                started = time.monotonic()
                uac.wait_exit(timeout=300)
                took = time.monotonic() - started
                if not round_:
                    continue
                spent = _cpu_ns(gw.pid) - before
                done = uac.stats().successful
                ns[name] += spent
                seconds[name] += took
                ticks[name] += _cpu_ticks(gw.pid) - t_before
                ok[name] += done
                if done:
                    per_round_ms[name].append(spent / 1e6 / done)
                if name == "with_redis":
                    redis_ns += _cpu_ns(redis.pid) - r_before
        probe_after = _probe(gw_b, probe_out, int(probe_before.get("n", 0)))
        per_call = {
            name: round(ns[name] / 1e6 / ok[name], 3) if ok[name] else None for name in targets
        }
        spread = {name: _spread(per_round_ms[name]) for name in targets}
        base = spread["without_redis"]["median"]
        with_redis = spread["with_redis"]["median"]
        extra = round((with_redis - base) / base * 100, 1) if base and with_redis else None
        ratios = [
            b / a
            for a, b in zip(per_round_ms["without_redis"], per_round_ms["with_redis"], strict=True)
        ]
        calls_b = ok["with_redis"]
        replication: dict[str, Any] = {
            k: probe_after[k] - probe_before.get(k, 0) for k in probe_after if k != "n"
        }
        own = {
            f"{k[:-2]}_ms_per_call": round(replication[k] * 1000 / calls_b, 4) if calls_b else None
            for k in ("collect_s", "encode_s", "seal_s", "flush_s", "marker_s")
        }
        own_total = (
            round((replication["collect_s"] + replication["flush_s"] + replication["marker_s"])
                  * 1000 / calls_b, 4)
            if calls_b else None
        )  # fmt: skip
        return {
            "calls_measured": ok,
            "rounds": rounds,
            "setups_per_round": per_round,
            "hold_ms": hold_ms,
            "signalling_cpu_ms_per_call": per_call,
            "signalling_cpu_ms_per_call_per_round": {
                name: [round(v, 3) for v in values] for name, values in per_round_ms.items()
            },
            "signalling_cpu_ms_per_call_spread": spread,
            "replication_extra_percent": extra,
            "idle_cpu_ms_per_s": idle_ms_per_s,
            "measured_seconds": {name: round(v, 1) for name, v in seconds.items()},
            "with_over_without_per_round": _spread(ratios),
            "replication_own_cpu": {
                **own,
                "total_ms_per_call": own_total,
                "percent_of_setup": (
                    round(own_total / with_redis * 100, 1) if own_total and with_redis else None
                ),
                "counts": {k: int(replication[k]) for k in COUNTS},
            },
            "signalling_cpu_ms_per_call_ticks": {
                name: round(ticks[name] / TICKS / ok[name] * 1000, 3) if ok[name] else None
                for name in targets
            },
            "redis_cpu_ms_per_call": (round(redis_ns / 1e6 / calls_b, 3) if calls_b else None),
            "ha_enabled_on_b": ha,
            "cpu_clock": "schedstat (ns, all threads of the main process)",
            "clock_ticks_per_s": TICKS,
        }
    finally:
        bench.close()


def table(drills: list[dict[str, Any]], cost: dict[str, Any] | None) -> str:
    lines = [
        f"{'drill':<13} {'kept':>6} {'gap->phones p50/max ms':>23} "
        f"{'gap->provider p50/max ms':>25} {'new call s':>10} {'leaks':>6}"
    ]
    for d in drills:
        leaks = sum(d["wan_bridge"][k] for k in ("not_srtp", "plain_sip", "tcp_not_tls"))
        gp, gw = d["gap_to_phones"], d["gap_to_provider"]
        lines.append(
            f"{d['failure']:<13} {d['calls_kept']:>3}/{d['calls_up']:<2} "
            f"{gp['p50_ms']!s:>11}/{gp['max_ms']!s:<11} {gw['p50_ms']!s:>12}/{gw['max_ms']!s:<12} "
            f"{d['new_call_after_s']!s:>10} {leaks:>6}"
        )
    if cost is not None:
        spread = cost["signalling_cpu_ms_per_call_spread"]
        a, b = spread["without_redis"], spread["with_redis"]
        own = cost["replication_own_cpu"]
        lines.append(
            f"signalling CPU per call set-up, median (min-max) of {cost['rounds']} interleaved "
            f"rounds: {a['median']} ({a['min']}-{a['max']}) ms without Redis, {b['median']} "
            f"({b['min']}-{b['max']}) ms with ({cost['replication_extra_percent']} % more); "
            f"redis-server {cost['redis_cpu_ms_per_call']} ms"
        )
        lines.append(
            f"replication's own CPU in the active: {own['total_ms_per_call']} ms per call "
            f"({own['percent_of_setup']} % of a set-up): collect {own['collect_ms_per_call']} "
            f"(encode {own['encode_ms_per_call']}, seal {own['seal_ms_per_call']}), flush "
            f"{own['flush_ms_per_call']}, marker {own['marker_ms_per_call']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4, help="calls up per drill (1-8)")
    parser.add_argument("--setups", type=int, default=300, help="measured set-ups per gateway")
    parser.add_argument(
        "--rounds", type=int, default=6, help="interleaved measured rounds per gateway (cost)"
    )
    parser.add_argument(
        "--hold-ms",
        type=int,
        default=20,
        help="each measured call's length (cost); from 2 replicate intervals (400) on, every "
        "call is written to Redis while up",
    )
    parser.add_argument(
        "--profile-active",
        type=Path,
        help="cProfile stats of gateway B over the measured rounds to this file (its CPU "
        "figures are then the profiler's, not the gateway's)",
    )
    parser.add_argument("--drills", nargs="*", choices=FAILURES, default=list(FAILURES))
    parser.add_argument("--smoke", action="store_true", help="2 calls, 20 set-ups (CI)")
    parser.add_argument(
        "--notify",
        choices=("fifo", "cli", "socket"),
        default="fifo",
        help="the gateway reads keepalived's notify FIFO itself (fifo, the default, as "
        "deploy/ha/keepalived.conf has it), keepalived's notify runs `gateway ha notify` (cli) "
        "or posts the word to the control socket with curl (socket)",
    )
    parser.add_argument(
        "--check",
        choices=("proc", "gateway", "script"),
        default="proc",
        help="keepalived's track script: the gateway process's state (proc, the default), "
        "deploy/ha/ha-check with deploy/ha/keepalived.conf's timing (script) or `gateway ha "
        "check` every second, 3 s timeout (gateway)",
    )
    parser.add_argument(
        "--no-replication", action="store_true", help="the drills only (no set-up loop)"
    )
    parser.add_argument("--json", type=Path, help="write the JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the labs' files and logs here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.setups, args.rounds = 2, 20, 2
    if not 1 <= args.calls <= 8:
        parser.error("--calls must be 1 to 8")
    missing = missing_binaries()
    if missing or os.geteuid() != 0:
        print(f"error: needs root and {', '.join(missing) or 'the peers'}", file=sys.stderr)
        return 2
    if ha_missing() is not None:
        print(f"error: {ha_missing()}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-failover-"))
    try:
        drills = [
            run_drill(failure, args.calls, workdir / failure, args.notify, args.check)
            for failure in args.drills
        ]
        cost = (
            None
            if args.no_replication
            else replication_cost(
                workdir / "replication",
                args.setups,
                max(1, args.rounds),
                args.hold_ms,
                args.profile_active,
            )
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "benchmark": "failover",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "calls_per_drill": args.calls,
        "notify_via": args.notify,
        "check_via": args.check,
        "drills": drills,
        "replication": cost,
        "host": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    print(table(drills, cost))
    suffix = {"cli": "", "socket": "-socket-notify", "fifo": "-fifo"}[args.notify]
    suffix += {"proc": "", "gateway": "-gateway-check", "script": "-script-check"}[args.check]
    path = args.json or RESULTS / f"failover-{started:%Y-%m-%d}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
