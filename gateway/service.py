"""The service manager's side of a running gateway: readiness and the watchdog (sd_notify).

systemd starts the gateway as ``Type=notify``: it waits for ``READY=1`` before it calls the
service started, and with ``WatchdogSec=`` it expects ``WATCHDOG=1`` at least that often, or
it kills and restarts the process. The protocol (sd_notify(3)) is a datagram of
newline-separated ``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). It is small enough to speak here rather
than add a dependency.

:func:`notify_message` and :func:`socket_address` are pure; :class:`ServiceNotifier` owns the
socket and never raises (the gateway must not fail because its manager went away: a failed
send is logged once). Without ``$NOTIFY_SOCKET`` (run by hand, in a container, in tests)
every method does nothing.

The watchdog pings come from a task on the signalling process's event loop
(:meth:`ServiceNotifier.watchdog`), every half of ``$WATCHDOG_USEC``: a loop that stalls stops
the pings and systemd restarts the process. Media workers are separate processes and are not
asked: their health is the media controller's job (it restarts a dead worker), and a packet
loop busy with a burst must not get the signalling process killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping

__all__ = [
    "ServiceNotifier",
    "notify_message",
    "socket_address",
    "watchdog_interval",
]

log = logging.getLogger("gateway.service")

#: Environment variables systemd sets for the main process only; dropped from our own
#: environment once read, so that the media workers (which inherit it) never talk to systemd.
_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify_message(**fields: str | int) -> bytes:
    """One sd_notify datagram: ``KEY=VALUE`` lines in the order given.

    Values are single lines (a newline would start a new, unintended assignment), so any
    newline in a value becomes a space.
    """
    lines = []
    for key, value in fields.items():
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


def socket_address(value: str | None) -> str | bytes | None:
    """The AF_UNIX address ``$NOTIFY_SOCKET`` names, or None when it names none we can use.

    ``@name`` is Linux's abstract namespace (a leading NUL byte); an absolute path is a
    socket file. Anything else (empty, relative, ``vsock:`` of a VM's manager) is not ours.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half the manager's timeout), or None when no watchdog is set.

    ``WATCHDOG_PID``, when present, must be this process: a child that inherited the
    variables must not feed its parent's watchdog.
    """
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        timeout = int(usec)
    except ValueError:
        return None
    if timeout <= 0:
        return None
    return timeout / 2 / 1_000_000


class ServiceNotifier:
    """Sends readiness, status, reload, stop and watchdog messages to the service manager."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        #: Where messages go; None: no manager listens, every method is a no-op.
        self.address = address
        #: Seconds between watchdog pings; None: no watchdog.
        self.watchdog_seconds = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False
        #: Messages sent, by their first assignment ("READY=1", "WATCHDOG=1" ...).
        self.sent: Counter[str] = Counter()

    @classmethod
    def from_environment(
        cls, env: MutableMapping[str, str] | None = None, *, pid: int | None = None
    ) -> ServiceNotifier:
        """The notifier systemd's variables describe; the variables are then removed from
        ``env`` (``os.environ`` by default) so child processes do not inherit them."""
        env = os.environ if env is None else env
        address = socket_address(env.get("NOTIFY_SOCKET"))
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        for name in _MANAGER_VARIABLES:
            env.pop(name, None)
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message; False (logged once) when it could not be sent."""
        if self.address is None:
            return False
        data = notify_message(**fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
        self.sent[data.split(b"\n", 1)[0].decode()] += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def reloading(self, status: str) -> bool:
        # MONOTONIC_USEC lets a manager that supports it (systemd 253+) match the reload's
        # end to its start; older ones ignore the line.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, STATUS=status, MONOTONIC_USEC=now_usec)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def ping(self) -> bool:
        return self.send(WATCHDOG=1)

    async def watchdog(self) -> None:
        """Ping every ``watchdog_seconds`` until cancelled; returns at once without one."""
        interval = self.watchdog_seconds
        if interval is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
