"""A pair's gateway binds the site's addresses before keepalived adds them (IP_FREEBIND).

The check runs in a network namespace of its own (``unshare -rn``: a user namespace makes the
test root there, nothing outside changes), whose loopback is up but holds only 127.0.68.201,
the far end's address. The site's address 127.0.68.200 is on no interface: a plain bind there
fails (EADDRNOTAVAIL), while the gateway's own code binds it at once when marked for an HA
pair: the LAN SIP UDP endpoint (``open_udp``), a stream listener (``StreamListener``) and a
media worker's stream socket (``media_socket`` with the worker's environment); the provider
link's connection from that address (``freebind.connect``) is started and waits. The address
is then added, as keepalived does on promotion: the provider link connects from it, and a SIP
datagram, a TCP connection with a SIP message and a media datagram each reach their socket. Waits are socket timeouts and the
event loop's own, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = "127.0.68.200"
FAR = "127.0.68.201"
TIMEOUT = 5.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


async def _in_namespace() -> dict[str, object]:
    """The scenario, run as root of a fresh network namespace; returns what it saw."""
    from gateway.limits import ConnectionLimiter, LimitCounters
    from gateway.media.sockets import media_socket
    from gateway.sip.message import SipRequest
    from gateway.transport import freebind
    from gateway.transport.listener import StreamListener
    from gateway.transport.stream import SipStreamConnection
    from gateway.transport.udp import open_udp

    _ip("link", "set", "lo", "up")
    _ip("addr", "del", "127.0.0.1/8", "dev", "lo")
    _ip("addr", "add", f"{FAR}/32", "dev", "lo")
    seen: dict[str, object] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        try:
            plain.bind((SITE, 0))
            seen["plain_bind"] = "bound"
        except OSError as exc:
            seen["plain_bind"] = exc.errno

    loop = asyncio.get_running_loop()
    datagrams: asyncio.Queue[bytes] = asyncio.Queue()
    messages: asyncio.Queue[SipRequest] = asyncio.Queue()
    token = freebind.enabled.set(True)
    try:
        udp = await open_udp(SITE, 0, lambda data, _addr: datagrams.put_nowait(data), 65535)
        counters = LimitCounters()
        limiter = ConnectionLimiter("test", "lan", per_source=4, total=4, counters=counters)

        def factory() -> SipStreamConnection:
            return SipStreamConnection(
                on_message=lambda _, m: messages.put_nowait(m),  # type: ignore[arg-type]
                on_error=lambda _c, _e: None,
                on_close=lambda _c, _r: None,
            )

        listener = StreamListener(limiter, factory, counters)
        await listener.start(SITE, 0)
    finally:
        freebind.enabled.reset(token)
    os.environ[freebind.MEDIA_ENV] = "1"
    media = media_socket(SITE, 0, 46)
    provider = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    provider.bind((FAR, 0))
    provider.listen()
    linking = asyncio.ensure_future(freebind.connect(SITE, FAR, provider.getsockname()[1]))
    await asyncio.sleep(0)  # let it start: it waits for the address
    seen["link_before"] = linking.done()
    seen["bound"] = [
        udp.transport.get_extra_info("sockname")[0] if udp.transport else None,
        listener.address[0],
        media.getsockname()[0],
    ]

    _ip("addr", "add", f"{SITE}/32", "dev", "lo")  # keepalived's part
    link = await asyncio.wait_for(linking, TIMEOUT)
    seen["link"] = link.getsockname()[0]
    link.close()
    provider.close()
    request = (
        f"OPTIONS sip:{SITE} SIP/2.0\r\nVia: SIP/2.0/TCP {FAR}:5060;branch=z9hG4bKfree\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@{FAR}>;tag=1\r\nTo: <sip:b@{SITE}>\r\n"
        "Call-ID: freebind\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far:
        far.bind((FAR, 0))
        far.sendto(b"sip datagram", udp.transport.get_extra_info("sockname"))  # type: ignore[union-attr]
        seen["udp"] = (await asyncio.wait_for(datagrams.get(), TIMEOUT)).decode()
        far.sendto(b"rtp", media.getsockname())
        media.settimeout(TIMEOUT)
        seen["media"] = (await loop.run_in_executor(None, media.recv, 64)).decode()
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(SITE, listener.address[1], local_addr=(FAR, 0)), TIMEOUT
    )
    writer.write(request)
    await writer.drain()
    seen["tcp"] = (await asyncio.wait_for(messages.get(), TIMEOUT)).method
    writer.close()
    listener.close()
    media.close()
    if udp.transport is not None:
        udp.transport.close()
    return seen


def _namespaces_allowed() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_allowed(), reason="no user/network namespaces here")
def test_a_pairs_sockets_bind_the_site_address_before_it_is_here_and_then_carry_traffic() -> None:
    code = (
        "import asyncio, json; from tests.integration.test_ha_freebind import _in_namespace; "
        "print(json.dumps(asyncio.run(_in_namespace())))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_MEDIA_")}
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain_bind"] == errno.EADDRNOTAVAIL  # the address really is not here yet
    assert seen["bound"] == [SITE, SITE, SITE]
    assert seen["link_before"] is False and seen["link"] == SITE
    assert seen["udp"] == "sip datagram"
    assert seen["media"] == "rtp"
    assert seen["tcp"] == "OPTIONS"
