"""Binding the site's addresses before they are on this box: IP_FREEBIND (issue 14).

keepalived adds the site's addresses to the box it makes master as it runs the notify
script, so a promoted gateway may bind its SIP listeners, media ports and provider link a
moment before the addresses are there. Linux's IP_FREEBIND (``ip(7)``; IPV6_FREEBIND for
IPv6, ``ipv6(7)``, Linux 4.15) lets one socket bind a non-local address: the bind succeeds at
once and traffic flows as soon as the address arrives, with no wait and no system-wide
``ip_nonlocal_bind``. Only the provider link's connection waits for its source address
(:func:`connect`): the kernel routes nothing from an address that is not here.

Only a gateway of an HA pair asks for it: a single box binding an address that is on no
interface is a configuration mistake it must report at start. The signalling process marks
the code that opens its sockets with :data:`enabled` (a context variable, so only the
promotion's sockets and the tasks it starts, such as the provider link, are affected); the
media workers are told by :data:`MEDIA_ENV` in their environment. The option changes where a
socket may bind, never where traffic goes: nothing here opens a path to the WAN.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from contextvars import ContextVar

__all__ = [
    "MEDIA_ENV",
    "allow_nonlocal",
    "bound_socket",
    "connect",
    "enabled",
    "is_local",
    "media_enabled",
]

#: Set (True) around the opening of a promoted gateway's sockets.
enabled: ContextVar[bool] = ContextVar("gateway_freebind", default=False)
#: "1" in a media worker's environment: its stream sockets bind with IP_FREEBIND.
MEDIA_ENV = "GATEWAY_MEDIA_FREEBIND"

#: <linux/in.h> and <linux/in6.h>; Python names only the first (3.12 and later).
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78
#: Seconds the provider link's connect waits for its source address (keepalived adds it).
ADDRESS_WAIT = 5.0


def is_local(address: str) -> bool:
    """Whether ``address`` is on one of this box's interfaces (a plain bind succeeds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def media_enabled() -> bool:
    """Whether this media worker was started for an HA pair."""
    return os.environ.get(MEDIA_ENV) == "1"


def allow_nonlocal(sock: socket.socket) -> None:
    """Let ``sock`` bind an address that is not (yet) on any interface."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


def bound_socket(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A non-blocking socket of ``kind`` bound to ``address:port`` with IP_FREEBIND."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        allow_nonlocal(sock)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(local: str, host: str, port: int, wait: float = ADDRESS_WAIT) -> socket.socket:
    """A TCP connection to ``host:port`` from ``local`` (the provider link of a promoted
    gateway). A connection needs its source address to be here (the kernel refuses to route
    from one that is not, and no answer could reach it): the one place that waits for it,
    ``wait`` seconds at most, while listeners and media sockets are already bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not is_local(local) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    sock = bound_socket(local, 0, socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock
