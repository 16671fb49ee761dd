"""[limits] on real sockets: connections per source and in total refused at accept, a TLS
handshake that never comes, a connection that carries nothing (127.0.21.0/24).

Every assertion is about an outcome (a connection closed by the listener, a counter, a
security event), never about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.limits import (
    CONNECTIONS_PER_SOURCE,
    CONNECTIONS_TOTAL,
    IDLE_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
    ConnectionLimiter,
    LimitCounters,
)
from gateway.policy.events import SecurityEvent
from gateway.sip.errors import SipParseError
from gateway.sip.message import SipRequest, SipResponse
from gateway.transport.listener import StreamListener
from gateway.transport.stream import SipStreamConnection
from tests.pki import make_test_pki

LISTEN = "127.0.21.1"


#: The gateway runs on uvloop, whose accept and TLS paths are its own: each test runs on both.
LOOPS = ["asyncio", "uvloop"]


def run(loop: str, main: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main)
    else:
        asyncio.run(main)


OPTIONS = (
    b"OPTIONS sip:gw@127.0.21.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.21.2:5999;branch=z9hG4bKlimits1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.21.2>;tag=1\r\nTo: <sip:gw@127.0.21.1>\r\n"
    b"Call-ID: limits-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


@dataclass
class Server:
    listener: StreamListener
    counters: LimitCounters
    messages: asyncio.Queue[SipRequest | SipResponse] = field(default_factory=asyncio.Queue)
    closed: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    events: list[SecurityEvent] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.address[1]


@contextlib.asynccontextmanager
async def serve(
    *,
    per_source: int = 16,
    total: int = 1024,
    tls: ssl.SSLContext | None = None,
    idle_timeout: float = 30.0,
    handshake_timeout: float = 5.0,
    allow: Callable[[str], bool] | None = None,
    refused: list[str] | None = None,
) -> AsyncIterator[Server]:
    counters = LimitCounters()
    limiter = ConnectionLimiter(
        "test", "lan", per_source=per_source, total=total, counters=counters
    )
    server: Server

    def factory() -> SipStreamConnection:
        def on_error(_: SipStreamConnection, error: SipParseError) -> None:
            raise AssertionError(error)

        return SipStreamConnection(
            on_message=lambda _, m: server.messages.put_nowait(m),
            on_error=on_error,
            on_close=lambda _, reason: server.closed.put_nowait(reason),
            idle_timeout=idle_timeout,
            close_if_unused=True,
            on_limit=counters.hit,
        )

    listener = StreamListener(
        limiter,
        factory,
        counters,
        tls=tls,
        tls_handshake_timeout=handshake_timeout,
        on_security=lambda e: server.events.append(e),
        allow=allow,
        on_refused=None if refused is None else lambda: refused.append("refused"),
    )
    server = Server(listener, counters)
    await listener.start(LISTEN, 0)
    try:
        yield server
    finally:
        listener.close()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LISTEN, port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the listener has closed the connection (EOF or reset), never a timer."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def carries(server: Server, writer: asyncio.StreamWriter) -> bool:
    writer.write(OPTIONS)
    await writer.drain()
    message = await asyncio.wait_for(server.messages.get(), 10)
    return isinstance(message, SipRequest) and message.call_id == "limits-1"


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_over_the_per_source_limit_are_closed_at_accept(loop: str) -> None:
    run(loop, _connections_over_the_per_source_limit_are_closed_at_accept())


async def _connections_over_the_per_source_limit_are_closed_at_accept() -> None:
    async with serve(per_source=2) as server:
        first = await connect(server.port, "127.0.21.2")
        second = await connect(server.port, "127.0.21.2")
        assert await carries(server, first[1]) and await carries(server, second[1])
        refused = [await connect(server.port, "127.0.21.2") for _ in range(3)]
        for reader, _ in refused:
            assert await closed_by_server(reader)
        assert server.counters[CONNECTIONS_PER_SOURCE] == 3
        # One security line for the source, not one per refused connection.
        [event] = server.events
        assert (event.source, event.rule) == ("127.0.21.2", "limit.connections-per-source")
        # Another address still gets in, and so does this one once a connection ends.
        other = await connect(server.port, "127.0.21.3")
        assert await carries(server, other[1])
        first[1].close()
        assert await asyncio.wait_for(server.closed.get(), 10) == "closed by peer"
        again = await connect(server.port, "127.0.21.2")
        assert await carries(server, again[1])
        assert server.listener.limiter.open_from("127.0.21.2") == 2
        for _, writer in (second, other, again, *refused):
            writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_over_the_total_are_closed_at_accept(loop: str) -> None:
    run(loop, _connections_over_the_total_are_closed_at_accept())


async def _connections_over_the_total_are_closed_at_accept() -> None:
    async with serve(per_source=5, total=2) as server:
        kept = [await connect(server.port, f"127.0.21.{n}") for n in (4, 5)]
        for _, writer in kept:
            assert await carries(server, writer)
        reader, writer = await connect(server.port, "127.0.21.6")
        assert await closed_by_server(reader)
        assert server.counters[CONNECTIONS_TOTAL] == 1
        assert server.events == []  # a full listener says nothing about this source
        for _, w in (*kept, (reader, writer)):
            w.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_client_that_never_handshakes_is_cut_off_and_counted(
    loop: str, tmp_path: Path
) -> None:
    run(loop, _a_tls_client_that_never_handshakes_is_cut_off_and_counted(tmp_path))


async def _a_tls_client_that_never_handshakes_is_cut_off_and_counted(
    tmp_path: Path,
) -> None:
    pki = make_test_pki(tmp_path, server_ips=(LISTEN,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    async with serve(tls=context, handshake_timeout=0.3) as server:
        reader, writer = await connect(server.port, "127.0.21.7")  # TCP only: no ClientHello
        assert await closed_by_server(reader)
        assert await asyncio.wait_for(server.closed.get(), 10) == "TLS handshake timed out"
        assert server.counters[TLS_HANDSHAKE_TIMEOUT] == 1
        assert server.listener.limiter.open_connections == 0  # its place was given back
        writer.close()
        # A client that does finish its handshake is served as before.
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        _, tls_writer = await asyncio.open_connection(
            LISTEN, server.port, ssl=client, server_hostname=LISTEN, local_addr=("127.0.21.7", 0)
        )
        assert await carries(server, tls_writer)
        assert server.counters[TLS_HANDSHAKE_TIMEOUT] == 1
        tls_writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_that_carries_nothing_is_closed_and_counted(loop: str) -> None:
    run(loop, _a_connection_that_carries_nothing_is_closed_and_counted())


async def _a_connection_that_carries_nothing_is_closed_and_counted() -> None:
    async with serve(idle_timeout=0.3) as server:
        busy_reader, busy = await connect(server.port, "127.0.21.8")
        assert await carries(server, busy)
        idle_reader, idle = await connect(server.port, "127.0.21.9")
        assert await closed_by_server(idle_reader)
        assert await asyncio.wait_for(server.closed.get(), 10) == "no SIP message on the connection"
        assert server.counters[IDLE_TIMEOUT] == 1
        # The connection that carried a message was opened first and is still open.
        assert not busy_reader.at_eof()
        assert await carries(server, busy)
        assert server.listener.limiter.open_connections == 1
        busy.close()
        idle.close()


@pytest.mark.parametrize("nothing", [b"", b"\r\n\r\n"])
@pytest.mark.parametrize("loop", LOOPS)
def test_keepalives_alone_do_not_keep_a_connection(loop: str, nothing: bytes) -> None:
    run(loop, _keepalives_alone_do_not_keep_a_connection(nothing))


async def _keepalives_alone_do_not_keep_a_connection(nothing: bytes) -> None:
    async with serve(idle_timeout=0.3) as server:
        _, writer = await connect(server.port, "127.0.21.10")
        writer.write(nothing)
        await writer.drain()
        assert await asyncio.wait_for(server.closed.get(), 10) == "no SIP message on the connection"
        assert server.counters[IDLE_TIMEOUT] == 1
        writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_source_the_listener_does_not_serve_is_closed_before_its_tls_handshake(
    loop: str, tmp_path: Path
) -> None:
    run(loop, _a_source_the_listener_does_not_serve_is_closed_before_its_tls_handshake(tmp_path))


async def _a_source_the_listener_does_not_serve_is_closed_before_its_tls_handshake(
    tmp_path: Path,
) -> None:
    # The WAN listener serves the provider only: anyone else would cost a TLS handshake each
    # (the flood benchmark's handshake flood) if the check waited for the first SIP message.
    pki = make_test_pki(tmp_path, server_ips=(LISTEN,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    provider = "127.0.21.30"
    refused: list[str] = []
    async with serve(
        tls=context, allow=lambda source: source == provider, refused=refused
    ) as server:
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await asyncio.wait_for(
                asyncio.open_connection(
                    LISTEN,
                    server.port,
                    ssl=client,
                    server_hostname=LISTEN,
                    local_addr=("127.0.21.31", 0),
                ),
                10,
            )
        assert refused == ["refused"]
        assert server.listener.limiter.open_connections == 0  # never admitted
        _, tls_writer = await asyncio.open_connection(
            LISTEN, server.port, ssl=client, server_hostname=LISTEN, local_addr=(provider, 0)
        )
        assert await carries(server, tls_writer)
        assert refused == ["refused"]
        tls_writer.close()
