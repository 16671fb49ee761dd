"""A restart of the gateway keeps the site's state (issue 14): registrations, bans, caps' totals
and every call record, so the provider's calls reach the phones without them re-registering.

    phone 127.0.33.10 -> gateway LAN 127.0.33.20 | WAN 127.0.33.21 -> lab provider 127.0.33.30

The first test stops the gateway as SIGTERM does (``Gateway.stop``) and starts a new one in the
same event loop; the second runs ``gateway run`` as a child process and kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.certs.lab import make_lab
from gateway.config import GatewayConfig, load_config
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from gateway.policy import PersistedBan
from gateway.sip.message import SipRequest, new_call_id, new_tag
from tests.admin_site import lab_settings, wait_for
from tests.gateway_config import write_gateway_config

PHONE = "127.0.33.10"
LAN = "127.0.33.20"
WAN = "127.0.33.21"
PROVIDER = "127.0.33.30"
PROVIDER_NAME = "provider.lab"
BANNED = "192.0.2.77"
KEY_ENV = "GATEWAY_TEST_STATE_KEY_" + secrets.token_hex(4).upper()


async def _provider(directory: Path) -> LabProvider:
    certs = directory / "certs"
    await asyncio.to_thread(make_lab, certs)
    provider = LabProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        tone_seconds=None,
    )
    await provider.start()
    return provider


def _config(directory: Path, provider: LabProvider) -> Path:
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=[f"{PHONE}/32"],
        extra={
            "state": {"directory": "state", "key_env": KEY_ENV, "site": "restart-test"},
            "control": {"enabled": False},
            "policy": {
                "caps": {
                    "phone": {
                        "concurrent": 2,
                        "calls_per_hour": 2,
                        "minutes_per_day": 240.0,
                        "international_minutes_per_day": 30.0,
                    }
                }
            },
        },
    )
    return write_gateway_config(directory / "gateway.toml", settings)


def _incoming_invite(provider: LabProvider, target: str) -> tuple[str, bytes]:
    """An SRTP call from the provider to ``target`` (the Contact it holds for the phone)."""
    key = base64.b64encode(os.urandom(30)).decode()
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {PROVIDER}\r\ns=-\r\nc=IN IP4 {PROVIDER}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\na=sendrecv\r\n"
    ).encode()
    call_id = new_call_id()
    head = "\r\n".join(
        [
            f"INVITE {target} SIP/2.0",
            f"Via: SIP/2.0/TLS {PROVIDER}:{provider.port};branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:+15550100@{PROVIDER_NAME}>;tag={new_tag()}",
            f"To: <{target}>",
            f"Call-ID: {call_id}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:provider@{PROVIDER}:{provider.port};transport=tls>",
            "Content-Type: application/sdp",
            f"Content-Length: {len(body)}",
        ]
    )
    return call_id, head.encode() + b"\r\n\r\n" + body


def _watch_requests(phone: LabPhone) -> list[SipRequest]:
    """The requests that reach the phone (it answers an INVITE 501: enough to prove arrival)."""
    seen: list[SipRequest] = []
    original = phone._on_request

    def recording(request: SipRequest, addr: tuple[str, int]) -> None:
        seen.append(request)
        original(request, addr)

    phone._on_request = recording  # type: ignore[method-assign]
    return seen


async def _call_from_provider(provider: LabProvider, phone_seen: list[SipRequest]) -> None:
    """The provider calls the phone's registered Contact; the INVITE reaches the phone."""
    assert await wait_for(lambda: any(not c.closed for c in provider._connections), 10.0)
    target = provider.registrations[f"sip:100@{PROVIDER_NAME}"]
    _, data = _incoming_invite(provider, target)
    connection = next(c for c in provider._connections if not c.closed)
    connection.write(data)
    assert await wait_for(lambda: any(r.method == "INVITE" for r in phone_seen), 10.0), (
        f"the provider's call to {target} did not reach the phone"
    )


async def _outbound_call(phone: LabPhone) -> str:
    call = await phone.dial("200")
    assert call.status == 200, call.status
    await phone.play(0.3)
    await phone.hang_up()
    return call.call_id


def _records(directory: Path) -> list[dict[str, Any]]:
    """Every call record, in the file and its rotated predecessors."""
    return [
        json.loads(line)
        for path in sorted((directory / "state" / "cdr").glob("calls.jsonl*"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@pytest.fixture
def state_key() -> Iterator[str]:
    key = secrets.token_hex(32)
    os.environ[KEY_ENV] = key
    yield key
    os.environ.pop(KEY_ENV, None)


async def _started(config: GatewayConfig) -> Gateway:
    gateway = Gateway(config, workers=1)
    await gateway.start()
    assert await wait_for(lambda: gateway.wan_state[0], 10.0), gateway.wan_state
    return gateway


async def test_a_stopped_and_restarted_gateway_keeps_the_site_state(
    tmp_path: Path, state_key: str
) -> None:
    provider = await _provider(tmp_path)
    config = load_config(_config(tmp_path, provider))
    gateway = await _started(config)
    running = True
    phone = LabPhone(address=PHONE, proxy=(LAN, config.lan.sip_port), timeout=5.0)
    await phone.start()
    try:
        assert (await phone.register()).status == 200
        registers_before = sum(1 for r in provider.requests if r.startswith("REGISTER"))
        calls = [await _outbound_call(phone), await _outbound_call(phone)]
        minutes = gateway.policy.minutes_today("100", gateway._now())
        assert minutes > 0
        now, wall = gateway._now(), time.time()
        ban = PersistedBan(BANNED, "flood.register", wall, wall + 3600, 1)
        gateway.policy.import_bans([ban], now, wall)
        gateway._flush()
        await gateway.stop()  # what SIGTERM does
        running = False

        text = (tmp_path / "state" / "site-registrations.json").read_text()
        assert "Digest" not in text and "sip:100@" in text  # nothing sealed shows in clear

        gateway = await _started(config)
        running = True
        # The provider's call reaches the phone, which did not register again.
        seen = _watch_requests(phone)
        await _call_from_provider(provider, seen)
        assert not [r for r in seen if r.method == "REGISTER"]
        # The gateway registered the binding again upstream by itself (same Call-ID).
        assert await wait_for(
            lambda: (
                sum(1 for r in provider.requests if r.startswith("REGISTER")) > registers_before
            ),
            10.0,
        )
        # The ban is still in force, the caps' totals are still counted: a third call this
        # hour is refused by the phone's calls_per_hour = 2.
        assert BANNED in [b.address for b in gateway.policy.bans(gateway._now())]
        assert gateway.policy.minutes_today("100", gateway._now()) == pytest.approx(
            minutes, abs=1e-3
        )
        refused = await phone.dial("200")
        assert refused.status == 403, refused.status
        # Every call record is there, once.
        await gateway.stop()
        running = False
        ids = [r.get("call_id") for r in _records(tmp_path)]
        for call_id in calls:
            assert ids.count(call_id) == 1, (call_id, ids)
    finally:
        await phone.close()
        if running:
            await gateway.stop()
        await provider.stop()


async def test_after_kill_9_the_last_second_of_changes_at_most_is_lost(
    tmp_path: Path, state_key: str
) -> None:
    provider = await _provider(tmp_path)
    config_path = _config(tmp_path, provider)
    config = load_config(config_path)
    phone = LabPhone(address=PHONE, proxy=(LAN, config.lan.sip_port), timeout=5.0)
    await phone.start()
    saved = tmp_path / "state" / "site-registrations.json"
    processes: list[asyncio.subprocess.Process] = []

    async def run() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        # Ready: the provider link is up (the lab provider holds the gateway's connection).
        assert await wait_for(lambda: any(not c.closed for c in provider._connections), 60.0), (
            "the gateway did not connect to the provider"
        )
        return process

    try:
        first = await run()
        assert await wait_for(lambda: phone.sip_address is not None, 5.0)
        reply = None
        for _ in range(100):  # 503 until the gateway's provider link is verified and up
            try:
                reply = await phone.register()
            except TimeoutError:
                continue
            if reply.status != 503:
                break
            await asyncio.sleep(0.1)
        assert reply is not None and reply.status == 200
        # Within the save interval the binding is on disk; then the process is killed.
        assert await wait_for(lambda: saved.exists() and "sip:100@" in saved.read_text(), 5.0)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert await wait_for(lambda: all(c.closed for c in provider._connections), 10.0)
        registers = provider.requests.count("REGISTER")
        await run()
        # The restored binding is registered again upstream once the link is up: ready.
        assert await wait_for(lambda: provider.requests.count("REGISTER") > registers, 30.0)
        seen = _watch_requests(phone)
        await _call_from_provider(provider, seen)
        assert not [r for r in seen if r.method == "REGISTER"]
    finally:
        await phone.close()
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30.0)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        await provider.stop()
