"""The media controller's stream records, looked up per call (issue 14).

The active gateway of a pair asks ``stream_records(call)`` for every held call about once a
second (its replication); a call's close, checkpoint or restore looks its own streams up too.
Those look-ups must cost the streams of that call, not a walk over every call's records: the
records here refuse to be walked, and 2,000 other calls sit beside the one asked about.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from gateway.media.control import StreamSpec
from gateway.media.controller import MediaController, _Record


class _NoWalk(dict[str, Any]):
    """A mapping that fails any walk over all of its entries."""

    def _walked(self, *args: object) -> NoReturn:
        raise AssertionError("every call's records were walked")

    __iter__ = keys = items = values = _walked


def _spec(port: int) -> StreamSpec:
    return StreamSpec(lan_port=port, wan_port=port + 1000)


def test_one_calls_records_are_found_and_forgotten_without_walking_the_others() -> None:
    controller = MediaController(lan_address="127.0.68.1", wan_address="127.0.68.2", workers=1)
    records = _NoWalk()
    for n in range(2000):
        records[f"c{n}"] = {0: _Record(_spec(40000 + 2 * (n % 500)))}
    records["c5"][1] = _Record(_spec(42000))
    controller._records = records
    assert [(i, s.lan_port) for i, s, _cp in controller.stream_records("c5")] == [
        (0, 40010),
        (1, 42000),
    ]
    assert controller.stream_records("unknown") == []
    assert controller.checkpoint("c5", 1) is None
    # No worker runs here: the close forgets the call's records (its worker "is gone").
    asyncio.run(controller.close_call("c5"))
    assert controller.stream_records("c5") == []
    assert dict.__len__(records) == 1999
