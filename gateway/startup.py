"""``gateway run``'s guard: a gateway whose start fails ends, non-zero, with the reason.

A start can fail after it started things: media workers (processes), the Redis link and its
background tasks, the admin listener. Left to ``asyncio.run`` alone, the process ends only
once every task has obeyed its cancellation, and a task that swallows one (a client library
that catches ``CancelledError`` inside a ``while True``) keeps a failed gateway alive for
ever, holding its ports and its pid file, with systemd waiting on it. So: what started is
stopped (each step bounded), every other task is cancelled and given a moment, and if one is
still running the process ends at once with status 1 (nothing of it touches the network any
more: its listeners never opened, or were closed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

__all__ = ["StartFailed", "run_guarded"]

log = logging.getLogger("gateway")

#: Seconds each clean-up step of a failed start may take.
STEP_TIMEOUT = 6.0
#: Seconds the remaining tasks get to obey their cancellation.
CANCEL_TIMEOUT = 2.0
#: Exit status when a task would not end (the CLI's EXIT_FAILED).
EXIT_FAILED = 1


class StartFailed(Exception):
    """The gateway did not start; ``str()`` says why."""


def _started(gateway: Any) -> bool:
    # The control socket is the last surface start() opens.
    return getattr(gateway, "control", None) is not None


async def run_guarded(gateway: Any, drain: float) -> None:
    """``gateway.run_forever(drain)``; a failed start raises :class:`StartFailed` after the
    clean-up (or ends the process when a task will not stop)."""
    try:
        await gateway.run_forever(drain=drain)
    except Exception as exc:
        if _started(gateway):
            raise
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
        log.critical("cannot start: %s; stopping what started", reason)
        await _abandon(gateway, reason)
        raise StartFailed(reason) from exc


async def _abandon(gateway: Any, reason: str) -> None:
    steps = [("media workers", getattr(gateway, "media", None))]
    steps += [(name, getattr(gateway, name, None)) for name in ("admin", "redis")]
    for name, part in steps:
        if part is None:
            continue
        try:
            await asyncio.wait_for(part.stop(), STEP_TIMEOUT)
        except Exception as exc:  # the next step still runs; the exit still comes
            log.error("cannot start: stopping the %s failed: %s", name, exc)
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in others:
        task.cancel()
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=CANCEL_TIMEOUT)
    if pending:
        names = ", ".join(sorted(t.get_name() for t in pending))
        log.critical("cannot start: task(s) %s ignore cancellation; exiting now", names)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            print(f"error: cannot start: {reason}", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILED)
