"""Bench-only wrapper of ``gateway run``: the CPU the active's replication itself spends.

Used by bench/failover.py's replication cost (issue 14), never by a deployment::

    python bench/ha_cost_probe.py OUT.json run --config gateway.toml ...

Before handing over to ``gateway.cli.main`` it wraps, in this process only, the pieces of the
active's replication and adds up the thread CPU time (``time.thread_time``) each spends:

- ``collect``: ``CallWriter.take``, i.e. the glue's ``_collect_calls`` (changed calls taken
  from the core, exported, checkpoints compared) with ``encode`` inside it,
- ``encode``: ``gateway.state.calls.encode_call`` (msgpack and the sealing), with ``seal``
  (``Sealer.seal``, AES-256-GCM) inside it,
- ``flush``: ``CallWriter.flush`` (the Redis pipeline built, sent, its reply read; the
  coroutine's own steps only, not the time it waits) and ``marker`` (``_check_marker``).

It also counts what was written: rounds, calls HSET, keys HDEL'd (and of those, keys that had
never been written). On SIGUSR1 it writes the totals to OUT.json (atomically, with a running
``n``), so the bench reads them before and after the rounds it measures (with
``HA_COST_PROFILE=FILE`` in its environment it also runs cProfile over those rounds). The
wrapping costs a few ``thread_time`` calls per round and per call: microseconds against
milliseconds a call.
"""

from __future__ import annotations

import cProfile
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway.state.calls as calls_module
from gateway.ha.replica import CallWriter
from gateway.state.seal import Sealer

TOTALS: dict[str, float] = {
    "collect_s": 0.0,
    "encode_s": 0.0,
    "seal_s": 0.0,
    "flush_s": 0.0,
    "marker_s": 0.0,
    "rounds": 0,
    "flushes": 0,
    "encoded": 0,
    "written": 0,
    "deleted": 0,
    "deleted_never_written": 0,
}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[name] += time.thread_time() - start

    return wrapper


class _Steps:
    """Drives a coroutine and adds the CPU of each of its steps (not the waits between)."""

    def __init__(self, name: str, coro: Any) -> None:
        self.name = name
        self.coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        value: Any = None
        error: BaseException | None = None
        while True:
            start = time.thread_time()
            try:
                step = self.coro.send(value) if error is None else self.coro.throw(error)
            except StopIteration as done:
                return done.value
            finally:
                TOTALS[self.name] += time.thread_time() - start
            try:
                value, error = (yield step), None
            except BaseException as exc:  # a cancellation goes on into the coroutine
                value, error = None, exc


def _stepped(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await _Steps(name, fn(*args, **kwargs))

    return wrapper


def install() -> None:
    encode = _timed("encode_s", calls_module.encode_call)

    def counted_encode(*args: Any, **kwargs: Any) -> Any:
        TOTALS["encoded"] += 1
        return encode(*args, **kwargs)

    calls_module.encode_call = counted_encode  # the glue imports it at each round
    Sealer.seal = _timed("seal_s", Sealer.seal)  # type: ignore[method-assign]
    CallWriter.take = _timed("collect_s", CallWriter.take)  # type: ignore[method-assign]
    CallWriter._check_marker = _stepped(  # type: ignore[method-assign,assignment]
        "marker_s", CallWriter._check_marker
    )
    flush = _stepped("flush_s", CallWriter.flush)

    async def counted_flush(self: CallWriter) -> None:
        batch = dict(self._pending)
        held = set(self.held)
        await flush(self)
        TOTALS["flushes"] += 1
        TOTALS["written"] += sum(1 for v in batch.values() if v is not None)
        gone = [k for k, v in batch.items() if v is None]
        TOTALS["deleted"] += len(gone)
        TOTALS["deleted_never_written"] += sum(1 for k in gone if k not in held)

    CallWriter.flush = counted_flush  # type: ignore[method-assign]
    take = CallWriter.take

    def counted_take(self: CallWriter) -> None:
        TOTALS["rounds"] += 1
        take(self)

    CallWriter.take = counted_take  # type: ignore[method-assign]


def main() -> int:
    out = Path(sys.argv[1])
    written = 0

    # HA_COST_PROFILE=FILE: cProfile of the whole process between the first SIGUSR1 and the
    # next (the measured rounds), its stats written to FILE (slows the process: a separate run).
    profile_to = os.environ.get("HA_COST_PROFILE")
    profiler = cProfile.Profile() if profile_to else None

    def dump(_signo: int, _frame: Any) -> None:
        nonlocal written
        written += 1
        if profiler is not None and profile_to:
            if written == 1:
                profiler.enable()
            else:
                profiler.disable()
                profiler.dump_stats(profile_to)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"n": written, **TOTALS}))
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, dump)
    install()
    from gateway.cli import main as gateway_main

    sys.argv = ["gateway", *sys.argv[2:]]
    return gateway_main()


if __name__ == "__main__":
    raise SystemExit(main())
