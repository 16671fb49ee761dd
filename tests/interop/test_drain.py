"""Graceful stop: SIGTERM to a real ``gateway run`` process with calls in progress.

The gateway runs as a child process (as systemd runs it); the lab provider and lab phones run
in the test. On SIGTERM the gateway must stop taking calls (a new INVITE gets 503 and readiness
turns false), let active calls finish within the drain time (one phone hangs up by itself),
then end the rest with BYE toward both sides (not a silent drop), write their call records, and
exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.certs.lab import make_lab
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from tests.admin_site import LAN, PROVIDER, TOKEN, site_config, wait_for
from tests.gateway_config import write_gateway_config
from tests.interop.peers import free_port

pytestmark = pytest.mark.interop

DRAIN_SECONDS = 3.0
ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_drains_then_ends_calls_with_bye_on_both_sides(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    await asyncio.to_thread(make_lab, certs)
    provider = LabProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        tone_seconds=None,
    )
    await provider.start()
    admin_port = free_port("127.0.0.1", proto="tcp")
    settings = site_config(
        provider.port,
        "GATEWAY_DRAIN_TEST_TOKEN",
        {
            "policy": {"allowlist": {"lan": ["127.0.0.0/8"]}},
            # The API on a port the test knows (it polls readiness); no separate scrape port.
            "admin": {"listen": f"127.0.0.1:{admin_port}", "metrics_listen": None},
            "log": {"format": "json"},
        },
    )
    sip_port = settings["lan"]["sip_port"]
    config = write_gateway_config(tmp_path / "gateway.toml", settings)
    env = dict(os.environ, GATEWAY_DRAIN_TEST_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    log_path = tmp_path / "gateway.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config),
        "--drain",
        str(DRAIN_SECONDS),
        stdout=log_file,
        stderr=log_file,
        env=env,
        cwd=str(ROOT),
    )
    phones = [
        LabPhone(address=f"127.0.0.{10 + n}", proxy=(LAN, sip_port), user=str(100 + n), timeout=5.0)
        for n in range(3)
    ]
    base = f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> int:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(base + "/api/ready", headers=auth) as answer:
                        return answer.status
                return 0

            deadline = time.monotonic() + 20
            while await ready() != 200:
                assert process.returncode is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.1)

            for phone in phones:
                await phone.start()
                assert (await phone.register()).status == 200
            leaving, staying, late = phones
            for phone in (leaving, staying):
                call = await phone.dial("200")
                assert call.status == 200
            players = [asyncio.create_task(p.play(DRAIN_SECONDS + 3)) for p in (leaving, staying)]
            await asyncio.sleep(0.5)
            assert len(provider.calls) == 2
            left_call, staying_call = list(provider.calls.values())

            stop_sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # Draining: not ready, no new calls, but the active ones carry on.
            assert await ready() == 503
            refused = await late.dial("200")
            assert refused.status == 503
            assert not left_call.ended.is_set() and not staying_call.ended.is_set()

            # One call finishes by itself during the drain.
            assert (await leaving.hang_up()).status == 200
            assert await wait_for(left_call.ended.is_set, 2.0)

            # The other is ended by the gateway at the drain deadline: BYE to both sides.
            assert staying.call is not None
            assert await wait_for(lambda: staying.call.ended_by_peer, DRAIN_SECONDS + 3)
            assert await wait_for(staying_call.ended.is_set, 2.0)
            ended_after = time.monotonic() - stop_sent
            assert DRAIN_SECONDS - 0.5 <= ended_after <= DRAIN_SECONDS + 2.5
            for player in players:
                player.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await player
        code = await asyncio.wait_for(process.wait(), 15)
        assert code == 0, log_path.read_text()[-3000:]
        # Audio was flowing until the end, and nothing was left hanging at the provider.
        assert staying_call.received.arrived
        assert all(c.ended.is_set() for c in provider.calls.values())

        log_text = log_path.read_text()
        assert "draining active calls" in log_text
        events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        ended = [e for e in events if e.get("event") == "ended"]
        reasons = sorted(e["reason"] for e in ended)
        assert reasons == ["BYE from lan", "gateway shutting down"]
        records = [
            json.loads(line)
            for line in (tmp_path / "state" / "cdr" / "calls.jsonl").read_text().splitlines()
        ]
        by_reason = {r["end_reason"]: r for r in records if r["outcome"] == "completed"}
        assert set(by_reason) == {"BYE from lan", "gateway shutting down"}
        shut = by_reason["gateway shutting down"]
        assert shut["caller"] == "101" and shut["duration"] >= DRAIN_SECONDS
        assert shut["packets"]["phone_to_provider"]["sent"] > 50
        assert TOKEN not in log_text
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log_file.close()
        for phone in phones:
            await phone.close()
        await provider.stop()
