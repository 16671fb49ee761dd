"""A whole site on loopback for admin tests: lab provider (SIP/TLS + SRTP), the real gateway with
its admin surface and media worker, and a lab phone, all in the test's event loop.

    phone 127.0.0.10 -> gateway LAN 127.0.0.20 | WAN 127.0.0.21 -> provider 127.0.0.30
    admin http://127.0.0.1:<port>/  metrics http://127.0.0.1:<port>/metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.certs.lab import make_lab
from gateway.config import load_config
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from tests.gateway_config import Settings, gateway_settings, merge, write_gateway_config

PHONE = "127.0.0.10"
LAN = "127.0.0.20"
WAN = "127.0.0.21"
PROVIDER = "127.0.0.30"
PROVIDER_NAME = "provider.lab"
#: Strong enough for ``gateway audit``: long, random, mixed classes.
TOKEN = "Adm1n-" + secrets.token_urlsafe(24)


@dataclass
class Site:
    gateway: Gateway
    provider: LabProvider
    phone: LabPhone
    directory: Path
    config_path: Path
    token: str

    @property
    def base_url(self) -> str:
        assert self.gateway.admin is not None and self.gateway.admin.address is not None
        return "http://{}:{}".format(*self.gateway.admin.address)

    @property
    def metrics_url(self) -> str:
        admin = self.gateway.admin
        assert admin is not None and admin.metrics_address is not None
        return "http://{}:{}/metrics".format(*admin.metrics_address)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def free_port_range(address: str, size: int = 16) -> tuple[int, int]:
    for _ in range(100):
        first = 20000 + 2 * secrets.randbelow(20000)
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind((address, port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return first, first + size - 1
    raise OSError("no free port range")


def lab_settings(
    *,
    lan: str,
    wan: str,
    provider: str,
    provider_name: str,
    provider_port: int,
    lan_allow: list[str],
    extra: Mapping[str, Any] | None = None,
) -> Settings:
    """A gateway between lab phones on ``lan`` (UDP) and the lab provider over TLS, with the
    lab certificates under ``certs/`` beside its configuration file and ports the OS picks."""
    return gateway_settings(
        lan_address=lan,
        lan_port=free_udp_port(lan),
        transports=["udp"],
        lan_media=free_port_range(lan),
        wan_address=wan,
        wan_media=free_port_range(wan),
        provider_host=provider,
        provider_port=provider_port,
        domain=provider_name,
        reconnect_max=1.0,
        certificate="certs/gateway.pem",
        private_key="certs/gateway.key",
        ca_bundle="certs/ca.pem",
        server_name=provider_name,
        lan_allow=lan_allow,
        extra=extra,
    )


def site_config(
    provider_port: int, token_env: str, extra: Mapping[str, Any] | None = None
) -> Settings:
    """The site's gateway: lab certificates under ``certs/`` and state under ``state/`` (both
    relative to the configuration file), the admin surface on OS-picked ports."""
    return lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider_port,
        lan_allow=[f"{PHONE}/32"],
        extra=merge(
            {
                "admin": {
                    "enabled": True,
                    "listen": "127.0.0.1:0",
                    "metrics_listen": "127.0.0.1:0",
                    "token_env": token_env,
                    "cdr_max_bytes": 4096,
                    "cdr_keep": 3,
                },
                "state": {"directory": "state"},
            },
            extra,
        ),
    )


async def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def admin_site(
    directory: Path, *, extra: Mapping[str, Any] | None = None
) -> AsyncIterator[Site]:
    """Start provider, gateway (admin on) and phone; stop them all afterwards."""
    certs = directory / "certs"
    await asyncio.to_thread(make_lab, certs)
    provider = LabProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        tone_seconds=None,  # plays until the BYE
    )
    await provider.start()
    token_env = "GATEWAY_TEST_ADMIN_TOKEN_" + secrets.token_hex(4).upper()
    os.environ[token_env] = TOKEN
    config_path = write_gateway_config(
        directory / "gateway.toml", site_config(provider.port, token_env, extra)
    )
    config = load_config(config_path)
    gateway = Gateway(config, workers=1)
    phone: LabPhone | None = None
    try:
        await gateway.start()
        assert await wait_for(lambda: gateway.wan_state[0], 10.0), gateway.wan_state
        phone = LabPhone(address=PHONE, proxy=(LAN, config.lan.sip_port), timeout=5.0)
        await phone.start()
        yield Site(gateway, provider, phone, directory, config_path, TOKEN)
    finally:
        if phone is not None:
            await phone.close()
        await gateway.stop()
        await provider.stop()
        os.environ.pop(token_env, None)
