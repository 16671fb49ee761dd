"""Run the real gateway (``gateway run --config``) as a child process for interop tests.

The gateway gets its own loopback addresses: LAN side 127.0.0.20, WAN side 127.0.0.21 by
default, so captures can tell the sides apart; media port ranges are chosen per test run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop.peers import (
    ManagedProcess,
    free_port,
    wait_for_port,
)
from tests.pki import TestPki


@dataclass
class GatewayLayout:
    """Addresses and ports of one gateway under test."""

    lan_address: str = "127.0.0.20"
    wan_address: str = "127.0.0.21"
    lan_port: int = 0
    wan_listen_port: int = 0
    lan_media: tuple[int, int] = (0, 0)
    wan_media: tuple[int, int] = (0, 0)
    extra_toml: str = ""
    provider_host: str = "127.0.0.1"
    provider_port: int = 5061
    domain: str = "127.0.0.1"
    suites: tuple[str, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lan_port:
            self.lan_port = free_port(self.lan_address)
        if not self.wan_listen_port:
            self.wan_listen_port = free_port(self.wan_address, proto="tcp")
        if self.lan_media == (0, 0):
            first = _media_base()
            self.lan_media = (first, first + 199)
            self.wan_media = (first + 200, first + 399)


_media_counter = [0]


def _media_base() -> int:
    """Media ranges that do not collide between gateways of one run (or with sipp/rtpengine)."""
    _media_counter[0] += 1
    return 20000 + (os.getpid() % 20) * 1000 + (_media_counter[0] % 2) * 400


def gateway_config(layout: GatewayLayout, pki: TestPki) -> str:
    """A TOML configuration for a gateway in front of a provider trusted through ``pki``."""
    suites = ""
    if layout.suites:
        suites = "srtp_suites = [" + ", ".join(f'"{s}"' for s in layout.suites) + "]\n"
    return f"""
[lan]
sip_address = "{layout.lan_address}"
sip_port = {layout.lan_port}
media_address = "{layout.lan_address}"
media_ports = [{layout.lan_media[0]}, {layout.lan_media[1]}]

[wan]
provider_host = "{layout.provider_host}"
provider_port = {layout.provider_port}
domain = "{layout.domain}"
sip_address = "{layout.wan_address}"
media_address = "{layout.wan_address}"
media_ports = [{layout.wan_media[0]}, {layout.wan_media[1]}]
listen_port = {layout.wan_listen_port}
keepalive_interval = 5.0
reconnect_min = 0.2
reconnect_max = 2.0
{suites}
[wan.identity]
certificate = "{pki.server.cert}"
private_key = "{pki.server.key}"

[wan.trust]
ca_bundle = "{pki.ca_cert}"

[media]
workers = 1
inactivity_timeout = 30.0

[policy.allowlist]
lan = ["127.0.0.0/8"]

[log]
level = "debug"
format = "json"
{layout.extra_toml}
"""


class GatewayProcess(ManagedProcess):
    """``python -m gateway run --config FILE`` with its log kept for the test report."""

    def __init__(
        self,
        workdir: Path,
        layout: GatewayLayout,
        pki: TestPki,
        *,
        config_text: str | None = None,
        netns: str | None = None,
    ) -> None:
        """Write the config; with ``netns`` the gateway (and its media workers) run inside
        that network namespace, where the loopback addresses are the namespace's own."""
        self.layout = layout
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(config_text or gateway_config(layout, pki))
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(self.config_path),
            "--drain",
            "2",
        ]
        super().__init__(argv, name="gateway", logdir=workdir, netns=netns)

    def start(self) -> GatewayProcess:
        super().start()
        self.wait_ready(
            port=self.layout.lan_port, host=self.layout.lan_address, proto="udp", timeout=20
        )
        return self

    def wait_provider_up(self, timeout: float = 15.0) -> None:
        """Block until the log says the verified provider connection is up."""
        self.wait_log(r"provider connected", timeout=timeout)

    def wait_listening(self) -> None:
        wait_for_port(
            self.layout.wan_address,
            self.layout.wan_listen_port,
            "tcp",
            timeout=10,
            pid=self.pid if self.netns else None,
        )

    @property
    def lan(self) -> tuple[str, int]:
        return self.layout.lan_address, self.layout.lan_port
