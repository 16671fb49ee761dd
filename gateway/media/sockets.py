"""The media workers' UDP sockets: bound, non-blocking, DSCP-marked (RFC 3246 EF), large
buffers."""

from __future__ import annotations

import contextlib
import socket

from gateway.transport import freebind

__all__ = ["SOCKET_BUFFER", "media_socket"]

#: Socket buffers: a few hundred milliseconds of many streams (the kernel caps at rmem_max).
SOCKET_BUFFER = 1 << 20


def media_socket(address: str, port: int, dscp: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``address:port``, marked with ``dscp``.

    Raises OSError (e.g. EADDRINUSE) when the bind fails.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        tos = dscp << 2  # DSCP sits in the upper six bits of the TOS / traffic class byte
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # a smaller buffer is not worth failing a call
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if freebind.media_enabled():  # an HA pair: the address may arrive a moment later
            freebind.allow_nonlocal(sock)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock
