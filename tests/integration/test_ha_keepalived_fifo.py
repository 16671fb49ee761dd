"""A pair's gateway reads keepalived's notify FIFO itself ([ha] keepalived_fifo, issue 14).

    LAN 127.0.69.20 | gateway | WAN 127.0.69.21 -> lab provider 127.0.69.30

A real ``gateway run`` with a real redis-server (UNIX socket). keepalived's lines are written
into the FIFO by the test as keepalived writes them: the gateway creates the FIFO (0600),
a ``GROUP`` MASTER line that waited in the pipe before the gateway started promotes it,
instance lines and noise are counted and ignored, the FIFO removed and made again (keepalived
restarted) is followed, and a later ``GROUP ... BACKUP`` fences the gateway (exit 75).
deploy/ha/ha-check (keepalived's track script) passes on the active gateway and fails once it
is gone.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.certs.lab import make_lab
from gateway.ha.node import EXIT_FENCED
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config
from tests.integration.test_ha_pair import GatewayRun, RecordingProvider, redis_server
from tests.integration.test_redis_state import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

__all__ = ["redis_server"]

LAN = "127.0.69.20"
WAN = "127.0.69.21"
PROVIDER = "127.0.69.30"
PASSWORD = "lab-secret-" + secrets.token_hex(4)
KEY_ENV = "GATEWAY_TEST_HA_FIFO_KEY"
ROOT = Path(__file__).resolve().parents[2]


def _write(fifo: Path, text: str) -> None:
    # As keepalived does: open, write whole lines, close (the gateway keeps its own end open).
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def test_gateway_follows_keepalived_fifo_in_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    certs = tmp_path / "certs"
    provider = RecordingProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm="provider.lab",
        password=PASSWORD,
    )
    await provider.start()
    fifo = tmp_path / "run" / "keepalived.fifo"
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name="provider.lab",
        provider_port=provider.port,
        lan_allow=["127.0.69.0/24"],
        extra={
            "state": {
                "directory": "state",
                "key_env": KEY_ENV,
                "site": "site-fifo",
                "redis_url": f"unix://{redis_server.socket}",
                "redis_timeout": 1.0,
            },
            "ha": {
                "enabled": True,
                "node": "gw-a",
                "keepalived_fifo": str(fifo),
                "keepalived_group": "GATEWAY",
            },
        },
    )
    config = write_gateway_config(tmp_path / "gateway.toml", settings)
    run = GatewayRun(tmp_path, config, {**os.environ, KEY_ENV: secrets.token_hex(32)})
    try:
        # keepalived's first words, written before the gateway reads: the pipe keeps them
        # while someone holds it open (keepalived does; here the test's own reader end).
        fifo.parent.mkdir()
        os.mkfifo(fifo, 0o600)
        holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        _write(
            fifo,
            'INSTANCE "VI_LAN" BACKUP 100\nGROUP "GATEWAY" BACKUP 0\n'
            'INSTANCE "VI_LAN" MASTER 100\nGROUP "GATEWAY" MASTER 0\n',
        )
        run.start()
        # Only the last group word counts: keepalived is master now, so the gateway is too.
        active = await run.wait_role("active")
        facts = active["keepalived_fifo"]
        assert facts["last"] == "master" and facts["acted"] == 2 and facts["instances"] == 2
        assert active["role_changes"] == 2  # standby -> promoting -> active, once
        assert stat.S_IMODE(fifo.stat().st_mode) == 0o600
        assert (tmp_path / "state" / "ha-vrrp-state").read_text().startswith("master ")
        assert await wait_for(lambda: len(provider.refresh_tls_sessions()) >= 1, 30.0)
        os.close(holder)
        # keepalived's track script as deployed: passes while the gateway is active.
        assert await asyncio.to_thread(_ha_check, tmp_path / "control.sock") == 0

        # Lines that are not the group's are counted and change nothing.
        _write(fifo, 'INSTANCE "VI_WAN" FAULT 100\nGROUP "OTHER" BACKUP 0\nhello\n')

        async def counted() -> bool:
            answer = await run.ha()
            return answer is not None and answer["keepalived_fifo"]["unknown"] == 2

        assert await _until(counted, 20.0), run.log()
        assert (await run.wait_role("active"))["keepalived_fifo"]["instances"] == 3

        # keepalived restarted: it removed its FIFO and made a new one.
        fifo.unlink()
        os.mkfifo(fifo, 0o600)

        async def reopened() -> bool:
            answer = await run.ha()
            return answer is not None and answer["keepalived_fifo"]["reopened"] == 1

        assert await _until(reopened, 20.0), run.log()
        # A repeated master changes nothing; the backup after it fences this box.
        _write(fifo, 'GROUP "GATEWAY" MASTER 0\nGROUP "GATEWAY" BACKUP 0\n')
        assert run.process is not None
        code = await asyncio.to_thread(run.process.wait, 30)
        assert code == EXIT_FENCED, run.log()
        assert "keepalived says backup" in run.log()
        # The fenced gateway is gone: the track script fails.
        assert await asyncio.to_thread(_ha_check, tmp_path / "control.sock") == 1
    finally:
        run.stop()
        await provider.stop()


def _ha_check(control_socket: Path) -> int:
    script = ROOT / "deploy" / "ha" / "ha-check"
    done = subprocess.run([str(script), str(control_socket)], capture_output=True, timeout=30)
    return done.returncode


async def _until(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False
