"""An active/standby pair on one Redis (issue 14): kill -9 the active, promote the standby.

    phone 127.0.62.10 -> LAN 127.0.62.20 | gateway A or B | WAN 127.0.62.21 -> provider 127.0.62.30
    scanner 127.0.62.66

Two real ``gateway run`` processes with the same configuration (the site's addresses and
ports) but their own folders, [ha] node names and control sockets; a real redis-server on a
UNIX socket in the test's folder, started and ended by PID. A is promoted with ``gateway ha
notify master`` and carries a registration, a ban and a call; B, the standby, shows the call in
``gateway ha status``. A is killed with SIGKILL (by PID); ``gateway ha notify master`` to B:
B binds the same addresses, the lab provider sees a new TLS connection, the call's media flows
again (SRTP that authenticates at the provider), a BYE from the provider ends both legs, the
registration and the ban are still there, and a new call succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.certs.lab import make_lab
from gateway.control import ControlError, control_request
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from gateway.sip.message import SipRequest
from gateway.transport.stream import SipStreamConnection
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config
from tests.integration.test_redis_state import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

PHONE = "127.0.62.10"
LAN = "127.0.62.20"
WAN = "127.0.62.21"
PROVIDER = "127.0.62.30"
SCANNER = "127.0.62.66"
PROVIDER_NAME = "provider.lab"
PASSWORD = "lab-secret-" + secrets.token_hex(4)
KEY_ENV = "GATEWAY_TEST_HA_KEY"
SITE = "site-ha"
ROOT = Path(__file__).resolve().parents[2]


class RecordingProvider(LabProvider):
    """The lab provider, keeping each INVITE and the connection it came on (for its BYE)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.invites: dict[str, SipRequest] = {}
        self.connections: list[SipStreamConnection] = []

    def _new_connection(self) -> SipStreamConnection:
        connection = super()._new_connection()
        self.connections.append(connection)
        return connection

    def _on_request(self, connection: SipStreamConnection, request: SipRequest) -> None:
        if request.method == "INVITE" and not request.to.tag:
            self.invites[request.call_id] = request
        super()._on_request(connection, request)

    def bye(self, call_id: str) -> None:
        """A BYE for the call (RFC 3261 §15.1.1) on the newest open connection."""
        invite = self.invites[call_id]
        call = self.calls[call_id]
        contact = invite.contacts[0].uri
        to = invite.get("From")
        assert to is not None
        branch = "z9hG4bK" + secrets.token_hex(8)
        text = (
            f"BYE {contact} SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {self.address}:{self.port};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {invite.get('To')};tag={call.to_tag}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 BYE\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        connection = next(c for c in reversed(self.connections) if not c.closed)
        connection.write(text.encode())


class GatewayRun:
    """``python -m gateway run`` in its own folder, ended by PID."""

    def __init__(self, folder: Path, config: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.config = config
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ask(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return control_request(self.folder / "control.sock", method, path, body, timeout=5.0)

    async def ha(self) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self.ask, "GET", "/ha")
        except (ControlError, Exception):
            return None

    async def wait_role(self, role: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal found
            answer = await self.ha()
            found = answer or {}
            return answer is not None and answer["role"] == role

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await reached():
            assert self.process is not None and self.process.poll() is None, self.log()
            assert loop.time() < deadline, (found, self.log())
            await asyncio.sleep(0.1)
        return found

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
        )

    def log(self) -> str:
        path = self.folder / "gateway.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _settings(provider: RecordingProvider, redis: RedisServer, directory: Path) -> Any:
    return lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=["127.0.62.0/24"],
        extra={
            "state": {
                "directory": "state",
                "key_env": KEY_ENV,
                "site": SITE,
                "redis_url": f"unix://{redis.socket}",
                "redis_timeout": 1.0,
                "save_interval": 0.2,
            },
        },
    )


def _gateway(directory: Path, name: str, settings: Any, env: dict[str, str]) -> GatewayRun:
    folder = directory / name
    folder.mkdir()
    shutil.copytree(directory / "certs", folder / "certs")
    with_ha = {
        **settings,
        "ha": {"enabled": True, "node": name, "peer": "gw-b" if name == "gw-a" else "gw-a"},
    }
    config = write_gateway_config(folder / "gateway.toml", with_ha)
    return GatewayRun(folder, config, env)


def _scan(target: tuple[str, int]) -> None:
    import socket

    request = (
        f"REGISTER sip:{target[0]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SCANNER}:5060;branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:100@{target[0]}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:100@{target[0]}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\n"
        "CSeq: 1 REGISTER\r\n"
        "User-Agent: friendly-scanner\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SCANNER, 0))
        sock.sendto(request.encode(), target)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return False


async def test_standby_takes_over_registration_ban_and_call_after_kill_9(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    certs = tmp_path / "certs"
    provider = RecordingProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm=PROVIDER_NAME,
        password=PASSWORD,
    )
    await provider.start()
    env = {**os.environ, KEY_ENV: secrets.token_hex(32)}
    settings = _settings(provider, redis_server, tmp_path)
    a = _gateway(tmp_path, "gw-a", settings, env)
    b = _gateway(tmp_path, "gw-b", settings, env)
    lan = (LAN, settings["lan"]["sip_port"])
    phone = LabPhone(address=PHONE, proxy=lan, password=PASSWORD, timeout=5.0)
    try:
        # A: standby first (no SIP listener), then active on keepalived's word.
        a.start()
        standby = await a.wait_role("standby")
        assert standby["node"] == "gw-a" and standby["peer"] == "gw-b"
        # keepalived's track_script: a standby may hold the addresses; nothing to repair.
        checked = await asyncio.to_thread(a.cli, "ha", "check")
        assert checked.returncode == 0, checked.stderr
        assert (await a.wait_role("standby"))["role_changes"] == 0
        notified = await asyncio.to_thread(a.cli, "ha", "notify", "master")
        assert notified.returncode == 0, notified.stderr
        active = await a.wait_role("active")
        assert active["epoch"] == 1
        assert await wait_for(lambda: len(provider.refresh_tls_sessions()) >= 1, 30.0)
        b.start()
        await b.wait_role("standby")

        # A registration, a ban and a call through A.
        await phone.start()
        assert (await phone.register()).status == 200
        _scan(lan)

        async def banned(run: GatewayRun) -> bool:
            answer = await asyncio.to_thread(run.ask, "GET", "/bans")
            return any(x["address"] == SCANNER for x in answer["bans"])

        assert await _until(lambda: banned(a), 20.0), a.log()
        call = await phone.dial("200")
        assert call.status == 200, call
        (provider_call,) = provider.calls.values()
        playing = asyncio.get_running_loop().create_task(phone.play(60.0))
        assert await wait_for(lambda: provider.media.srtp_ok > 20, 20.0)

        # B's warm copy holds the call; `gateway ha status` says so.
        async def held() -> bool:
            answer = await b.ha()
            return answer is not None and answer["calls_held"] == 1

        assert await _until(held, 20.0), (await b.ha(), b.log())
        shown = await asyncio.to_thread(b.cli, "ha", "status")
        assert shown.returncode == 0, shown.stderr
        assert "standby" in shown.stdout and "calls held:   1" in shown.stdout
        assert "gw-a (epoch 1" in shown.stdout
        as_json = json.loads((await asyncio.to_thread(b.cli, "ha", "status", "--json")).stdout)
        assert as_json["redis"]["reachable"] is True
        # The operator's other views work on a standby too.
        status = await asyncio.to_thread(b.cli, "status")
        assert status.returncode == 0, status.stderr

        # kill -9 A; its media workers end when their control socket closes.
        workers = [
            p for p in (await asyncio.to_thread(a.ask, "GET", "/status"))["media"]["pids"] if p
        ]
        sessions = len(provider.refresh_tls_sessions())
        a.kill()
        assert await wait_for(lambda: all(_gone(p) for p in workers), 30.0)
        before = provider.media.srtp_ok
        registers = provider.requests.count("REGISTER")

        # B promoted: same addresses, a new TLS connection, the call's media again.
        promoted = await asyncio.to_thread(b.cli, "ha", "notify", "master")
        assert promoted.returncode == 0, promoted.stderr
        now_active = await b.wait_role("active")
        assert now_active["epoch"] == 2
        assert await wait_for(lambda: len(provider.refresh_tls_sessions()) > sessions, 30.0)
        assert provider.tls_sessions[-1].peer[0] == WAN
        assert now_active["takeover"]["restored"] == 1, (now_active, b.log())
        assert await wait_for(lambda: provider.media.srtp_ok > before + 20, 20.0), b.log()
        failed = provider.media.auth_failed
        assert provider.media.plaintext == 0

        # The registration and the ban are still there.
        registrations = (await asyncio.to_thread(b.ask, "GET", "/registrations"))["registrations"]
        assert any(r["user"] == "100" for r in registrations), registrations
        # B sent the restored binding upstream again over its own link (RFC 3261 §10.2.4).
        assert await wait_for(lambda: provider.requests.count("REGISTER") > registers, 20.0)
        assert await banned(b)

        # A BYE from the provider ends both legs.
        provider.bye(provider_call.call_id)
        assert await wait_for(lambda: call.ended_by_peer, 20.0), b.log()

        async def no_calls() -> bool:
            return not (await asyncio.to_thread(b.ask, "GET", "/calls"))["calls"]

        assert await _until(no_calls, 20.0), b.log()
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        assert provider.media.auth_failed == failed

        # And a new call succeeds.
        second = await phone.dial("201")
        assert second.status == 200, second
        metrics = await asyncio.to_thread(b.ask, "GET", "/ha")
        assert metrics["role_changes"] == 2

        # B told "backup" with a call up is fenced: it sends nothing (no BYE: the other box
        # carries the call now) and ends with status 75 for systemd to restart it as standby.
        byes = provider.requests.count("BYE")
        fenced = await asyncio.to_thread(b.cli, "ha", "notify", "backup")
        assert fenced.returncode == 0, fenced.stderr
        assert b.process is not None
        assert await asyncio.to_thread(b.process.wait, 30) == 75
        assert provider.requests.count("BYE") == byes
        assert "ha.demoted" in b.log()
        assert not second.ended_by_peer
        failing = await asyncio.to_thread(b.cli, "ha", "check")
        assert failing.returncode == 1  # gone: keepalived gives this box's addresses up
    finally:
        await phone.close()
        a.kill()
        b.stop()
        await provider.stop()


async def _until(check: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_planned_stop_of_the_active_ends_its_calls_and_the_replica_forgets_them(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    certs = tmp_path / "certs"
    provider = RecordingProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm=PROVIDER_NAME,
        password=PASSWORD,
    )
    await provider.start()
    env = {**os.environ, KEY_ENV: secrets.token_hex(32)}
    settings = _settings(provider, redis_server, tmp_path)
    a = _gateway(tmp_path, "gw-a", settings, env)
    phone = LabPhone(address=PHONE, proxy=(LAN, settings["lan"]["sip_port"]), password=PASSWORD)
    client = redis_server.client()
    try:
        a.start()
        await a.wait_role("standby")
        assert (await asyncio.to_thread(a.cli, "ha", "notify", "master")).returncode == 0
        await a.wait_role("active")
        await phone.start()
        assert (await phone.register()).status == 200
        call = await phone.dial("200")
        assert call.status == 200, call

        async def replicated() -> bool:
            return int(await client.hlen(f"smg:{SITE}:calls")) == 1

        assert await _until(replicated, 20.0), a.log()
        marker = await client.hgetall(f"smg:{SITE}:ha:active")
        assert marker[b"node"] == b"gw-a" and marker[b"epoch"] == b"1"
        raw = next(iter((await client.hgetall(f"smg:{SITE}:calls")).values()))
        assert isinstance(json.loads(raw)["sealed_keys"], str)  # the SRTP keys travel sealed

        # With media flowing, the workers' checkpoints reach the replica too.
        playing = asyncio.get_running_loop().create_task(phone.play(30.0))

        async def checkpointed() -> bool:
            stored = next(iter((await client.hgetall(f"smg:{SITE}:calls")).values()))
            streams = json.loads(stored)["call"]["streams"]
            return bool(streams) and all(s["checkpoint"] is not None for s in streams)

        assert await _until(checkpointed, 20.0), a.log()
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing

        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.process.wait, 60) == 0
        assert await wait_for(lambda: call.ended_by_peer, 10.0)  # the phone got its BYE
        assert int(await client.hlen(f"smg:{SITE}:calls")) == 0
    finally:
        await client.aclose()
        await phone.close()
        a.kill()
        await provider.stop()


async def test_the_standby_takes_over_from_its_warm_copy_while_redis_is_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    certs = tmp_path / "certs"
    provider = RecordingProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm=PROVIDER_NAME,
        password=PASSWORD,
    )
    await provider.start()
    env = {**os.environ, KEY_ENV: secrets.token_hex(32)}
    settings = _settings(provider, redis_server, tmp_path)
    a = _gateway(tmp_path, "gw-a", settings, env)
    b = _gateway(tmp_path, "gw-b", settings, env)
    phone = LabPhone(address=PHONE, proxy=(LAN, settings["lan"]["sip_port"]), password=PASSWORD)
    try:
        a.start()
        await a.wait_role("standby")
        assert (await asyncio.to_thread(a.cli, "ha", "notify", "master")).returncode == 0
        await a.wait_role("active")
        b.start()
        await b.wait_role("standby")
        await phone.start()

        async def seq(run: GatewayRun) -> int:
            kinds = (await asyncio.to_thread(run.ask, "GET", "/state"))["kinds"]
            return int(kinds.get("registrations", {}).get("seq", 0))

        empty = await seq(a)
        assert (await phone.register()).status == 200
        written = 0

        async def registration_written() -> bool:
            nonlocal written
            written = await seq(a)
            return written > empty

        assert await _until(registration_written, 20.0), a.log()
        call = await phone.dial("200")
        assert call.status == 200, call
        playing = asyncio.get_running_loop().create_task(phone.play(60.0))

        async def warm() -> bool:
            answer = await b.ha()
            return answer is not None and answer["calls_held"] == 1 and await seq(b) >= written

        assert await _until(warm, 20.0), b.log()
        workers = [
            p for p in (await asyncio.to_thread(a.ask, "GET", "/status"))["media"]["pids"] if p
        ]
        await redis_server.kill()
        a.kill()
        assert await wait_for(lambda: all(_gone(p) for p in workers), 30.0)
        before = provider.media.srtp_ok

        assert (await asyncio.to_thread(b.cli, "ha", "notify", "master")).returncode == 0
        active = await b.wait_role("active")
        assert active["redis"]["reachable"] is False
        assert active["takeover"]["restored"] == 1, (active, b.log())
        assert await wait_for(lambda: provider.media.srtp_ok > before + 20, 20.0), b.log()
        registrations = (await asyncio.to_thread(b.ask, "GET", "/registrations"))["registrations"]
        assert any(r["user"] == "100" for r in registrations), registrations
        assert (await phone.hang_up()) is not None
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
    finally:
        await phone.close()
        a.kill()
        b.stop()
        await provider.stop()
