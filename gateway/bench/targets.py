"""The systems a benchmark run measures, behind one small interface.

- :class:`DirectTarget`: no relay at all; phone and provider ends talk to each other (the
  floor: what the generator and the loopback cost by themselves).
- :class:`WorkersTarget`: the gateway's own media workers, driven through
  :class:`~gateway.media.controller.MediaController` and control messages, without SIP: what
  ``gateway bench`` sweeps on an operator's box.
- :class:`SipGatewayTarget` (in :mod:`gateway.bench.sip`): the whole gateway, calls set up
  with SIP INVITEs from phones over UDP and a provider over TLS answering with SDES.

Each target opens ``n`` calls and returns the :class:`~gateway.bench.loadgen.CallLeg` list the
generator needs, and names the processes whose CPU and memory are reported. The media path is
pinned to ``media_cpu``; everything else (signalling, the generator) to the other core.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from gateway.bench.loadgen import (
    HIGH_PRIORITY_NICE,
    PHONE_ADDRESS,
    PROVIDER_ADDRESS,
    CallLeg,
    raise_autogroup,
)
from gateway.config import MediaSettings
from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.controller import MediaController
from gateway.media.suites import SrtpSuite

__all__ = [
    "DEFAULT_KEEP_CORE_AWAKE",
    "GATEWAY_LAN_ADDRESS",
    "GATEWAY_WAN_ADDRESS",
    "DirectTarget",
    "Target",
    "WorkersTarget",
    "children",
    "pin",
]

#: The gateway's own default (``media.keep_core_awake``), so a benchmark measures what runs.
DEFAULT_KEEP_CORE_AWAKE = MediaSettings().keep_core_awake

# Addresses of their own (not the lab's .10/.20/.21/.30), so a benchmark never collides with
# interop tests or a demo running on the same host.
GATEWAY_LAN_ADDRESS = "127.0.0.120"
GATEWAY_WAN_ADDRESS = "127.0.0.121"


class Target(Protocol):
    """One system under test."""

    name: str
    #: True when the generator must do the relay's crypto itself (no relay in the path).
    direct: bool

    async def start(self) -> None: ...

    async def open_calls(self, n: int) -> list[CallLeg]: ...

    async def close_calls(self) -> None: ...

    async def stop(self) -> None: ...

    def watched(self) -> dict[str, int]:
        """Label → PID of the processes whose CPU and memory are reported."""
        ...


def pin(pid: int, cpu: int | None, *, realtime: bool = False, fifo: int = 0) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (no-op for None or a single-core host).

    ``realtime`` also gives every thread nice -20 (root only; ignored otherwise), which keeps
    other programs on a shared host from taking the media path's core. ``fifo`` > 0 puts every
    thread under SCHED_FIFO at that priority (for a relay without a setting of its own; the
    gateway sets its packet loop's priority itself, from ``media.realtime_priority``).
    """
    if realtime:
        raise_autogroup(pid)
    if cpu is None or cpu >= (os.cpu_count() or 1):
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
            if realtime:
                os.setpriority(os.PRIO_PROCESS, tid, HIGH_PRIORITY_NICE)
            if fifo:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(fifo))
        except OSError:
            continue  # a thread that just ended, or no right to real-time priority


def children(pid: int) -> list[int]:
    """Direct child PIDs of ``pid`` (from /proc/PID/task/*/children)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            found.extend(int(x) for x in text.split())
    except OSError:
        pass
    return found


def new_key(suite: SrtpSuite) -> bytes:
    """A fresh master key and salt for ``suite``."""
    return secrets.token_bytes(suite.master_length)


class DirectTarget:
    """No relay: the floor. The generator's ends send straight to each other."""

    name = "direct"
    direct = True

    def __init__(self, suite: SrtpSuite, phone_port: int, provider_port: int) -> None:
        self._suite = suite
        self._phone = (PHONE_ADDRESS, phone_port)
        self._provider = (PROVIDER_ADDRESS, provider_port)

    async def start(self) -> None:
        return None

    async def open_calls(self, n: int) -> list[CallLeg]:
        return [
            CallLeg(self._provider, self._phone, new_key(self._suite), new_key(self._suite))
            for _ in range(n)
        ]

    async def close_calls(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def watched(self) -> dict[str, int]:
        return {}


class WorkersTarget:
    """The gateway's media worker, driven by the MediaController with control messages."""

    name = "gateway"
    direct = False

    def __init__(
        self,
        suite: SrtpSuite,
        phone_port: int,
        provider_port: int,
        *,
        media_cpu: int | None = 0,
        realtime: bool = True,
        first_port: int = 20000,
        keep_core_awake: bool = DEFAULT_KEEP_CORE_AWAKE,
        realtime_priority: int = 0,
    ) -> None:
        self._suite = suite
        self._phone = (PHONE_ADDRESS, phone_port)
        self._provider = (PROVIDER_ADDRESS, provider_port)
        self._media_cpu = media_cpu
        self._realtime = realtime
        self._first_port = first_port
        self._controller = MediaController(
            lan_address=GATEWAY_LAN_ADDRESS,
            wan_address=GATEWAY_WAN_ADDRESS,
            workers=1,
            inactivity_timeout=3600.0,
            keep_core_awake=keep_core_awake,
            realtime_priority=realtime_priority,
        )
        self._open: list[str] = []
        self._round = 0

    async def start(self) -> None:
        await self._controller.start()
        await self._controller.wait_running()
        pid = self._worker_pid()
        pin(pid, self._media_cpu, realtime=self._realtime)

    def _worker_pid(self) -> int:
        pids = self._controller.worker_pids()
        if not pids or pids[0] is None:
            raise RuntimeError("the media worker is not running")
        return pids[0]

    async def open_calls(self, n: int) -> list[CallLeg]:
        self._round += 1
        legs: list[CallLeg] = []
        for i in range(n):
            # RTP on even ports, RTCP on the next; UDP ports can be reused as soon as the
            # previous round closed them (the generator drains before it exits).
            port = self._first_port + 2 * i
            gateway_tx, gateway_rx = new_key(self._suite), new_key(self._suite)
            call_id = f"bench-{self._round}-{i}"
            spec = StreamSpec(
                lan_port=port,
                wan_port=port,
                phone_addr=self._phone,
                provider_addr=self._provider,
                wan_tx=SrtpKeying(self._suite.value, gateway_tx),
                wan_rx=SrtpKeying(self._suite.value, gateway_rx),
            )
            await self._controller.open_stream(call_id, 0, spec)
            self._open.append(call_id)
            legs.append(
                CallLeg(
                    (GATEWAY_LAN_ADDRESS, port),
                    (GATEWAY_WAN_ADDRESS, port),
                    provider_tx=gateway_rx,
                    provider_rx=gateway_tx,
                )
            )
        return legs

    async def close_calls(self) -> None:
        for call_id in self._open:
            await self._controller.close_call(call_id)
        self._open.clear()
        # A stats round trip: once answered, every CloseCall before it has been handled.
        await self._controller.stats()

    async def stop(self) -> None:
        await self._controller.stop()

    def watched(self) -> dict[str, int]:
        return {"media worker": self._worker_pid()}
