"""SIP over a stream: framing glue, keep-alive pongs, and the stall guard (RFC 3261 §18.3,
RFC 5626 §4.4.1), on a real loopback TCP connection."""

from __future__ import annotations

import asyncio

from gateway.sip.errors import SipParseError
from gateway.sip.message import SipRequest, SipResponse
from gateway.transport.stream import SipStreamConnection

INVITE = (
    b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKstream1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n"
    b"Call-ID: stream-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


async def _server(idle_timeout: float) -> tuple[asyncio.Server, list[object], asyncio.Queue[str]]:
    received: list[object] = []
    closed: asyncio.Queue[str] = asyncio.Queue()

    def on_message(_: SipStreamConnection, message: SipRequest | SipResponse) -> None:
        received.append(message)

    def on_error(_: SipStreamConnection, error: SipParseError) -> None:
        received.append(error)

    def on_close(_: SipStreamConnection, reason: str) -> None:
        closed.put_nowait(reason)

    server = await asyncio.get_running_loop().create_server(
        lambda: SipStreamConnection(
            on_message=on_message, on_error=on_error, on_close=on_close, idle_timeout=idle_timeout
        ),
        "127.0.0.1",
        0,
    )
    return server, received, closed


async def test_a_client_that_stalls_mid_message_is_cut_off() -> None:
    server, received, closed = await _server(idle_timeout=0.2)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(INVITE[:40])  # half a request line and no more
    await writer.drain()
    reason = await asyncio.wait_for(closed.get(), 5)
    assert reason == "incomplete message stalled"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the gateway closed it
    assert received == []
    writer.close()
    server.close()


async def test_whole_messages_pass_and_a_keepalive_ping_gets_a_pong() -> None:
    server, received, closed = await _server(idle_timeout=0.2)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(INVITE + b"\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    [message] = received
    assert isinstance(message, SipRequest) and message.call_id == "stream-1"
    # Nothing half-sent is buffered, so an idle but complete connection stays open.
    await asyncio.sleep(0.4)
    assert closed.empty()
    writer.close()
    server.close()


async def test_lost_framing_closes_the_connection_after_reporting_it() -> None:
    server, received, closed = await _server(idle_timeout=5)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(INVITE.replace(b"Content-Length: 0", b"Content-Length: -5"))
    await writer.drain()
    reason = await asyncio.wait_for(closed.get(), 5)
    assert reason.startswith("framing lost")
    assert len(received) == 1 and isinstance(received[0], SipParseError)
    writer.close()
    server.close()
