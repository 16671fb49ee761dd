"""Failover figures of an active/standby pair (issue 14): audio gap, new calls, replication cost.

Usage (from the repository root, as root: it builds network namespaces)::

    .venv/bin/python -m bench.failover                      # 4 calls per drill, 300 set-ups
    .venv/bin/python -m bench.failover --calls 6 --setups 600 --drills kill-gateway
    .venv/bin/python -m bench.failover --smoke --json out.json

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
writes every call's record to Redis). sipp calls through A, then B (a warm-up: TLS up, caches
filled), then ``--setups`` calls through A, then as many through B (INVITE, 200, ACK, 20 ms,
BYE; 10 at a time, 50 per second at most); measured over those: the signalling process's CPU
(utime + stime from /proc/PID/stat, the main process only: media workers are children) per
call set-up, and the extra on B in percent of A's. Redis' own CPU is reported beside it.

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


def replication_cost(workdir: Path, setups: int) -> dict[str, Any]:
    """CPU of the signalling process per call set-up, without and with Redis replication."""
    warm = max(5, setups // 4)
    bench = Bench(workdir, limit=10, hold_ms=20)
    try:
        bench.bring_up(total_calls=2 * (setups + warm) + 10)
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
        gw_b.env = {"GATEWAY_STATE_KEY": os.urandom(32).hex()}
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
        ticks = dict.fromkeys(targets, 0)
        ok = dict.fromkeys(targets, 0)
        redis_ticks = 0
        for round_ in range(2):
            for name, gw in targets.items():
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
                            calls=setups if round_ else warm,
                            rate=50.0,
                            limit=10,
                            timeout=120,
                            name=f"{name}-{round_}",
                            params={"hold_ms": "20"},
                        )
                    )
                )
                before, r_before = _cpu_ticks(gw.pid), _cpu_ticks(redis.pid)
                uac.wait_exit(timeout=300)
                if round_:  # round 0 warms both up (TLS, caches); round 1 is measured
                    ticks[name] += _cpu_ticks(gw.pid) - before
                    ok[name] += uac.stats().successful
                    if name == "with_redis":
                        redis_ticks += _cpu_ticks(redis.pid) - r_before
        per_call = {
            name: round(ticks[name] / TICKS / ok[name] * 1000, 3) if ok[name] else None
            for name in targets
        }
        base, with_redis = per_call["without_redis"], per_call["with_redis"]
        extra = round((with_redis - base) / base * 100, 1) if base and with_redis else None
        return {
            "calls_measured": ok,
            "signalling_cpu_ms_per_call": per_call,
            "replication_extra_percent": extra,
            "redis_cpu_ms_per_call": (
                round(redis_ticks / TICKS / ok["with_redis"] * 1000, 3)
                if ok["with_redis"]
                else None
            ),
            "ha_enabled_on_b": ha,
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
        per = cost["signalling_cpu_ms_per_call"]
        lines.append(
            f"signalling CPU per call set-up: {per['without_redis']} ms without Redis, "
            f"{per['with_redis']} ms with (+{cost['replication_extra_percent']} %); "
            f"redis-server {cost['redis_cpu_ms_per_call']} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4, help="calls up per drill (1-8)")
    parser.add_argument("--setups", type=int, default=300, help="measured set-ups per gateway")
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
        args.calls, args.setups = 2, 20
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
            None if args.no_replication else replication_cost(workdir / "replication", args.setups)
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
