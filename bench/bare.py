"""The kernel's floor for a relay: ``bare_relay.c`` as a benchmark target.

A C program that only receives each datagram and sends it on unchanged (one epoll, one
recvfrom, one sendto per packet; the generator does the SRTP itself, as in the direct mode).
Its CPU per packet is what the socket API costs on this host before a relay does any work of
its own, so ``capacity(relay) / capacity(bare)`` says how much room a relay has left.
Run with ``python -m bench.harness --modes direct,bare,gateway,rtpengine``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from gateway.bench.build import build_dir, is_private_executable
from gateway.bench.loadgen import (
    PHONE_ADDRESS,
    PHONE_MEDIA_PORT,
    PROVIDER_ADDRESS,
    PROVIDER_MEDIA_PORT,
    CallLeg,
)
from gateway.bench.targets import new_key, pin
from gateway.media.suites import SrtpSuite

__all__ = ["BareRelayTarget"]

LAN_ADDRESS = "127.0.0.150"
WAN_ADDRESS = "127.0.0.151"
FIRST_PORT = 20000
SOURCE = Path(__file__).with_name("bare_relay.c")


def build() -> Path:
    """Compile ``bare_relay.c`` once per source version; returns the executable."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no C compiler (gcc) on this host")
    text = SOURCE.read_bytes()
    # The generator's private cache, never a fixed /tmp path another user could plant in.
    folder = build_dir()
    exe = folder / f"bare-relay-{hashlib.sha256(text).hexdigest()}"
    if not is_private_executable(exe):
        partial = folder / f".{exe.name}.{os.getpid()}.tmp"
        done = subprocess.run(
            [gcc, "-O2", "-o", str(partial), str(SOURCE)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"building bare_relay failed:\n{done.stderr.strip()}")
        partial.replace(exe)
    return exe


class BareRelayTarget:
    """A fresh ``bare_relay`` per level, with one socket pair per call."""

    name = "bare"
    #: The generator does the relay's SRTP itself and sends through the relay's sockets.
    direct = True
    forwards = True

    def __init__(
        self, suite: SrtpSuite, *, media_cpu: int | None = 0, realtime_priority: int = 0
    ) -> None:
        self._suite = suite
        self._media_cpu = media_cpu
        self._fifo = realtime_priority
        self._exe: Path | None = None
        self._process: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        self._exe = build()

    async def open_calls(self, n: int) -> list[CallLeg]:
        assert self._exe is not None
        self._process = subprocess.Popen(
            [
                str(self._exe),
                LAN_ADDRESS,
                WAN_ADDRESS,
                str(FIRST_PORT),
                str(n),
                PHONE_ADDRESS,
                str(PHONE_MEDIA_PORT),
                PROVIDER_ADDRESS,
                str(PROVIDER_MEDIA_PORT),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # blocks until bound, or EOF when it failed
        if line.strip() != "ready":
            errors = self._process.stderr.read() if self._process.stderr else ""
            raise RuntimeError(f"bare_relay did not start: {errors}")
        pin(self._process.pid, self._media_cpu, realtime=True, fifo=self._fifo)
        return [
            CallLeg(
                (LAN_ADDRESS, FIRST_PORT + i),
                (WAN_ADDRESS, FIRST_PORT + i),
                new_key(self._suite),
                new_key(self._suite),
            )
            for i in range(n)
        ]

    async def close_calls(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    async def stop(self) -> None:
        await self.close_calls()

    def watched(self) -> dict[str, int]:
        return {"bare relay": self._process.pid} if self._process else {}
