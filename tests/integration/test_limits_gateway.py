"""[limits] in a running gateway: its LAN TCP and WAN TLS listeners refuse and cut off what the
limits say, and /metrics counts each hit (real sockets on 127.0.21.0/24).

    phones 127.0.21.11-12 -> gateway LAN 127.0.21.20 (TCP) | WAN 127.0.21.21 (TLS listener)
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.certs.lab import make_lab
from gateway.config import load_config
from tests.admin_site import free_port_range
from tests.gateway_config import gateway_settings, write_gateway_config
from tests.integration.test_admin_metrics import parse

LAN = "127.0.21.20"
WAN = "127.0.21.21"
PHONE = "127.0.21.11"
SCANNER = "127.0.21.12"

OPTIONS = (
    f"OPTIONS sip:gw@{LAN} SIP/2.0\r\n"
    f"Via: SIP/2.0/TCP {PHONE}:5060;branch=z9hG4bKlimitsgw1\r\n"
    f"Max-Forwards: 70\r\nFrom: <sip:1001@{LAN}>;tag=1\r\nTo: <sip:gw@{LAN}>\r\n"
    "Call-ID: limits-gw-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
).encode()


def free_tcp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


async def closed_by_gateway(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 15) == b""
    except ConnectionResetError:
        return True


async def test_listener_limits_are_enforced_and_counted_on_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_LIMITS_TEST_TOKEN", "Limits-" + secrets.token_urlsafe(24))
    certs = tmp_path / "certs"
    await asyncio.to_thread(make_lab, certs)
    lan_port = free_tcp_port(LAN)
    settings = gateway_settings(
        lan_address=LAN,
        lan_port=lan_port,
        transports=["tcp"],
        lan_media=free_port_range(LAN),
        wan_address=WAN,
        wan_media=free_port_range(WAN),
        listen_port=free_tcp_port(WAN),
        provider_host="127.0.21.30",  # nobody there: the listeners do not need the provider
        provider_port=free_tcp_port("127.0.21.30"),
        certificate="certs/gateway.pem",
        private_key="certs/gateway.key",
        ca_bundle="certs/ca.pem",
        lan_allow=["127.0.21.0/24"],
        extra={
            "limits": {"connections_per_source": 2, "tls_handshake_timeout": 0.5},
            "admin": {
                "enabled": True,
                "listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "token_env": "GATEWAY_LIMITS_TEST_TOKEN",
            },
            "state": {"directory": "state"},
        },
    )
    config = load_config(write_gateway_config(tmp_path / "gateway.toml", settings))
    assert config.wan.listen_port is not None
    gateway = Gateway(config, workers=1)
    await gateway.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        # Two connections from one phone carry SIP; the third from it is closed at accept.
        for _ in range(2):
            reader, writer = await asyncio.open_connection(LAN, lan_port, local_addr=(PHONE, 0))
            writers.append(writer)
            writer.write(OPTIONS)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            assert answer.startswith(b"SIP/2.0 ")
        reader, writer = await asyncio.open_connection(LAN, lan_port, local_addr=(PHONE, 0))
        writers.append(writer)
        assert await closed_by_gateway(reader)
        # A WAN client that is not the provider is closed at accept, before any TLS.
        reader, writer = await asyncio.open_connection(
            WAN, config.wan.listen_port, local_addr=(SCANNER, 0)
        )
        writers.append(writer)
        assert await closed_by_gateway(reader)
        # The provider's address that never starts its TLS handshake is cut off.
        reader, writer = await asyncio.open_connection(
            WAN, config.wan.listen_port, local_addr=("127.0.21.30", 0)
        )
        writers.append(writer)
        assert await closed_by_gateway(reader)
        admin = gateway.admin
        assert admin is not None and admin.metrics_address is not None
        url = "http://{}:{}/metrics".format(*admin.metrics_address)
        async with aiohttp.ClientSession() as session:
            # The handshake's abort and its count happen together; the scrape may come first.
            for _ in range(100):
                async with session.get(url) as response:
                    samples = parse(await response.text())
                if samples['gateway_limit_hits_total{limit="tls_handshake_timeout"}'] >= 1:
                    break
                await asyncio.sleep(0.05)
        assert samples['gateway_limit_hits_total{limit="connections_per_source"}'] == 1
        assert samples['gateway_sip_events_total{event="listener_not_allowed"}'] == 1
        assert samples['gateway_limit_hits_total{limit="tls_handshake_timeout"}'] == 1
        assert samples['gateway_limit_hits_total{limit="max_calls"}'] == 0
        assert samples['gateway_sip_events_total{event="limit_connections_per_source"}'] == 1
        refused = gateway.observatory.recent(rule="limit")
        assert [(e["source"], e["rule"]) for e in refused] == [
            (PHONE, "limit.connections-per-source")
        ]
    finally:
        for writer in writers:
            writer.close()
        await gateway.stop()
