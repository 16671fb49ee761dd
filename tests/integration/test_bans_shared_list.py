"""``gateway bans list`` against a running gateway on Redis: its own bans, and the shared list
in force with the site that made each ban, asked through the control socket; with no gateway
running, the ban file as before (127.0.65.0/24).

    scanner 127.0.65.66 -> gateway LAN 127.0.65.40 | WAN 127.0.65.41 -> (no provider needed)

A real redis-server on a UNIX socket in the test's folder, started and ended by PID; another
site's ban is written to the shared list as that site's gateway would write it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from gateway.app import Gateway
from gateway.certs.lab import make_lab
from gateway.config import load_config
from gateway.policy.bans import SharedBan
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config
from tests.integration.test_redis_state import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

LAN, WAN = "127.0.65.40", "127.0.65.41"
SCANNER = "127.0.65.66"
#: Banned at "site-b" (written to the shared list here, as site-b's gateway would).
ELSEWHERE = "198.51.100.23"
KEY_ENV = "GATEWAY_TEST_BANS_KEY_" + secrets.token_hex(4).upper()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def scan(target: tuple[str, int]) -> None:
    """One REGISTER with a scanner's User-Agent: banned at once."""
    request = (
        f"REGISTER sip:{target[0]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SCANNER}:5060;branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:100@{target[0]}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:100@{target[0]}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\n"
        "CSeq: 1 REGISTER\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SCANNER, 0))
        sock.sendto(request.encode(), target)


async def bans_list(config: Path) -> tuple[int, str, str]:
    """The real command, as an operator runs it (its own process)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "bans", "list", "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def row(text: str, address: str) -> list[str]:
    found = [line.split() for line in text.splitlines() if line.startswith(address + " ")]
    assert found, text
    return found[-1]


async def test_bans_list_shows_the_shared_bans_with_their_sites(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    os.environ[KEY_ENV] = secrets.token_hex(32)
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider="127.0.65.42",
        provider_name="provider.lab",
        provider_port=9,  # nothing listens: this test needs no provider
        lan_allow=["127.0.65.0/24"],
        extra={
            "state": {
                "directory": "state",
                "key_env": KEY_ENV,
                "site": "site-a",
                "redis_url": f"unix://{redis_server.socket}",
                "redis_timeout": 1.0,
            },
        },
    )
    config_path = write_gateway_config(tmp_path / "gateway.toml", settings)
    config = load_config(config_path)
    client = redis_server.client()
    gateway = Gateway(config, workers=1)
    try:
        # Another site's ban, on the shared list before this gateway starts.
        wall = time.time()
        elsewhere = SharedBan(ELSEWHERE, "flood.invite", wall, wall + 3600, 3, "site-b")
        await client.hset("smg:shared:bans", ELSEWHERE, msgspec.json.encode(elsewhere))
        await gateway.start()
        assert gateway.redis is not None and gateway.redis.bans is not None
        shared = gateway.redis.bans
        assert await wait_for(lambda: ELSEWHERE in shared.tracker.known, 20.0)
        # This site's own ban, published to the shared list.
        scan((config.lan.sip_address, config.lan.sip_port))
        assert await wait_for(lambda: gateway.policy.banned(SCANNER, gateway._now()), 10.0)
        assert await wait_for(lambda: SCANNER in shared.tracker.known, 20.0)

        status, out, err = await bans_list(config_path)
        assert status == 0, err
        local, _, shared_table = out.partition("shared bans (Redis; this site: site-a):")
        # The gateway's own list: its ban and the one it applied from site-b.
        assert row(local, SCANNER)[1] == "scan.user-agent"
        assert row(local, ELSEWHERE)[1] == "flood.invite"
        # The shared list: each ban with the site that made it.
        assert row(shared_table, SCANNER)[1:3] == ["site-a", "scan.user-agent"]
        assert row(shared_table, ELSEWHERE)[1:4] == ["site-b", "flood.invite", "3"]
        assert "using the files" not in err
    finally:
        await gateway.stop()
        await client.aclose()
        os.environ.pop(KEY_ENV, None)
    # No gateway running: the ban file, as before (the shared list is the running gateway's).
    status, out, err = await bans_list(config_path)
    assert status == 0, err
    assert "using the files" in err and "shared bans" not in out
    assert row(out, SCANNER)[1] == "scan.user-agent"
