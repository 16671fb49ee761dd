"""An active/standby lab for the failover drills (issue 14): namespaces, a bridge, keepalived.

Five network namespaces per lab, names unique to the test (``ha<pid><hex>-<role>``)::

    lan (phones 192.0.2.10)                                   wan (provider 198.51.100.1:
      │ lan0                                                        kamailio TLS, srtp baresips)
      │                      sw: br-lan          br-wan               │ wan0
      └── lan-p ─────────────┤                    ├──────────── wan-p ─┘
                 lan-a ──────┤                    ├────── wan-a
                 lan-b ──────┘                    └────── wan-b
                    │                                        │
       gwa: lan0 192.0.2.11, wan0 198.51.100.11 ────────────┘
       gwb: lan0 192.0.2.12, wan0 198.51.100.12 (each: one keepalived, one gateway)

The virtual addresses 192.0.2.100 (LAN) and 198.51.100.100 (WAN) belong to whichever gateway
namespace keepalived made master: two VRRP instances (RFC 5798, version 3 with a sub-second
advertisement interval) in one sync group, so both move together, advertised by unicast to
the other node (``unicast_peer``: no multicast needed on the bridge). keepalived's notify
scripts log each transition to a file of the lab and, once the gateway has HA support
(``gateway ha notify``), tell the gateway its role.

Everything stays inside the lab's namespaces: documentation address ranges (RFC 5737) on
veth pairs whose only way out is the lab's own bridges. Redis listens on a UNIX socket in the
lab's folder (namespaces share the file system, so both gateways reach it). Processes are
children of the test, stopped by PID; the namespaces (and with them every interface) are
deleted at the end, on failure as well.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from gateway.lab.audio import write_tone
from tests.gateway_config import merge
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    Baresip,
    Capture,
    Kamailio,
    ManagedProcess,
    NetNamespace,
    PeerError,
)
from tests.pki import TestPki, make_test_pki

REPO = Path(__file__).resolve().parents[2]
Node = Literal["gwa", "gwb"]
NODES: tuple[Node, Node] = ("gwa", "gwb")

LAN_PREFIX = 24
PHONES_IP = "192.0.2.10"
LAN_VIP = "192.0.2.100"
PROVIDER_IP = "198.51.100.1"
WAN_VIP = "198.51.100.100"
NODE_IP: dict[Node, tuple[str, str]] = {
    "gwa": ("192.0.2.11", "198.51.100.11"),
    "gwb": ("192.0.2.12", "198.51.100.12"),
}
KAMAILIO_PORT = 5061
GATEWAY_LAN_PORT = 5060
GATEWAY_WAN_LISTEN_PORT = 5061
GATEWAY_LAN_MEDIA = (40000, 40199)
GATEWAY_WAN_MEDIA = (40200, 40399)
#: Site name in Redis (smg:<site>:<kind>) and in sealed state; both nodes share it.
SITE = "hal"
#: keepalived's advertisement interval (VRRPv3 counts in centiseconds): a backup takes over
#: after about 3 intervals plus skew without adverts.
ADVERT_INT = 0.2


def _run(argv: Sequence[str], timeout: float = 15.0) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise PeerError(f"{shlex.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll ``check`` every 20 ms until true; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


class Redis(ManagedProcess):
    """A throwaway redis-server on a UNIX socket only (no TCP port, no persistence)."""

    def __init__(self, workdir: Path, socket_path: Path) -> None:
        self.socket_path = socket_path
        argv = [
            "redis-server",
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        super().__init__(argv, name="redis", logdir=workdir)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def cli(self, *args: str) -> str:
        return _run(["redis-cli", "-s", str(self.socket_path), *args]).strip()

    def start(self) -> Self:
        super().start()
        self.wait_ready(self._pong, timeout=15)
        return self

    def _pong(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return self.cli("PING") == "PONG"
        except PeerError:
            return False


class Keepalived(ManagedProcess):
    """One node's keepalived (``-n -l -D``), its own pid files, two VRRP instances in a sync
    group (LAN and WAN virtual addresses), unicast to the peer node."""

    def __init__(
        self,
        workdir: Path,
        node: Node,
        netns: str,
        notify: Path,
        priority: int,
        check: Path | None = None,
        check_timing: tuple[int, int, int] = (1, 1, 1),
        gateway_fifo: Path | None = None,
    ) -> None:
        """``check``: a script that fails when the node's gateway is gone; while it fails the
        node is not master (keepalived's ``track_script``)."""
        self.node = node
        self.conf = workdir / "keepalived.conf"
        peer = NODES[1 - NODES.index(node)]
        instances = []
        for side, (vip, dev) in {"LAN": (LAN_VIP, "lan0"), "WAN": (WAN_VIP, "wan0")}.items():
            own = NODE_IP[node][0 if side == "LAN" else 1]
            other = NODE_IP[peer][0 if side == "LAN" else 1]
            instances.append(
                f"vrrp_instance VI_{side} {{\n"
                "  state BACKUP\n"
                f"  interface {dev}\n"
                f"  virtual_router_id {51 if side == 'LAN' else 52}\n"
                f"  priority {priority}\n"
                f"  advert_int {ADVERT_INT}\n"
                f"  unicast_src_ip {own}\n"
                f"  unicast_peer {{\n    {other}\n  }}\n"
                f"  virtual_ipaddress {{\n    {vip}/{LAN_PREFIX} dev {dev}\n  }}\n"
                + ("  track_script {\n    GATEWAY_UP\n  }\n" if check else "")
                + "}\n"
            )
        self.conf.write_text(
            "global_defs {\n"
            f"  router_id {node}\n"
            "  script_user root\n"
            "  enable_script_security\n"
            "  vrrp_version 3\n"
            "  vrrp_garp_master_delay 0\n"
            "  vrrp_garp_master_repeat 2\n"
            f"  notify_fifo {workdir / 'notify.fifo'}\n"
            f"  notify_fifo_script {notify}\n"
            + (f"  vrrp_notify_fifo {gateway_fifo}\n" if gateway_fifo else "")
            + "}\n"
            + _track_script(check, check_timing)
            + "vrrp_sync_group GATEWAY {\n"
            "  group {\n    VI_LAN\n    VI_WAN\n  }\n"
            "}\n" + "".join(instances)
        )
        _run(["ip", "netns", "exec", netns, "keepalived", "-t", "-f", str(self.conf)])
        argv = [
            "keepalived", "-n", "-l", "-D",
            "-f", str(self.conf),
            "-p", str(workdir / "keepalived.pid"),
            "-r", str(workdir / "vrrp.pid"),
            "-c", str(workdir / "checkers.pid"),
        ]  # fmt: skip
        super().__init__(argv, name=f"keepalived-{node}", logdir=workdir, netns=netns)


def _track_script(check: Path | None, timing: tuple[int, int, int]) -> str:
    if check is None:
        return ""
    timeout, fall, rise = timing
    # keepalived's track_process would see a kill at once, but it listens to the kernel's
    # process events, which only the initial network namespace delivers; a check script
    # every second (keepalived's shortest interval) is what works inside the lab.
    return (
        "vrrp_script GATEWAY_UP {\n"
        f'  script "{check}"\n'
        "  interval 1\n"
        f"  timeout {timeout}\n"
        f"  fall {fall}\n"
        f"  rise {rise}\n"
        "}\n"
    )


@dataclass
class HaLab:
    """The lab of one test; use as a context manager (it deletes everything on exit).

    ``pki`` must have IP:198.51.100.1 in its server certificate (see :func:`lab_pki`).
    """

    workdir: Path
    pki: TestPki
    #: Seconds of tone each phone plays: baresip ends a call when its audio file ends.
    tone_seconds: float = 120.0
    prefix: str = field(default_factory=lambda: f"ha{os.getpid() % 100000}{secrets.token_hex(2)}")
    ns: dict[str, NetNamespace] = field(default_factory=dict)
    procs: list[ManagedProcess] = field(default_factory=list)
    redis: Redis | None = None
    kamailio: Kamailio | None = None
    keepalived: dict[Node, Keepalived] = field(default_factory=dict)
    gateways: dict[Node, GatewayProcess] = field(default_factory=dict)
    _ports: Iterator[int] = field(default_factory=lambda: iter(range(6000, 7000, 2)))

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            print("\n===== ha lab logs =====\n" + self.log_tails())
        self.close()

    def build(self) -> None:
        """Namespaces, bridges, veth pairs, addresses and routes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for role in ("sw", "lan", "wan", *NODES):
            ns = NetNamespace(f"{self.prefix}-{role}")
            self.ns[role] = ns  # before create: close() deletes what exists
            ns.create()
        sw = self.ns["sw"].name
        for bridge in ("br-lan", "br-wan"):
            _run(["ip", "-n", sw, "link", "add", bridge, "type", "bridge", "stp_state", "0"])
            _run(["ip", "-n", sw, "link", "set", bridge, "up"])
        links = [
            ("lan", "lan0", "br-lan", "lan-p", f"{PHONES_IP}/{LAN_PREFIX}"),
            ("wan", "wan0", "br-wan", "wan-p", f"{PROVIDER_IP}/{LAN_PREFIX}"),
        ]
        for node in NODES:
            lan_ip, wan_ip = NODE_IP[node]
            links.append((node, "lan0", "br-lan", f"lan-{node[-1]}", f"{lan_ip}/{LAN_PREFIX}"))
            links.append((node, "wan0", "br-wan", f"wan-{node[-1]}", f"{wan_ip}/{LAN_PREFIX}"))
        for role, dev, bridge, port, address in links:
            name = self.ns[role].name
            _run(["ip", "link", "add", port, "netns", sw, "type", "veth", "peer", "name", dev,
                  "netns", name])  # fmt: skip
            _run(["ip", "-n", sw, "link", "set", port, "master", bridge, "up"])
            _run(["ip", "-n", name, "addr", "add", address, "dev", dev])
            _run(["ip", "-n", name, "link", "set", dev, "up"])
        # baresip puts its default-route address into SDP: the lab address, not 127.0.0.1.
        _run(["ip", "-n", self.ns["lan"].name, "route", "replace", "default", "dev", "lan0"])
        _run(["ip", "-n", self.ns["wan"].name, "route", "replace", "default", "dev", "wan0"])

    def close(self) -> None:
        """Stop every process (newest first, by PID), then delete the namespaces."""
        errors = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep cleaning up the rest
                errors.append(f"{proc.name}: {exc}")
        for ns in self.ns.values():
            ns.delete()
        if errors:
            raise AssertionError("ha lab cleanup failed:\n" + "\n".join(errors))

    def start(self, proc: ManagedProcess) -> Any:
        self.procs.append(proc)
        proc.start()
        return proc

    def log_tails(self) -> str:
        return "\n".join(p.log_tail(40) for p in self.procs if p.proc is not None)

    def netns(self, role: str) -> str:
        return self.ns[role].name

    def port(self) -> int:
        """A port for a peer in the lab (each namespace is new: nothing else binds there)."""
        return next(self._ports)

    # -- shared services ---------------------------------------------------------------------

    def start_redis(self) -> Redis:
        path = self.workdir / "redis.sock"
        if len(str(path)) > 100:  # sun_path holds 108 bytes
            short = Path("/tmp") / f"{self.prefix}-redis"
            short.mkdir(exist_ok=True)
            path = short / "redis.sock"
        self.redis = self.start(Redis(self.workdir / "redis", path))
        return self.redis

    def start_kamailio(self) -> Kamailio:
        kam = Kamailio(
            self.workdir / "kamailio",
            self.pki,
            host=PROVIDER_IP,
            tls_port=KAMAILIO_PORT,
            netns=self.netns("wan"),
        )
        self.kamailio = self.start(kam)
        return kam

    # -- keepalived and the virtual addresses ----------------------------------------------

    def notify_log(self, node: Node) -> Path:
        return self.workdir / node / "notify.log"

    def gateway_fifo(self, node: Node) -> Path:
        """keepalived's ``vrrp_notify_fifo`` of ``node``, read by its gateway ([ha]
        keepalived_fifo), as deploy/ha/keepalived.conf has it."""
        return self.workdir / node / "gateway.fifo"

    def start_keepalived(
        self,
        node: Node,
        *,
        gateway_notify: bool = False,
        track_gateway: bool = False,
        notify_via: Literal["fifo", "cli", "socket"] = "fifo",
        check_via: Literal["proc", "gateway", "script"] = "proc",
    ) -> Keepalived:
        """keepalived in ``node``'s namespace; gwa has the higher priority. With
        ``gateway_notify`` the notify script also runs ``gateway ha notify STATE``; with
        ``track_gateway`` the node is master only while its gateway process runs (start the
        gateway first). ``notify_via="socket"`` posts the word to the control socket with curl
        instead of running ``gateway ha notify`` (the same request without a Python start:
        how much of the takeover that start costs). ``check_via="gateway"`` checks with
        ``gateway ha check`` every second, 3 s timeout, 2 falls and rises, as
        deploy/ha/keepalived.conf did before, instead of the gateway process's state.
        ``notify_via="fifo"`` (the default, as deploy/ha/keepalived.conf has it): keepalived
        writes its ``vrrp_notify_fifo``, which the gateway reads itself (start it with
        ``[ha] keepalived_fifo`` = :meth:`gateway_fifo`); the notify script below then only
        logs. ``check_via="script"``: deploy/ha/ha-check on the gateway's control socket with
        deploy/ha/keepalived.conf's timing."""
        workdir = self.workdir / node
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "notify.sh"
        log = shlex.quote(str(self.notify_log(node)))
        tell = ":"
        if gateway_notify and notify_via == "socket":
            sock = shlex.quote(str(workdir / "gw" / "control.sock"))
            tell = (
                f"curl -s --max-time 1 --unix-socket {sock} -H 'Content-Type: application/json'"
                ' -d "{\\"state\\": \\"$state\\"}" http://gateway/ha/notify'
                f" >> {shlex.quote(str(workdir / 'notify.out'))} 2>&1"
            )
        elif gateway_notify and notify_via == "cli":
            conf = workdir / "gw" / "gateway.toml"
            tell = (
                f'{shlex.quote(sys.executable)} -m gateway ha notify "$state" --config '
                f"{shlex.quote(str(conf))} >> {shlex.quote(str(workdir / 'notify.out'))} 2>&1"
            )
        # keepalived's notify_fifo: one line per change, in order ("GROUP" "GATEWAY" MASTER
        # 150), read by this one script (it logs each word; with notify_via "fifo" the gateway
        # reads its own copy, vrrp_notify_fifo). Separate notify_master/backup scripts run side
        # by side, and a slow "backup" could reach the gateway after the "master" that followed.
        lines = [
            "#!/bin/sh",
            "# From the repository: a folder named like a subpackage of ``gateway`` in the",
            "# current directory would shadow it.",
            f"cd {shlex.quote(str(REPO))} || exit 1",
            "while read -r kind name state priority; do",
            '  [ "$kind" = GROUP ] || continue',
            '  state=$(echo "$state" | tr A-Z a-z)',
            f'  echo "$(date +%s.%N) $state" >> {log}',
            f"  {tell}",
            'done < "$1"',
        ]
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o700)
        priority = 150 if node == "gwa" else 100
        check: Path | None = None
        timing = (1, 1, 1)
        if track_gateway and check_via == "script":
            check = workdir / "gateway-up.sh"
            control_socket = workdir / "gw" / "control.sock"
            check.write_text(
                "#!/bin/sh\n"
                f"exec {shlex.quote(str(REPO / 'deploy' / 'ha' / 'ha-check'))} "
                f"{shlex.quote(str(control_socket))}\n"
            )
            check.chmod(0o700)
            timing = (1, 2, 2)
        elif track_gateway and check_via == "gateway":
            check = workdir / "gateway-up.sh"
            conf = workdir / "gw" / "gateway.toml"
            check.write_text(
                "#!/bin/sh\n"
                f"cd {shlex.quote(str(REPO))} || exit 1\n"
                f"exec {shlex.quote(sys.executable)} -m gateway ha check --config "
                f"{shlex.quote(str(conf))}\n"
            )
            check.chmod(0o700)
            timing = (3, 2, 2)
        elif track_gateway:
            check = workdir / "gateway-up.sh"
            pid = self.gateways[node].pid
            check.write_text(
                "#!/bin/sh\n"
                "# Fails once the gateway is gone (a killed child stays a zombie until reaped).\n"
                f"state=$(awk '/^State:/ {{print $2}}' /proc/{pid}/status 2>/dev/null)\n"
                'case "$state" in ""|Z|X) exit 1 ;; esac\n'
            )
            check.chmod(0o700)
        fifo = self.gateway_fifo(node) if gateway_notify and notify_via == "fifo" else None
        keepalived = Keepalived(
            workdir, node, self.netns(node), script, priority, check, timing, fifo
        )
        self.keepalived[node] = self.start(keepalived)
        return keepalived

    def vip_holders(self) -> dict[str, list[Node]]:
        """Which node holds each virtual address right now."""
        held: dict[str, list[Node]] = {LAN_VIP: [], WAN_VIP: []}
        for node in NODES:
            out = _run(["ip", "-n", self.netns(node), "-o", "-4", "addr", "show"])
            for vip in held:
                if re.search(rf"inet {re.escape(vip)}/", out):
                    held[vip].append(node)
        return held

    def wait_master(self, node: Node, timeout: float = 20.0) -> float:
        """Wait until ``node`` alone holds both virtual addresses; return the seconds taken."""
        want = {LAN_VIP: [node], WAN_VIP: [node]}
        return until(f"{node} holding both virtual addresses", lambda: self.vip_holders() == want,
                     timeout)  # fmt: skip

    def roles(self, node: Node) -> list[str]:
        """The roles keepalived's notify script was told on ``node``, in order."""
        try:
            lines = self.notify_log(node).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line.split()[1] for line in lines if len(line.split()) == 2]

    def links_down(self, node: Node) -> None:
        """Take ``node``'s LAN and WAN interfaces down (the box drops off both networks)."""
        for dev in ("lan0", "wan0"):
            _run(["ip", "-n", self.netns(node), "link", "set", dev, "down"])

    # -- gateways ------------------------------------------------------------------------------

    def gateway_layout(self, config: Mapping[str, Any] | None = None) -> GatewayLayout:
        state: dict[str, Any] = {"site": SITE}
        if self.redis is not None:
            state["redis_url"] = self.redis.url
        base = {"policy": {"allowlist": {"lan": [f"192.0.2.0/{LAN_PREFIX}"]}}, "state": state}
        return GatewayLayout(
            lan_address=LAN_VIP,
            wan_address=WAN_VIP,
            lan_port=GATEWAY_LAN_PORT,
            wan_listen_port=GATEWAY_WAN_LISTEN_PORT,
            # The same on both nodes: a call taken over keeps its ports.
            lan_media=GATEWAY_LAN_MEDIA,
            wan_media=GATEWAY_WAN_MEDIA,
            provider_host=PROVIDER_IP,
            provider_port=KAMAILIO_PORT,
            domain=PROVIDER_IP,
            config=merge(base, config or {}),
        )

    def gateway(
        self,
        node: Node,
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> GatewayProcess:
        """``gateway run`` in ``node``'s namespace on the virtual addresses. With ``wait`` it
        waits for the LAN listener and the provider connection (an active node); a standby
        that opens no listener is started with ``wait=False``."""
        layout = self.gateway_layout(config)
        gw = GatewayProcess(self.workdir / node / "gw", layout, self.pki,
                            netns=self.netns(node))  # fmt: skip
        gw.name = f"gateway-{node}"  # for log tails; the files are in the node's folder
        gw.env = {"GATEWAY_STATE_KEY": self.state_key, **(env or {})}
        self.procs.append(gw)
        if wait:
            gw.start()
            gw.wait_provider_up(20)
            gw.wait_listening()
        else:
            ManagedProcess.start(gw)
        self.gateways[node] = gw
        return gw

    @property
    def state_key(self) -> str:
        """The site's state key, the same on both nodes (sealed state opens on either)."""
        key_file = self.workdir / "state.key"
        if not key_file.exists():
            key_file.write_text(secrets.token_hex(32))
        return key_file.read_text()

    # -- phones and capture -----------------------------------------------------------------

    def legacy_phone(self, user: str, *, regint: int = 60) -> Baresip:
        """A plain (UDP, RTP/AVP) baresip in ``lan`` playing 440 Hz, registered through the
        gateway's LAN virtual address."""
        base = self.port()
        rtp = 30000 + (base - 6000) * 10
        phone = Baresip(
            self.workdir / f"legacy-{user}",
            user=user,
            audio_file=self.tone(440.0),
            netns=self.netns("lan"),
            host=PHONES_IP,
            sip_port=base,
            ctrl_port=base + 1000,
            rtp_ports=(rtp, rtp + 19),
            domain=f"{LAN_VIP}:{GATEWAY_LAN_PORT}",
            regint=regint,
        )
        self.start(phone)
        phone.wait_registered(15)
        return phone

    def provider_phone(self, user: str) -> Baresip:
        """An srtp-mand TLS baresip in ``wan`` playing 1000 Hz, registered at kamailio, with
        SIP trace on (the test reads the SDES keys the gateway gave it)."""
        base = self.port()
        rtp = 30000 + (base - 6000) * 10
        phone = Baresip(
            self.workdir / f"provider-{user}",
            user=user,
            audio_file=self.tone(1000.0),
            netns=self.netns("wan"),
            host=PROVIDER_IP,
            sip_port=base,
            ctrl_port=base + 1000,
            rtp_ports=(rtp, rtp + 19),
            tls=True,
            srtp="srtp-mand",
            pki=self.pki,
            domain=f"{PROVIDER_IP}:{KAMAILIO_PORT}",
            regint=60,
        )
        phone.argv.append("-s")
        self.start(phone)
        phone.wait_registered(15)
        return phone

    def capture_wan(self) -> Capture:
        """tshark on the WAN bridge: every frame between the gateways and the provider."""
        cap = Capture(self.workdir / "cap", bpf="udp or tcp", interface="br-wan",
                      netns=self.netns("sw"), name="wan")  # fmt: skip
        return self.start(cap)

    def capture_lan(self) -> Capture:
        """tshark on the LAN bridge: every frame between the gateways and the phones."""
        cap = Capture(self.workdir / "cap", bpf="udp or tcp", interface="br-lan",
                      netns=self.netns("sw"), name="lan")  # fmt: skip
        return self.start(cap)

    def tone(self, freq: float) -> Path:
        path = self.workdir / f"tone{freq:.0f}.wav"
        if not path.exists():
            write_tone(path, freq, self.tone_seconds)
        return path

    def ns_of(self, phone: Baresip) -> NetNamespace:
        return self.ns["lan" if phone.host == PHONES_IP else "wan"]


def lab_pki(directory: Path) -> TestPki:
    """A test PKI whose server certificate also names the lab's provider and virtual WAN
    address (kamailio and the gateways present it; baresip and the gateway verify it)."""
    return make_test_pki(directory, server_ips=("127.0.0.1", PROVIDER_IP, WAN_VIP))
