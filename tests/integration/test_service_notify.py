"""``gateway run`` under a service manager: sd_notify readiness, watchdog pings, reload and
stop, as systemd would see them, and the media loop it reports; the unit that asks for them.

The test plays systemd's part: it owns a unix datagram socket, names it in $NOTIFY_SOCKET with
a short $WATCHDOG_USEC, and reads what the gateway sends. The gateway's provider is an address
nothing listens on, so the first attempt fails at once: readiness must not wait for it.
Addresses: 127.0.26.0/24.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.media.loop import probe_media_loop
from tests.gateway_config import gateway_settings, write_gateway_config
from tests.pki import make_test_pki

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "gateway.service"
LAN, WAN, PROVIDER = "127.0.26.1", "127.0.26.2", "127.0.26.3"
TOKEN = "Vq7#mZt2!rXc9Lp-notify"
#: Generous: the machine is loaded by fuzzing campaigns; a wait ends as soon as it is met.
WAIT = 60.0


def free_port(host: str, kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Manager:
    """The service manager's end of $NOTIFY_SOCKET: every message the gateway sent, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, *, after: int = 0, timeout: float = WAIT) -> dict[str, str]:
        """The first message from index ``after`` on that sets ``key``, reading as needed."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[after:]:
                if key in message:
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} from the gateway; got {self.messages}")
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path / "notify.sock")
    yield m
    m.sock.close()


def options(port: int) -> bytes:
    return (
        f"OPTIONS sip:{LAN}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.26.9:5999;branch=z9hG4bK-notify-1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.26.9>;tag=n1\r\n"
        f"To: <sip:{LAN}>\r\nCall-ID: notify-probe\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_gateway_run_tells_the_manager_ready_watchdog_reload_and_stopping(
    tmp_path: Path, manager: Manager
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    sip_port = free_port(LAN)
    metrics_port = free_port(LAN, socket.SOCK_STREAM)
    base = 20000 + (os.getpid() % 40) * 200
    settings = gateway_settings(
        lan_port=sip_port,
        lan_media=(base, base + 99),
        wan_media=(base + 100, base + 199),
        provider_port=free_port(PROVIDER, socket.SOCK_STREAM),  # nothing listens there
        provider_host=PROVIDER,
        domain="provider.test",
        certificate=pki.client.cert,
        private_key=pki.client.key,
        ca_bundle=pki.ca_cert,
        lan_address=LAN,
        wan_address=WAN,
        transports=["udp"],
        extra={
            "admin": {
                "enabled": True,
                "listen": f"{LAN}:{free_port(LAN, socket.SOCK_STREAM)}",
                "metrics_listen": f"{LAN}:{metrics_port}",
            },
            "state": {"directory": str(tmp_path / "state")},
            "log": {"format": "json"},
        },
    )
    config = write_gateway_config(tmp_path / "gateway.toml", settings)
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG",)}
    env.pop("GATEWAY_MEDIA_FASTPATH", None)
    env |= {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "200000",
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
    }
    stderr = tmp_path / "gateway.log"
    with stderr.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), "--drain", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        ready = manager.wait_for("READY")
        # Ready means the LAN listener answers and the workers run: ask both at once.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.26.9", 0))
            phone.settimeout(WAIT)
            phone.sendto(options(sip_port), (LAN, sip_port))
            answer = phone.recv(65535)
        assert answer.startswith(b"SIP/2.0 "), answer
        # The provider was tried once and is down; the gateway is ready all the same.
        assert "trunks: provider down:" in ready["STATUS"], ready
        expected = probe_media_loop(keep_core_awake=True)
        assert f"media loop: {expected.engine}" in ready["STATUS"]

        # The watchdog: pinged again and again (every 0.1 s here), from the event loop.
        first = len(manager.messages)
        for _ in range(3):
            manager.wait_for("WATCHDOG", after=len(manager.messages))
        assert manager.count("WATCHDOG") >= 3 and len(manager.messages) > first

        # The media workers never saw systemd's variables (they would feed no one's watchdog).
        workers = children(proc.pid)
        assert workers
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in environ)

        # /metrics says which loop runs, and why.
        with urllib.request.urlopen(f"http://{LAN}:{metrics_port}/metrics", timeout=WAIT) as r:
            metrics = r.read().decode()
        flag = "true" if expected.keep_core_awake_ignored else "false"
        line = (
            f'gateway_media_loop_info{{engine="{expected.engine}",'
            f'keep_core_awake_ignored="{flag}",reason="{expected.reason}"}} 1'
        )
        assert line in metrics.splitlines(), metrics

        # Reload: RELOADING=1, then READY=1 again.
        mark = len(manager.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = manager.wait_for("RELOADING", after=mark)
        assert reloading["MONOTONIC_USEC"].isdigit()
        manager.wait_for("READY", after=manager.messages.index(reloading) + 1)

        mark = len(manager.messages)
        proc.send_signal(signal.SIGTERM)
        stopping = manager.wait_for("STOPPING", after=mark)
        assert "draining" in stopping["STATUS"]
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = stderr.read_text()
    assert f"media loop: {expected.describe()}" in text, text


def test_a_python_loop_is_said_with_its_reason_and_keep_core_awake_ignored() -> None:
    # The words of the start-up line for the Python loop (the C loop's is checked above
    # when the extension is built here).
    text = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gateway.media.loop import probe_media_loop as p; "
            "print(p(keep_core_awake=True).describe())",
        ],
        env={**os.environ, "GATEWAY_MEDIA_FASTPATH": "0", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if "not built" in text:
        assert text == "Python (reason: extension not built); keep_core_awake ignored"
    else:
        assert (
            text
            == "Python (reason: turned off by GATEWAY_MEDIA_FASTPATH=0); keep_core_awake ignored"
        )


def test_a_gone_manager_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.service import ServiceNotifier

    notifier = ServiceNotifier("/nonexistent/notify/socket")
    assert not notifier.ready("ready")
    assert not notifier.ping()
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1
    notifier.close()


def test_abstract_socket_addresses_are_reached(tmp_path: Path) -> None:
    from gateway.service import ServiceNotifier

    name = f"sip-media-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(WAIT)
        env = {"NOTIFY_SOCKET": f"@{name}"}
        notifier = ServiceNotifier.from_environment(env, pid=os.getpid())
        assert notifier.ready("up")
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()


# -- the unit -----------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_asks_for_readiness_and_the_watchdog() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    # Only the main process may speak: a media worker cannot make the service "ready".
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30"]
    assert unit["Restart"] == ["on-failure"]  # a watchdog kill is a failure: restarted
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split()  # the notify socket


def test_systemd_reads_the_shipped_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (it comes with the systemd package)")
    unit = tmp_path / "sip-media-gateway.service"
    unit.write_text(UNIT.read_text())
    res = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    # The shipped unit as it is: every directive known and well-formed; the one complaint
    # is the executable, which exists only once installed (tests/integration/test_deploy.py
    # verifies the unit with it linked, and gets no complaint at all).
    complaints = [line for line in res.stderr.splitlines() if line.strip()]
    assert complaints, "systemd-analyze said nothing: is the ExecStart path installed here?"
    assert all(
        "Command /usr/local/sbin/sip-media-gateway is not executable" in line for line in complaints
    ), res.stderr
