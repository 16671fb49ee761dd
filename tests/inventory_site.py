"""A site on 127.0.29.0/24 for the phone inventory's tests: the lab provider (SIP/TLS + SRTP),
the real gateway with its admin surface and control socket, and lab phones that each send the
User-Agent of a different desk phone, all in the test's event loop.

    phones 127.0.29.10-.12 -> gateway LAN 127.0.29.20 | WAN 127.0.29.21 -> provider 127.0.29.30
    a scanner on 127.0.29.40 (inside the LAN allowlist: the policy's scanner rule bans it)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from gateway.app import Gateway
from gateway.certs.lab import make_lab
from gateway.config import load_config
from gateway.lab.phone import LabPhone
from gateway.lab.provider import LabProvider
from tests.admin_site import TOKEN, lab_settings, wait_for
from tests.gateway_config import write_gateway_config

LAN = "127.0.29.20"
WAN = "127.0.29.21"
PROVIDER = "127.0.29.30"
PROVIDER_NAME = "provider.lab"
SCANNER = "127.0.29.40"
#: (address, extension, User-Agent) of the site's phones.
PHONES = (
    ("127.0.29.10", "201", "Yealink SIP-T46S 66.85.0.5"),
    ("127.0.29.11", "202", "Grandstream HT801 1.0.27.2"),
    ("127.0.29.12", "203", "Cisco/SPA504G-7.6.2e"),
)
#: The minimums the site's gateway is configured with: the Yealink is below its own.
MINIMUMS = {"Yealink T46S": "66.86.0.15", "Cisco": "7.6.2e"}


@dataclass
class InventorySite:
    gateway: Gateway
    provider: LabProvider
    phones: list[LabPhone]
    config_path: Path

    @property
    def base_url(self) -> str:
        assert self.gateway.admin is not None and self.gateway.admin.address is not None
        return "http://{}:{}".format(*self.gateway.admin.address)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def phone(self, address: str, user: str, user_agent: str, timeout: float = 5.0) -> LabPhone:
        config = self.gateway.config
        return LabPhone(
            address=address,
            proxy=(config.lan.sip_address, config.lan.sip_port),
            user=user,
            user_agent=user_agent,
            timeout=timeout,
        )


@contextlib.asynccontextmanager
async def inventory_site(directory: Path) -> AsyncIterator[InventorySite]:
    """Provider, gateway (admin on, [inventory] minimums set) and the phones, stopped after."""
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
    token_env = "GATEWAY_TEST_ADMIN_TOKEN_" + secrets.token_hex(4).upper()
    os.environ[token_env] = TOKEN
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=["127.0.29.0/26"],
        extra={
            "admin": {"enabled": True, "listen": "127.0.29.1:0", "token_env": token_env},
            "state": {"directory": "state"},
            "inventory": {"minimum_firmware": MINIMUMS},
        },
    )
    config_path = write_gateway_config(directory / "gateway.toml", settings)
    gateway = Gateway(load_config(config_path), workers=1)
    site: InventorySite | None = None
    try:
        await gateway.start()
        assert await wait_for(lambda: gateway.wan_state[0], 10.0), gateway.wan_state
        site = InventorySite(gateway, provider, [], config_path)
        for address, user, agent in PHONES:
            phone = site.phone(address, user, agent)
            await phone.start()
            site.phones.append(phone)
        yield site
    finally:
        for phone in site.phones if site is not None else []:
            await phone.close()
        await gateway.stop()
        await provider.stop()
        os.environ.pop(token_env, None)
