"""Run the real gateway (``gateway run --config``) as a child process for interop tests.

The gateway gets its own loopback addresses: LAN side 127.0.0.20, WAN side 127.0.0.21 by
default, so captures can tell the sides apart; media port ranges are chosen per test run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.gateway_config import Settings, gateway_settings, merge, write_gateway_config
from tests.interop.peers import ManagedProcess, free_port, wait_for_port
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
    provider_host: str = "127.0.0.1"
    provider_port: int = 5061
    domain: str = "127.0.0.1"
    suites: tuple[str, ...] = ()
    #: Settings merged over :func:`gateway_config`'s (policy limits, a state directory ...).
    config: Mapping[str, Any] = field(default_factory=dict)

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


#: What every interop gateway has beyond the shared test defaults: keepalives and an idle
#: timeout short enough for a test's timeline, and a debug log in JSON for the assertions.
_INTEROP = {
    "wan": {"keepalive_interval": 5.0},
    "media": {"inactivity_timeout": 30.0},
    "log": {"level": "debug", "format": "json"},
}


def gateway_config(layout: GatewayLayout, pki: TestPki) -> Settings:
    """The settings of a gateway in front of a provider trusted through ``pki``."""
    return gateway_settings(
        lan_address=layout.lan_address,
        lan_port=layout.lan_port,
        lan_media=layout.lan_media,
        wan_address=layout.wan_address,
        wan_media=layout.wan_media,
        listen_port=layout.wan_listen_port,
        provider_host=layout.provider_host,
        provider_port=layout.provider_port,
        domain=layout.domain,
        srtp_suites=layout.suites,
        certificate=pki.server.cert,
        private_key=pki.server.key,
        ca_bundle=pki.ca_cert,
        extra=merge(_INTEROP, layout.config),
    )


class GatewayProcess(ManagedProcess):
    """``python -m gateway run --config FILE`` with its log kept for the test report."""

    def __init__(
        self,
        workdir: Path,
        layout: GatewayLayout,
        pki: TestPki,
        *,
        netns: str | None = None,
    ) -> None:
        """Write the config; with ``netns`` the gateway (and its media workers) run inside
        that network namespace, where the loopback addresses are the namespace's own."""
        self.layout = layout
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = write_gateway_config(
            workdir / "gateway.toml", gateway_config(layout, pki)
        )
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
