"""Stopping the Redis side's background tasks for sure.

On Python 3.11 a cancellation that lands while a task sits in ``asyncio.timeout`` or
``asyncio.wait_for`` can be swallowed when the timeout fires at the same moment (CPython
gh-86296, fixed in 3.12); redis-py's pub/sub read and our own waits are such places. A plain
``task.cancel(); await task`` then waits for ever and a gateway's stop hangs. The loops also
check a stop flag, and the cancel is repeated a few times with a bound on each wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("gateway.state")


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], what: str, *, rounds: int = 5) -> bool:
    """Cancel ``tasks`` and wait up to a second per round until each is done; True when all
    stopped (an error says which did not, and the caller goes on without them)."""
    pending = [task for task in tasks if not task.done()]
    for _ in range(rounds):
        if not pending:
            return True
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)
        pending = [task for task in pending if not task.done()]
    if pending:
        log.error("%s did not stop; going on without it", what)
        return False
    return True
