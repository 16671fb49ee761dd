"""An active/standby gateway pair in the HA lab, and the steps every failover drill shares.

Built on tests/interop/ha_lab.py: Redis on a UNIX socket, kamailio (TLS) in ``wan``, a gateway
with ``[ha] enabled`` in each of ``gwa`` and ``gwb`` (both start as standby, no listener), and
one keepalived per node whose notify FIFO the node's gateway reads ([ha] keepalived_fifo,
as deploy/ha/keepalived.conf has it; or, on request, ``gateway ha notify STATE``) and which tracks
its node's gateway process (``track_process``: a killed gateway takes its node out of the
election at once). gwa has the higher VRRP priority, so it is promoted first.

:class:`Drill` runs the calls of a drill (plain phones in ``lan`` calling srtp-mand phones at
kamailio), captures both bridges, makes a ban before the failure, and afterwards reads what
the new active reports (``gateway ha status``, ``gateway registrations``, its bans). Used by
tests/interop/test_ha_failover.py and bench/failover.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.control import ControlError, control_request
from tests.interop.gateway_process import GatewayProcess
from tests.interop.ha_lab import LAN_VIP, NODES, PROVIDER_IP, HaLab, Node, until
from tests.interop.peers import Baresip, Capture
from tests.interop.test_media import gateway_events

Failure = Literal["kill-gateway", "links-down", "kill-worker"]
FAILURES: tuple[Failure, ...] = ("kill-gateway", "links-down", "kill-worker")
#: A LAN host that sends a scanner's OPTIONS before the drill (banned at its first request).
SCANNER_IP = "192.0.2.66"
ROOT = Path(__file__).resolve().parents[2]


def ha_missing() -> str | None:
    """Why a pair cannot run in this checkout (None when it can): the gateway's HA commands
    (``gateway ha status`` and ``gateway ha notify``, gateway/ha/) must exist."""
    for sub in ("status", "notify"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "ha", sub, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            return (
                f"`gateway ha {sub}` is not in this checkout yet (HA-glue: gateway/ha/, "
                "standby start, promote = restore + bind + TLS reconnect)"
            )
    return None


def gateway_cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS --config`` of one node; a command that hangs counts as a failure."""
    argv = [sys.executable, "-m", "gateway", *args, "--config", str(gw.config_path)]
    try:
        return subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", "timed out after 30 s")


def ha_status(gw: GatewayProcess) -> dict[str, Any]:
    """``gateway ha status --json`` of one node ({} while it does not answer)."""
    done = gateway_cli(gw, "ha", "status", "--json")
    if done.returncode != 0:
        return {}
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {}


def control(gw: GatewayProcess, path: str) -> dict[str, Any]:
    return control_request(str(gw.config_path.parent / "control.sock"), "GET", path, timeout=10)


def ha_config(node: Node, fifo: Path | None = None) -> dict[str, Any]:
    """``[ha]`` of one node; with ``fifo`` its gateway reads keepalived's notify FIFO."""
    peer = NODES[1 - NODES.index(node)]
    ha: dict[str, Any] = {"enabled": True, "node": node, "peer": peer, "replicate_interval": 0.2}
    if fifo is not None:
        ha.update(keepalived_fifo=str(fifo), keepalived_group="GATEWAY")
    return {"ha": ha}


@dataclass
class Pair:
    """The lab with both gateways standing by and keepalived deciding."""

    lab: HaLab
    gateways: dict[Node, GatewayProcess] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        lab: HaLab,
        notify_via: Literal["fifo", "cli", "socket"] = "fifo",
        check_via: Literal["proc", "gateway", "script"] = "proc",
    ) -> Pair:
        lab.start_redis()
        lab.start_kamailio()
        pair = cls(lab)
        for node in NODES:
            fifo = lab.gateway_fifo(node) if notify_via == "fifo" else None
            pair.gateways[node] = lab.gateway(node, config=ha_config(node, fifo), wait=False)
        for node in NODES:
            pair.wait_role(node, "standby")
        # gwa's keepalived first: two started together may both time out before hearing each
        # other, both be master for a moment, and the loser's gateway is then fenced (it exits
        # for its service manager to start it again as standby, which the lab does not do).
        lab.start_keepalived(
            "gwa",
            gateway_notify=True,
            track_gateway=True,
            notify_via=notify_via,
            check_via=check_via,
        )
        lab.wait_master("gwa")
        pair.wait_role("gwa", "active")
        lab.start_keepalived(
            "gwb",
            gateway_notify=True,
            track_gateway=True,
            notify_via=notify_via,
            check_via=check_via,
        )
        until("gwb told backup", lambda: lab.roles("gwb")[-1:] == ["backup"], 20)
        pair.gateways["gwa"].wait_provider_up(20)
        assert lab.roles("gwb") == ["backup"], lab.roles("gwb")
        return pair

    def wait_role(self, node: Node, role: str, timeout: float = 30.0) -> float:
        gw = self.gateways[node]

        def reached() -> bool:
            if not gw.running():
                raise gw.fail(f"exited while waiting for role {role}")
            return ha_status(gw).get("role") == role

        return until(f"{node} {role}", reached, timeout)


class Scanner:
    """A host on the LAN bridge that sends one OPTIONS with a scanner's User-Agent."""

    @staticmethod
    def probe(lab: HaLab) -> None:
        subprocess.run(
            ["ip", "-n", lab.netns("lan"), "addr", "add", f"{SCANNER_IP}/24", "dev", "lan0"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        sock = lab.ns["lan"].socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((SCANNER_IP, 5099))
            branch = os.urandom(6).hex()
            sock.sendto(
                (
                    f"OPTIONS sip:100@{LAN_VIP} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {SCANNER_IP}:5099;branch=z9hG4bK{branch}\r\n"
                    "Max-Forwards: 70\r\n"
                    f"From: <sip:100@{SCANNER_IP}>;tag=1\r\n"
                    f"To: <sip:100@{LAN_VIP}>\r\n"
                    f"Call-ID: {branch}@{SCANNER_IP}\r\n"
                    "CSeq: 1 OPTIONS\r\n"
                    "User-Agent: friendly-scanner\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                (LAN_VIP, 5060),
            )


def banned(gw: GatewayProcess, address: str) -> bool:
    try:
        return address in json.dumps(control(gw, "/bans"))
    except (ControlError, OSError):
        return False


def registered_users(gw: GatewayProcess) -> set[str]:
    """Users of the bindings ``gateway registrations --json`` lists."""
    done = gateway_cli(gw, "registrations", "--json")
    if done.returncode != 0:
        return set()
    text = json.dumps(json.loads(done.stdout))
    return {u for u in ("2001", "2002", "2003", "2004", "2009") if f"sip:{u}@" in text}


@dataclass
class Drill:
    """One drill's phones, calls and captures on a started :class:`Pair`."""

    pair: Pair
    calls: int = 2
    legacies: list[Baresip] = field(default_factory=list)
    secures: list[Baresip] = field(default_factory=list)
    wan: Capture | None = None
    lan: Capture | None = None
    event_at: float = 0.0
    new_active: Node = "gwa"
    killed_worker: int | None = None

    @property
    def lab(self) -> HaLab:
        return self.pair.lab

    def set_up(self) -> None:
        """Captures, phones, a ban, and the calls up with audio both ways."""
        self.wan = self.lab.capture_wan()
        self.lan = self.lab.capture_lan()
        for i in range(self.calls):
            self.secures.append(self.lab.provider_phone(f"300{i + 1}"))
            self.legacies.append(self.lab.legacy_phone(f"200{i + 1}"))
        active = self.pair.gateways["gwa"]
        Scanner.probe(self.lab)
        until("the scanner banned", lambda: banned(active, SCANNER_IP), 10)
        for legacy, secure in zip(self.legacies, self.secures, strict=True):
            legacy.dial(self.lab.ns["lan"], f"sip:{secure.user}@{LAN_VIP}:5060")
        for phone in (*self.legacies, *self.secures):
            phone.wait_established(15)
        standby = self.pair.gateways.get("gwb")
        if standby is not None:  # a pair: the standby's warm copy holds every call
            until(
                f"gwb's replica holding {self.calls} calls",
                lambda: ha_status(standby).get("calls_held") == self.calls,
                15,
            )

    def fail(self, failure: Failure) -> None:
        """Break something on the active node (gwa); note the time."""
        gw = self.pair.gateways["gwa"]
        if failure == "kill-worker":
            workers = control(gw, "/status")["media"]["worker_states"]
            self.killed_worker = int(workers[0]["pid"])
            self.event_at = time.time()
            os.kill(self.killed_worker, signal.SIGKILL)
            self.new_active = "gwa"
        elif failure == "kill-gateway":
            self.event_at = time.time()
            gw.signal(signal.SIGKILL)
            self.new_active = "gwb"
        else:
            self.event_at = time.time()
            self.lab.links_down("gwa")
            self.new_active = "gwb"

    def wait_recovered(self, timeout: float = 30.0) -> float:
        """Until the new active carries the calls again (its role, or the worker's restart);
        returns the seconds since the failure."""
        if self.new_active == "gwa":
            gw = self.pair.gateways["gwa"]

            def restarted() -> bool:
                try:
                    states = control(gw, "/status")["media"]["worker_states"]
                except (ControlError, OSError):
                    return False
                return all(w["state"] == "running" for w in states) and any(
                    w["restarts"] == 1 for w in states
                )

            until("the media worker restarted", restarted, timeout)
            return time.time() - self.event_at
        until(
            "gwb holding both virtual addresses",
            lambda: all("gwb" in h for h in self.lab.vip_holders().values()),
            timeout,
        )
        self.pair.wait_role("gwb", "active", timeout)
        return time.time() - self.event_at

    @property
    def active(self) -> GatewayProcess:
        return self.pair.gateways[self.new_active]

    def hang_up(self) -> None:
        """The first call ends with a BYE from its plain phone, the others from the provider
        side; each BYE must end both legs: both phones end the call, and the active gateway
        ended it on that BYE (a gateway that lost the call answers 481, and the phone that
        sent the BYE ends its call all the same)."""
        before = len(byes(self.active))
        for i, (legacy, secure) in enumerate(zip(self.legacies, self.secures, strict=True)):
            (legacy if i == 0 else secure).hangup(self.lab.ns_of(legacy if i == 0 else secure))
            legacy.wait_terminated(10)
            secure.wait_terminated(10)
            until(
                f"{self.active.name} ending call {i + 1} on its BYE",
                lambda n=before + i + 1: len(byes(self.active)) >= n,  # type: ignore[misc]
                10,
            )
        assert [e["reason"] for e in byes(self.active)[before:]] == [
            "BYE from lan",
            *["BYE from wan"] * (self.calls - 1),
        ]

    def new_call(self) -> float:
        """The provider side calls the first plain phone through the new active; the call is
        answered, then ended by the plain phone. Returns seconds to the answer."""
        secure, legacy = self.secures[0], self.legacies[0]
        t0 = time.monotonic()
        secure.dial(self.lab.ns_of(secure), f"sip:{legacy.user}@{PROVIDER_IP}")
        wait_nth(secure, r"Call established", 2, 15)
        wait_nth(legacy, r"Call established", 2, 15)
        took = time.monotonic() - t0
        time.sleep(1.0)  # a second of audio on the new call (audio time, not a wait)
        legacy.hangup(self.lab.ns_of(legacy))
        wait_nth(secure, r"terminated \(duration", 2, 10)
        wait_nth(legacy, r"terminated \(duration", 2, 10)
        return took

    def stop_captures(self) -> None:
        for phone in (*self.legacies, *self.secures):
            phone.stop()
        for cap in (self.wan, self.lan):
            if cap is not None:
                cap.stop()


def byes(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The gateway's ``ended`` events for calls ended by a BYE, in order."""
    return [e for e in gateway_events(gw, "ended") if str(e.get("reason", "")).startswith("BYE")]


def wait_nth(phone: Baresip, pattern: str, n: int, timeout: float) -> None:
    until(
        f"{phone.user}: {pattern} x{n}",
        lambda: len(re.findall(pattern, phone.output())) >= n,
        timeout,
    )
