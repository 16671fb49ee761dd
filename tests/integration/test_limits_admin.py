"""[limits] on the admin HTTP(S) listener and the control socket, on real sockets
(127.0.65.0/24): connections per source and in total refused at accept, a slow-loris and an
idle keep-alive connection cut, a TLS handshake never finished, headers and bodies too large,
a source over its request rate; a well-behaved client still gets /api/health throughout.

Every assertion is about an outcome (a connection closed by the server, an answer, a counter,
a security event), never about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import msgspec
import pytest

from gateway.admin.observe import Observatory
from gateway.admin.server import AdminServer
from gateway.config import AdminSettings, parse_config
from gateway.control import ControlServer
from gateway.limits import (
    ADMIN_CONNECTIONS_PER_SOURCE,
    ADMIN_CONNECTIONS_TOTAL,
    ADMIN_IDLE_TIMEOUT,
    ADMIN_MAX_BODY_BYTES,
    ADMIN_MAX_HEADER_BYTES,
    ADMIN_REQUEST_RATE,
    ADMIN_TLS_HANDSHAKE_TIMEOUT,
    CONTROL_CONNECTIONS,
    LimitCounters,
)
from gateway.limits_settings import LimitsSettings
from gateway.policy.events import SecurityEvent
from tests.admin_site import admin_site
from tests.pki import make_test_pki

LISTEN = "127.0.65.1"
#: Long enough that nothing in a test trips a timeout it does not mean to.
PATIENCE = 20.0


#: The gateway runs on uvloop, whose accept and TLS paths are its own: each test runs on both.
LOOPS = ["asyncio", "uvloop"]


def run(loop: str, main: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main)
    else:
        asyncio.run(main)


class _Quiet:
    """Just enough of a StatusView for the admin surface's own start (the media sampler)."""

    started_at = 0.0

    def on_media_closed(self, listener: object) -> None:
        return None

    def media_workers(self) -> list[int | None]:
        return []

    async def media_streams(self) -> Any:
        return SimpleNamespace(streams={}, error=None)


class Admin:
    def __init__(self, server: AdminServer, counters: LimitCounters) -> None:
        self.server = server
        self.counters = counters
        self.events: list[SecurityEvent] = []

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    @property
    def url(self) -> str:
        return f"{self.server.scheme}://{LISTEN}:{self.port}"

    def open_connections(self) -> int:
        return sum(listener.limiter.open_connections for listener in self.server._listeners)


@contextlib.asynccontextmanager
async def admin(tmp_path: Path, *, tls: bool = False, **limits: Any) -> AsyncIterator[Admin]:
    token_env = "GATEWAY_TEST_LIMITS_TOKEN_" + secrets.token_hex(4).upper()
    os.environ[token_env] = "Lim1ts-" + secrets.token_urlsafe(24)
    settings = AdminSettings(enabled=True, listen=f"{LISTEN}:0", token_env=token_env)
    if tls:
        pki = make_test_pki(tmp_path / "pki", server_ips=(LISTEN,))
        settings = msgspec.structs.replace(
            settings, tls_certificate=str(pki.server.cert), tls_private_key=str(pki.server.key)
        )
    counters = LimitCounters()
    quiet = cast(Any, _Quiet())
    holder: list[Admin] = []
    server = AdminServer(
        settings,
        status=quiet,
        operations=quiet,
        observatory=Observatory(),
        limits=LimitsSettings(**limits),
        limit_counters=counters,
        on_security=lambda event: holder[0].events.append(event),
    )
    site = Admin(server, counters)
    holder.append(site)
    await server.start()
    try:
        yield site
    finally:
        await server.stop()
        os.environ.pop(token_env, None)


async def wait_for(condition: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def connect(site: Admin, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LISTEN, site.port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed (or reset) the connection, reading whatever came before."""
    try:
        async with asyncio.timeout(PATIENCE):
            while await reader.read(65536):
                pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


async def health_from(site: Admin, source: str, *, context: ssl.SSLContext | None = None) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=context or False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(site.url + "/api/health") as answer,
    ):
        return answer.status


async def raw_request(site: Admin, source: str, request: bytes) -> bytes:
    reader, writer = await connect(site, source)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(PATIENCE):
            return await reader.read()
    finally:
        writer.close()


# --------------------------------------------------------------------------- connections


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_over_the_per_source_and_total_limits_are_closed_at_accept(
    loop: str, tmp_path: Path
) -> None:
    run(loop, _connections_over_the_per_source_and_total_limits_are_closed_at_accept(tmp_path))


async def _connections_over_the_per_source_and_total_limits_are_closed_at_accept(
    tmp_path: Path,
) -> None:
    async with admin(tmp_path, admin_connections_per_source=2, admin_connections_total=4) as site:
        held = []
        for _ in range(2):
            held.append(await connect(site, "127.0.65.2"))
        assert await wait_for(lambda: site.open_connections() == 2)
        # A third from the same source: closed before a byte is read.
        reader, writer = await connect(site, "127.0.65.2")
        assert await closed_by_server(reader)
        writer.close()
        assert site.counters[ADMIN_CONNECTIONS_PER_SOURCE] == 1
        # More refusals from the noisy source: counted each, reported once.
        for _ in range(3):
            reader, writer = await connect(site, "127.0.65.2")
            assert await closed_by_server(reader)
            writer.close()
        assert site.counters[ADMIN_CONNECTIONS_PER_SOURCE] == 4
        [event] = site.events
        assert (event.rule, event.source, event.side) == (
            "limit.connections-per-source",
            "127.0.65.2",
            "admin",
        )
        # Other sources fill the listener; past its total anyone is refused.
        held.append(await connect(site, "127.0.65.3"))
        held.append(await connect(site, "127.0.65.4"))
        assert await wait_for(lambda: site.open_connections() == 4)
        reader, writer = await connect(site, "127.0.65.5")
        assert await closed_by_server(reader)
        writer.close()
        assert site.counters[ADMIN_CONNECTIONS_TOTAL] == 1
        assert len(site.events) == 1  # a full listener says nothing about a source
        # Places are given back when connections end: a well-behaved client gets in.
        for _, w in held:
            w.close()
        assert await wait_for(lambda: site.open_connections() == 0)
        assert await health_from(site, "127.0.65.6") == 200


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_loris_and_an_idle_keep_alive_connection_are_cut(loop: str, tmp_path: Path) -> None:
    run(loop, _a_slow_loris_and_an_idle_keep_alive_connection_are_cut(tmp_path))


async def _a_slow_loris_and_an_idle_keep_alive_connection_are_cut(tmp_path: Path) -> None:
    async with admin(tmp_path, idle_timeout=0.5) as site:
        # Headers that never finish, a byte at a time: cut although bytes keep coming.
        reader, writer = await connect(site, "127.0.65.7")
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: gw\r\n")

        async def drip() -> None:
            with contextlib.suppress(OSError):
                while True:
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        assert await closed_by_server(reader)
        dripping.cancel()
        writer.close()
        assert site.counters[ADMIN_IDLE_TIMEOUT] == 1
        # A complete request is answered; the connection left idle afterwards is cut.
        reader, writer = await connect(site, "127.0.65.8")
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: gw\r\n\r\n")
        async with asyncio.timeout(PATIENCE):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader)
        writer.close()
        assert site.counters[ADMIN_IDLE_TIMEOUT] == 2
        assert await wait_for(lambda: site.open_connections() == 0)
        assert await health_from(site, "127.0.65.9") == 200


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_handshake_never_finished_is_cut_and_its_place_given_back(
    loop: str, tmp_path: Path
) -> None:
    run(loop, _a_tls_handshake_never_finished_is_cut_and_its_place_given_back(tmp_path))


async def _a_tls_handshake_never_finished_is_cut_and_its_place_given_back(tmp_path: Path) -> None:
    async with admin(tmp_path, tls=True, tls_handshake_timeout=0.5) as site:
        assert site.server.scheme == "https"
        reader, writer = await connect(site, "127.0.65.10")
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        assert await closed_by_server(reader)
        writer.close()
        assert site.counters[ADMIN_TLS_HANDSHAKE_TIMEOUT] == 1
        assert await wait_for(lambda: site.open_connections() == 0)
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        assert await health_from(site, "127.0.65.11", context=context) == 200


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("loop", LOOPS)
def test_headers_and_bodies_over_their_limits_are_refused(loop: str, tmp_path: Path) -> None:
    run(loop, _headers_and_bodies_over_their_limits_are_refused(tmp_path))


async def _headers_and_bodies_over_their_limits_are_refused(tmp_path: Path) -> None:
    async with admin(tmp_path, admin_max_header_bytes=1024, admin_max_body_bytes=1024) as site:
        big = b"GET /api/health HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n"
        answer = await raw_request(site, "127.0.65.12", big)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert site.counters[ADMIN_MAX_HEADER_BYTES] == 1
        body = (
            b"POST /api/spike-lock/lift HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n"
            + b"x" * 5000
        )
        answer = await raw_request(site, "127.0.65.12", body)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert site.counters[ADMIN_MAX_BODY_BYTES] == 1
        # Within the limits the same requests are served (the lift needs the token: 401).
        small = b"GET /api/health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        assert (await raw_request(site, "127.0.65.12", small)).startswith(b"HTTP/1.1 200 ")
        assert site.counters[ADMIN_MAX_HEADER_BYTES] == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_a_source_over_its_request_rate_gets_429_and_others_are_served(
    loop: str, tmp_path: Path
) -> None:
    run(loop, _a_source_over_its_request_rate_gets_429_and_others_are_served(tmp_path))


async def _a_source_over_its_request_rate_gets_429_and_others_are_served(tmp_path: Path) -> None:
    async with admin(tmp_path, admin_requests_per_second=0.5) as site:
        connector = aiohttp.TCPConnector(local_addr=("127.0.65.13", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses = []
            for _ in range(6):
                async with session.get(site.url + "/api/health") as answer:
                    statuses.append(answer.status)
                    if answer.status == 429:
                        assert answer.headers["Retry-After"] == "1"
        assert statuses[0] == 200 and 429 in statuses
        assert site.counters[ADMIN_REQUEST_RATE] == statuses.count(429)
        reports = [e for e in site.events if e.rule == "limit.admin-request-rate"]
        assert [(e.source, e.status) for e in reports] == [("127.0.65.13", 429)]
        assert await health_from(site, "127.0.65.14") == 200


# --------------------------------------------------------------------------- control socket


@pytest.mark.parametrize("loop", LOOPS)
def test_the_control_socket_admits_its_total_and_closes_the_rest(loop: str, tmp_path: Path) -> None:
    run(loop, _the_control_socket_admits_its_total_and_closes_the_rest(tmp_path))


async def _the_control_socket_admits_its_total_and_closes_the_rest(tmp_path: Path) -> None:
    config = parse_config(
        "[control]\nsocket = 'run/control.sock'\n[limits]\ncontrol_connections = 2\n",
        base_dir=str(tmp_path),
    )
    counters = LimitCounters()
    quiet = cast(Any, _Quiet())
    server = ControlServer(config, status=quiet, operations=quiet, limit_counters=counters)
    await server.start()
    try:
        assert server.path is not None
        held = [await asyncio.open_unix_connection(str(server.path)) for _ in range(2)]
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        assert await closed_by_server(reader)
        writer.close()
        assert counters[CONTROL_CONNECTIONS] == 1
        for _, w in held:
            w.close()
        # Places come back as connections end: a client gets its answer again.
        request = b"GET /ready HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"

        async def answered() -> bytes:
            r, w = await asyncio.open_unix_connection(str(server.path))
            try:
                w.write(request)
                async with asyncio.timeout(PATIENCE):
                    return await r.read()
            except (ConnectionResetError, BrokenPipeError):
                return b""  # refused: its place was not given back yet
            finally:
                w.close()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        answer = await answered()
        while not answer.startswith(b"HTTP/1.1 ") and loop.time() < deadline:
            await asyncio.sleep(0.02)
            answer = await answered()
        assert answer.startswith(b"HTTP/1.1 ")
        assert counters[CONTROL_CONNECTIONS] >= 1
    finally:
        await server.stop()


# --------------------------------------------------------------------------- the whole gateway


async def test_the_running_gateway_counts_admin_refusals_on_metrics(tmp_path: Path) -> None:
    extra = {
        "admin": {"listen": f"{LISTEN}:0", "metrics_listen": f"{LISTEN}:0"},
        "limits": {"admin_connections_per_source": 1, "admin_connections_total": 2},
    }
    async with admin_site(tmp_path, extra=extra) as gw:
        admin_port = gw.gateway.admin.address[1]
        held = await asyncio.open_connection(LISTEN, admin_port, local_addr=("127.0.65.20", 0))
        # Accepted in order: the held connection has the source's one place.
        reader, writer = await asyncio.open_connection(
            LISTEN, admin_port, local_addr=("127.0.65.20", 0)
        )
        assert await closed_by_server(reader)
        writer.close()
        held[1].close()
        async with aiohttp.ClientSession() as session, session.get(gw.metrics_url) as answer:
            text = await answer.text()
        assert 'gateway_limit_hits_total{limit="admin_connections_per_source"} 1' in text
        assert 'gateway_limit_hits_total{limit="admin_request_rate"} 0' in text
        assert 'gateway_limit_hits_total{limit="control_connections"} 0' in text
