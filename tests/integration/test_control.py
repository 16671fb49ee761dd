"""The local control command against a real ``gateway run`` process with calls up.

The gateway runs as a child process, as systemd runs it; the lab provider (SIP/TLS + SRTP) and
two lab phones run in the test's event loop; every ``gateway …`` command is a child process
too, as an operator at the box's shell would run it, and finds the socket from ``--config``.

    phones 127.0.25.10/11 -> gateway LAN 127.0.25.20 | WAN 127.0.25.21 -> provider 127.0.25.30

The socket's own behaviour (modes, one gateway per socket, stale sockets, who may connect) is
tested on a server over a stand-in for the gateway's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from gateway.certs.lab import make_lab
from gateway.config import GatewayConfig, parse_config
from gateway.control import ControlError, ControlServer, ControlStartupError, control_request
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from gateway.operations import ProviderStatus, SpikeLockLift, TlsStatus
from gateway.policy.bans import PersistedBan
from gateway.policy.bans_store import save_bans
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config
from tests.interop.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
PHONE, OTHER_PHONE = "127.0.25.10", "127.0.25.11"
LAN, WAN, PROVIDER = "127.0.25.20", "127.0.25.21", "127.0.25.30"
PROVIDER_NAME = "provider.lab"
TOKEN_ENV = "GATEWAY_CONTROL_TEST_TOKEN"
TOKEN = "Ctl-Adm1n-" + "x7Q2" * 6
#: A documentation address (RFC 5737) the gateway finds banned when it starts.
BANNED = "192.0.2.7"
#: A fresh gateway has no baseline: the spike lock goes off at factor x min_calls = 6 calls.
SPIKE_AT_SIX = {
    "window_seconds": 60.0,
    "baseline_seconds": 120.0,
    "factor": 2.0,
    "min_calls": 3,
    "lock_seconds": 600.0,
}


@dataclass
class Command:
    status: int
    out: str
    err: str


async def gateway_command(*args: str) -> Command:
    """``gateway ARGS`` as a child process (the event loop keeps serving phones meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Command(process.returncode, out.decode(), err.decode())


@dataclass
class RunningSite:
    process: asyncio.subprocess.Process
    provider: LabProvider
    config: Path
    log: Path
    admin_port: int

    async def ask(self, *args: str) -> Command:
        return await gateway_command(*args, "--config", str(self.config))


@contextlib.asynccontextmanager
async def running_site(tmp_path: Path) -> AsyncIterator[RunningSite]:
    certs = tmp_path / "certs"
    await asyncio.to_thread(make_lab, certs)
    provider = LabProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        tone_seconds=None,  # plays until the BYE
    )
    await provider.start()
    admin_port = free_port("127.0.0.1", proto="tcp")
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=[f"{PHONE}/32", f"{OTHER_PHONE}/32"],
        extra={
            "admin": {
                "enabled": True,
                "listen": f"127.0.0.1:{admin_port}",
                "token_env": TOKEN_ENV,
            },
            "policy": {"caps": {"spike": SPIKE_AT_SIX}},
            "state": {"directory": "state"},
            "log": {"format": "json"},
        },
    )
    config = write_gateway_config(tmp_path / "gateway.toml", settings)
    now = time.time()
    (tmp_path / "state").mkdir()
    save_bans(
        tmp_path / "state" / "bans.json",
        [PersistedBan(BANNED, "scan.user-agent", now - 5, now + 600, 1)],
    )
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            "--drain",
            "1",
            stdout=log_file,
            stderr=log_file,
            env=dict(os.environ, PYTHONPATH=str(ROOT), **{TOKEN_ENV: TOKEN}),
            cwd=str(ROOT),
        )
    site = RunningSite(process, provider, config, log_path, admin_port)
    try:
        # Readiness as a container's health check asks it: the control socket says ready.
        deadline = time.monotonic() + 40
        while (await site.ask("status", "--quiet")).status != 0:
            assert process.returncode is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            await asyncio.sleep(0.2)
        yield site
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        await provider.stop()


async def _dial_until_locked(phone: LabPhone, attempts: int) -> list[int | None]:
    """Short calls from ``phone`` until one is refused with 403 (the spike lock)."""
    statuses: list[int | None] = []
    for _ in range(attempts):
        call = await phone.dial("300")
        statuses.append(call.status)
        if call.status == 200:
            assert (await phone.hang_up()) is not None
        if call.status == 403:
            break
    return statuses


async def test_status_calls_registrations_spike_lock_bans_and_reload(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        socket_path = tmp_path / "control.sock"
        # The socket is the gateway's; only its user and group may write to it.
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
        assert re.search(r"control socket on .*control\.sock", site.log.read_text())

        phone = LabPhone(address=PHONE, proxy=(LAN, _lan_port(site)), timeout=5.0)
        other = LabPhone(address=OTHER_PHONE, proxy=(LAN, _lan_port(site)), user="101")
        await phone.start()
        await other.start()
        try:
            assert (await phone.register()).status == 200
            assert (await other.register()).status == 200
            call = await phone.dial("200")
            assert call.status == 200
            player = asyncio.create_task(phone.play(600.0))  # cancelled at the end
            # Audio has crossed the gateway both ways before the operator looks.
            assert await wait_for(lambda: len(phone.received.arrived) > 5, 10)
            (far_end,) = site.provider.calls.values()
            assert await wait_for(lambda: len(far_end.received.arrived) > 5, 10)

            # -- gateway status ------------------------------------------------------------
            status = await site.ask("status")
            assert status.status == 0, status.err
            lines = dict(re.findall(r"(?m)^(\w[\w ]*?)\s{2,}(.*)$", status.out))
            assert lines["state"] == "ready", status.out
            assert lines["calls"] == "1 active, 1 with SRTP", status.out
            assert lines["registrations"] == "2 (2 active)", status.out
            assert lines["bans"] == "1 in force", status.out
            assert lines["spike lock"] == "off", status.out
            assert lines["trunk provider"].startswith(f"up {PROVIDER}:"), status.out
            assert lines["media"].startswith("1/1 workers up"), status.out
            assert lines["config"] == str(site.config.resolve()), status.out
            data = json.loads((await site.ask("status", "--json")).out)
            assert data["ready"]["ready"] is True and data["pid"] == site.process.pid
            assert data["counts"]["calls"] == 1 and data["spike_locked"] is False

            # -- gateway calls: the call with its suite and packets both ways -----------------
            listed = await site.ask("calls", "--json")
            assert listed.status == 0, listed.err
            (row,) = json.loads(listed.out)["calls"]
            assert row["call_id"] == call.call_id and row["state"] == "confirmed"
            assert row["suite"] == "AES_CM_128_HMAC_SHA1_80"
            up, down = row["media"]["phone_to_provider"], row["media"]["provider_to_phone"]
            assert up["packets_in"] > 0 and up["packets_out"] > 0
            assert down["packets_in"] > 0 and down["packets_out"] > 0
            assert up["lost"] == 0 and up["jitter_ms"] >= 0
            table = await site.ask("calls")
            assert table.status == 0, table.err
            header, data_line = table.out.splitlines()
            assert header.split()[:6] == ["REF", "STATE", "FROM", "TO", "DURATION", "SUITE"]
            cells = data_line.split()
            assert cells[0] == row["pair"] and cells[1:4] == ["confirmed", "100", "200"]
            assert cells[5] == "AES_CM_128_HMAC_SHA1_80"
            packets_up = [int(n) for n in cells[6].split("/")]
            assert min(packets_up) > 0, table.out

            registered = await site.ask("registrations")
            assert registered.status == 0
            assert re.search(rf"(?m)^100\s+{re.escape(PHONE)}:\d+\s+udp\s+yes", registered.out)

            # -- gateway spike-lock lift: engaged by a burst of calls from the other phone ------
            statuses = await _dial_until_locked(other, attempts=8)
            assert statuses[-1] == 403, statuses
            locked = await site.ask("status")
            assert "ENGAGED" in locked.out, locked.out
            lifted = await site.ask("spike-lock", "lift")
            assert lifted.status == 0, lifted.err
            assert lifted.out == "lifted the spike lock: outbound calls are allowed again\n"
            assert "spike lock: off" in re.sub(r"\s{2,}", ": ", (await site.ask("status")).out)
            again = await other.dial("300")
            assert again.status == 200, again
            assert (await other.hang_up()) is not None
            not_locked = await site.ask("spike-lock", "lift")
            assert not_locked.status == 1
            assert "outbound calling is not locked" in not_locked.err

            # -- gateway bans list / lift, through the running gateway -------------------------
            bans = await site.ask("bans", "list")
            assert bans.status == 0, bans.err
            assert re.search(rf"(?m)^{re.escape(BANNED)}\s+scan\.user-agent\s+1\s", bans.out)
            assert "bans file" not in bans.err  # the running gateway answered, not the file
            lift = await site.ask("bans", "lift", BANNED)
            assert lift.status == 0, lift.err
            assert lift.out == f"lifted the ban on {BANNED}\n"
            assert (await site.ask("bans", "list")).out == "no active bans\n"
            assert (await site.ask("bans", "lift", BANNED)).status == 1
            assert await wait_for(
                lambda: BANNED not in (tmp_path / "state" / "bans.json").read_text(), 5
            )

            # -- gateway reload: a good file applies, a broken one changes nothing -------------
            reload = await site.ask("reload")
            assert reload.status == 0, reload.err
            assert reload.out.splitlines()[:2] == [
                "configuration is valid",
                "applied: certificates",
            ]
            good = site.config.read_text()
            site.config.write_text(good + "\n[lan]\nsip_port = 'five'\n")
            try:
                # The file no longer loads, so the socket is named directly.
                broken = await gateway_command("reload", "--socket", str(socket_path))
                assert broken.status == 1
                assert "configuration not reloaded: nothing changed" in broken.err
            finally:
                site.config.write_text(good)

            # The media still flows and the call is still up after all of that.
            still = json.loads((await site.ask("calls", "--json")).out)["calls"]
            assert [c["call_id"] for c in still] == [call.call_id]
            later = still[0]["media"]["phone_to_provider"]["packets_in"]
            assert later > up["packets_in"]

            # -- token-free liveness and readiness on the admin listener ----------------------
            base = f"http://127.0.0.1:{site.admin_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/api/health") as answer:
                    assert answer.status == 200 and await answer.json() == {"status": "ok"}
                async with http.get(base + "/api/ready") as answer:
                    assert answer.status == 200 and await answer.json() == {"ready": True}
                async with http.get(base + "/api/calls") as answer:
                    assert answer.status == 401  # everything else still needs the token

            player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await player
            assert (await phone.hang_up()) is not None
        finally:
            await phone.close()
            await other.close()

        # Every command that changed something is logged with who ran it.
        log_text = site.log.read_text()
        me = f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()}, pid "
        assert f"control: POST /spike-lock/lift by {me}" in log_text
        assert f"ban on {BANNED} lifted by the operator" in log_text

        site.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(site.process.wait(), 20) == 0
        assert not socket_path.exists()  # removed at the stop

    # No gateway: the commands say so; the ban commands fall back to the file, saying so.
    gone = await gateway_command("status", "--config", str(site.config))
    assert gone.status == 1
    assert gone.err == f"error: no gateway is running (no socket at {socket_path})\n"
    offline = await gateway_command("bans", "list", "--config", str(site.config))
    assert offline.status == 0
    assert f"no gateway is running (no socket at {socket_path}): using the files" in offline.err
    assert "bans file:" in offline.err and offline.out == "no active bans\n"


def _lan_port(site: RunningSite) -> int:
    text = site.config.read_text()
    found = re.search(r"(?m)^sip_port = (\d+)$", text)
    assert found is not None
    return int(found.group(1))


# --------------------------------------------------------------------------- the socket itself


class _QuietGateway:
    """Just enough of a StatusView and Operations for the socket's own tests."""

    started_at = 0.0

    def __init__(self) -> None:
        self.locked = True

    def accepting_calls(self) -> bool:
        return True

    def media_workers(self) -> list[int | None]:
        workers: list[int | None] = [os.getpid()]
        return workers

    def on_media_closed(self, listener: object) -> None:
        return None

    def tls(self) -> TlsStatus:
        return TlsStatus((), False, False, 0, None)

    def provider(self) -> ProviderStatus:
        return ProviderStatus(True, "connected", PROVIDER, 5061, "TLSv1.3", None, None, 1, False)

    def lift_spike_lock(self) -> SpikeLockLift:
        was, self.locked = self.locked, False
        return SpikeLockLift(was)


def _control_server(config: GatewayConfig) -> ControlServer:
    quiet = cast(Any, _QuietGateway())
    return ControlServer(config, status=quiet, operations=quiet)


async def test_socket_mode_folder_one_gateway_per_socket_and_stale_sockets(tmp_path: Path) -> None:
    config = parse_config("[control]\nsocket = 'run/gw/control.sock'\n", base_dir=str(tmp_path))
    path = tmp_path / "run" / "gw" / "control.sock"
    server = _control_server(config)
    await server.start()
    try:
        assert server.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        answer = await asyncio.to_thread(control_request, config, "GET", "/ready")
        assert answer["ready"] is True
        lifted = await asyncio.to_thread(control_request, path, "POST", "/spike-lock/lift")
        assert lifted == {"lifted": True}
        with pytest.raises(ControlError) as again:
            await asyncio.to_thread(control_request, path, "POST", "/spike-lock/lift")
        assert again.value.status == 404 and not again.value.unavailable
        # A second gateway on the same socket is refused, and the first keeps it.
        with pytest.raises(ControlStartupError, match="another process answers on it"):
            await _control_server(config).start()
        assert (await asyncio.to_thread(control_request, path, "GET", "/ready"))["ready"]
    finally:
        await server.stop()
    assert not path.exists()

    # A socket left by a gateway that died is taken over.
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()
    with pytest.raises(ControlError, match="nothing answers on") as stale:
        await asyncio.to_thread(control_request, path, "GET", "/ready")
    assert stale.value.unavailable
    server = _control_server(config)
    await server.start()
    try:
        assert (await asyncio.to_thread(control_request, path, "GET", "/ready"))["ready"]
    finally:
        await server.stop()

    too_long = parse_config(f"[control]\nsocket = '{'x' * 120}.sock'\n", base_dir=str(tmp_path))
    with pytest.raises(ControlStartupError, match="longer than the 107 bytes"):
        await _control_server(too_long).start()
    off = parse_config("[control]\nenabled = false\n", base_dir=str(tmp_path))
    with pytest.raises(ControlError, match=r"control socket is off .*enabled = false"):
        control_request(off, "GET", "/status")


def _as_user(uid: int, gid: int, path: Path) -> str:
    """In a child process running as uid/gid: ask the socket; what happened, in one line."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, ask, report, leave without cleanup
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                outcome = json.dumps(control_request(path, "GET", "/ready", timeout=10))
            except ControlError as exc:
                outcome = f"{exc.status} {exc}"
            os.write(writer, outcome.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
async def test_only_root_the_gateway_user_and_its_group_may_use_the_socket() -> None:
    nogroup = grp.getgrnam("nogroup").gr_gid
    nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    top = Path(tempfile.mkdtemp(prefix="gw-ctl-", dir="/tmp"))
    try:
        top.chmod(0o755)
        path = top / "run" / "control.sock"
        config = parse_config(
            f"[control]\nsocket = '{path}'\ngroup = 'nogroup'\n", base_dir=str(top)
        )
        server = _control_server(config)
        await server.start()
        try:
            assert path.stat().st_gid == nogroup and path.parent.stat().st_gid == nogroup
            # A member of the group may ask.
            member = await asyncio.to_thread(_as_user, nobody.pw_uid, nogroup, path)
            assert json.loads(member)["ready"] is True
            # Anyone else is stopped by the file system, and told what would let them in.
            other = await asyncio.to_thread(_as_user, daemon.pw_uid, daemon.pw_gid, path)
            assert other == (
                f"None permission denied on {path}: run as root or a member of group nogroup"
            )
            # Even past loosened file modes, the peer's credentials are checked and refused.
            path.parent.chmod(0o755)
            path.chmod(0o666)
            loosened = await asyncio.to_thread(_as_user, daemon.pw_uid, daemon.pw_gid, path)
            assert loosened.startswith("403 neither root, the gateway's user nor a member")
        finally:
            await server.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)
