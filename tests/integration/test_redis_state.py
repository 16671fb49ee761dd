"""One Redis, many gateways (issue 14): state under each site's key, bans shared by all.

    phone 127.0.35.10 -> gateway A LAN 127.0.35.20 | WAN 127.0.35.21 -> lab provider 127.0.35.30
                         gateway B LAN 127.0.35.22 | WAN 127.0.35.23 ->
    scanner 127.0.35.66 -> A

A real redis-server on a UNIX socket in the test's folder (no persistence), started and ended by
PID here. A scanner banned at A is banned at B, a lift at A lifts at B; A's registrations are in
Redis under A's site with the Authorization sealed; Redis killed mid-test does not stop calls or
registrations at A, and once it is back A writes its state again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.app import BANNED_UNPARSED, Gateway
from gateway.certs.lab import make_lab
from gateway.config import GatewayConfig, load_config
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

PHONE = "127.0.35.10"
SCANNER = "127.0.35.66"
PROVIDER = "127.0.35.30"
PROVIDER_NAME = "provider.lab"
PASSWORD = "lab-secret-" + secrets.token_hex(4)
KEY_ENV = "GATEWAY_TEST_REDIS_KEY_" + secrets.token_hex(4).upper()


class RedisServer:
    """A throwaway redis-server on a UNIX socket."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", "0", "--unixsocket", str(self.socket),
            "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        try:
            assert await wait_for(lambda: self.socket.exists(), 20.0), "redis-server did not start"
            for _ in range(200):  # the socket file comes before the server accepts on it
                try:
                    await client.ping()
                    break
                except RedisError:
                    await asyncio.sleep(0.05)
            await client.ping()
        finally:
            await client.aclose()

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(unix_socket_path=str(self.socket))

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self.process = None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()
        self.process = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def state_key() -> AsyncIterator[str] | object:
    key = secrets.token_hex(32)
    os.environ[KEY_ENV] = key
    yield key
    os.environ.pop(KEY_ENV, None)


async def _provider(directory: Path) -> LabProvider:
    certs = directory / "certs"
    await asyncio.to_thread(make_lab, certs)
    provider = LabProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm=PROVIDER_NAME,
        password=PASSWORD,
    )
    await provider.start()
    return provider


def _config(
    directory: Path, provider: LabProvider, site: str, lan: str, wan: str, redis: RedisServer
) -> GatewayConfig:
    folder = directory / site
    folder.mkdir()
    shutil.copytree(directory / "certs", folder / "certs")
    settings = lab_settings(
        lan=lan,
        wan=wan,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=["127.0.35.0/24"],
        extra={
            "state": {
                "directory": "state",
                "key_env": KEY_ENV,
                "site": site,
                "redis_url": f"unix://{redis.socket}",
                "redis_timeout": 1.0,
            },
            "control": {"enabled": False},
        },
    )
    return load_config(write_gateway_config(folder / "gateway.toml", settings))


async def _started(config: GatewayConfig) -> Gateway:
    gateway = Gateway(config, workers=1)
    await gateway.start()
    assert await wait_for(lambda: gateway.wan_state[0], 20.0), gateway.wan_state
    return gateway


def _scan(target: tuple[str, int]) -> None:
    """One REGISTER from a scanner's User-Agent (answered by nothing: it is banned)."""
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


async def _registrations(server: RedisServer, site: str) -> bytes | None:
    client = server.client()
    try:
        value = await client.hget(f"smg:{site}:registrations", "doc")
    finally:
        await client.aclose()
    return value if isinstance(value, bytes) else None


async def test_bans_are_shared_and_state_survives_a_redis_outage(
    tmp_path: Path,
    redis_server: RedisServer,
    state_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.security")
    provider = await _provider(tmp_path)
    gateways: list[Gateway] = []
    phone: LabPhone | None = None
    try:
        a_config = _config(tmp_path, provider, "site-a", "127.0.35.20", "127.0.35.21", redis_server)
        b_config = _config(tmp_path, provider, "site-b", "127.0.35.22", "127.0.35.23", redis_server)
        a = await _started(a_config)
        gateways.append(a)
        b = await _started(b_config)
        gateways.append(b)
        assert a.redis is not None and b.redis is not None
        assert await wait_for(lambda: a.redis is not None and a.redis.link.up, 10.0)

        # A registration at A: in Redis under A's site, its Authorization sealed.
        phone = LabPhone(
            address=PHONE, proxy=(a_config.lan.sip_address, a_config.lan.sip_port),
            password=PASSWORD, timeout=5.0,
        )  # fmt: skip
        await phone.start()
        assert (await phone.register()).status == 200
        assert await wait_for(lambda: "registrations" in a.redis.store.stored, 10.0)  # type: ignore[union-attr]
        raw = await _registrations(redis_server, "site-a")
        assert raw is not None and b"sip:100@" in raw and b"sealed_authorization" in raw
        assert b"Digest" not in raw and b"response=" not in raw and PASSWORD.encode() not in raw
        assert b"sip:100@" not in (await _registrations(redis_server, "site-b") or b"")

        # A scanner banned at A is banned at B, and B's security log names site A.
        _scan((a_config.lan.sip_address, a_config.lan.sip_port))
        assert await wait_for(lambda: a.policy.banned(SCANNER, a._now()), 10.0)
        assert await wait_for(lambda: b.policy.banned(SCANNER, b._now()), 10.0)
        assert any("site site-a" in r.getMessage() for r in caplog.records), caplog.text
        b_until = {x.address: x.until - b._now() for x in b.policy.bans(b._now())}[SCANNER]
        a_until = {x.address: x.until - a._now() for x in a.policy.bans(a._now())}[SCANNER]
        assert abs(a_until - b_until) < 5.0  # the same absolute expiry, not a fresh ban
        client = redis_server.client()
        try:
            assert await client.hexists("smg:shared:bans", SCANNER)
        finally:
            await client.aclose()
        # The scanner's requests at B are refused there too.
        # (dropped before parsing, counted with the core's counters).
        dropped = b.core.counters.get(BANNED_UNPARSED, 0)
        _scan((b_config.lan.sip_address, b_config.lan.sip_port))
        assert await wait_for(lambda: b.core.counters.get(BANNED_UNPARSED, 0) > dropped, 10.0), (
            b.core.counters
        )

        # A lift at A lifts at B.
        assert a.policy.lift_ban(SCANNER, a._now())
        a._flush()
        assert await wait_for(lambda: not b.policy.banned(SCANNER, b._now()), 10.0)

        # Redis killed: registrations and calls at A go on.
        await redis_server.kill()
        assert (await phone.register()).status == 200
        call = await phone.dial("200")
        assert call.status == 200, call.status
        await phone.hang_up()
        assert await wait_for(lambda: not a.redis.link.up, 10.0)  # type: ignore[union-attr]
        assert a.redis.status()["reachable"] is False

        # Redis back (empty: no persistence): A writes its state again.
        await redis_server.start()
        assert await wait_for(lambda: a.redis.link.up, 30.0)  # type: ignore[union-attr]
        for _ in range(300):
            raw = await _registrations(redis_server, "site-a")
            if raw is not None:
                break
            await asyncio.sleep(0.05)
        assert raw is not None and b"sip:100@" in raw and b"Digest" not in raw
    finally:
        if phone is not None:
            await phone.close()
        for gateway in gateways:
            await gateway.stop()
        await provider.stop()
