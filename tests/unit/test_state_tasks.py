"""Background tasks of the Redis side stop even when one swallows a cancellation (Python 3.11's
asyncio.timeout can lose a cancel that lands as the timeout fires: a gateway's stop then hung)."""

from __future__ import annotations

import asyncio

from gateway.state.tasks import stop_tasks


async def test_a_task_that_swallows_the_first_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a timeout that fired at the same moment would

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_tasks([task], "stubborn") is True
    assert swallowed == 1 and task.cancelled()


async def test_a_task_that_never_stops_is_left_and_named(caplog) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(deaf())
    await asyncio.sleep(0)
    assert await stop_tasks([task], "the deaf task", rounds=2) is False
    assert "the deaf task did not stop" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
