"""What the active's CallWriter (gateway/ha/replica.py) keeps of the changes it collects.

A call the core reports gone that never reached Redis (it was still ringing, or was set up and
ended within one round) leaves nothing to delete: no HDEL, no message for the standby. A call
that was written, or whose bytes still wait to go, is deleted as before.
"""

from __future__ import annotations

from typing import Any, cast

from gateway.ha.replica import CallWriter
from gateway.state.redis_store import RedisLink


def _writer(changes: dict[str, bytes | None]) -> CallWriter:
    def collect() -> dict[str, bytes | None]:
        taken = dict(changes)
        changes.clear()
        return taken

    def newer(_node: str, _epoch: int) -> None:
        raise AssertionError("no marker is read here")

    link = cast(RedisLink, cast(Any, object()))  # take() never touches Redis
    return CallWriter(
        link, node="a", epoch=1, since=0.0, interval=0.2, collect=collect, newer=newer
    )


def test_a_call_gone_before_it_was_ever_written_is_not_deleted() -> None:
    changes: dict[str, bytes | None] = {"ringing": None, "answered": b"record"}
    writer = _writer(changes)
    writer.take()
    assert writer._pending == {"answered": b"record"}
    assert writer.lag(1e12) > 0  # the answered call waits to go
    changes["brief"] = None  # set up and ended within one round
    writer.take()
    assert writer._pending == {"answered": b"record"}


def test_a_written_or_waiting_call_that_ends_is_deleted() -> None:
    changes: dict[str, bytes | None] = {}
    writer = _writer(changes)
    writer.held.add("written")  # in Redis since an earlier round
    changes.update({"written": None})
    writer.take()
    assert writer._pending == {"written": None}
    changes["waiting"] = b"record"
    writer.take()
    changes["waiting"] = None  # ended before its bytes went: the delete replaces them
    writer.take()
    assert writer._pending == {"written": None, "waiting": None}


def test_a_replicated_call_not_taken_over_still_leaves_the_replica() -> None:
    writer = _writer({})
    writer.note_gone("left-over")
    writer.take()
    assert writer._pending == {"left-over": None}
