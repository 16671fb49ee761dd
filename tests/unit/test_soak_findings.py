"""What bench/soak.py found missing from the call records, each fixed and pinned here.

- A cancelled call stays filed until the phone ACKs the 487; its record must still be written
  once the core lets it go, even when no other call event follows (a quiet gateway, the end of
  a run), or it is lost at shutdown.
- A call refused with 503 while the provider link is down (a reconnect) had no record at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.cdr import CallRecorder, RecordFile
from gateway.sip.call_events import CallCancelled, CallFailed, CallRefused, CallStarted
from gateway.sip.message import SipResponse
from tests.unit.test_b2bua import Harness, only, phone_request, phone_sdp


def _started(pair: str, call_id: str) -> CallStarted:
    return CallStarted(call_id, pair, "INVITE", "lan", "2000", "300", "wan-" + call_id)


def test_cancelled_call_is_recorded_when_the_core_lets_it_go_later(tmp_path: Path) -> None:
    recorder = CallRecorder(RecordFile(tmp_path / "calls.jsonl"))
    recorder.on_event(_started("c1", "a"), 1.0)
    recorder.on_event(CallCancelled("a", "c1", "lan"), 2.0)
    recorder.settle(lambda: ["c1"], 2.0)  # the 487 is not ACKed yet
    assert recorder.written == 0
    recorder.settle(lambda: [], 2.1)  # ACKed: no event of its own comes with that
    assert recorder.written == 1
    (line,) = (tmp_path / "calls.jsonl").read_text().splitlines()
    assert json.loads(line)["outcome"] == "cancelled"
    recorder.settle(lambda: [], 2.2)
    assert recorder.written == 1  # exactly once


def test_a_call_still_up_is_not_finished_by_another_calls_end(tmp_path: Path) -> None:
    recorder = CallRecorder(RecordFile(tmp_path / "calls.jsonl"))
    recorder.on_event(_started("c1", "a"), 1.0)
    recorder.on_event(_started("c2", "b"), 1.0)
    recorder.on_event(CallFailed("b", "c2", 486), 2.0)
    recorder.settle(lambda: ["c1", "c2"], 2.0)
    recorder.settle(lambda: ["c1"], 2.1)
    assert recorder.written == 1
    assert recorder.pending == 1
    recorder.settle(lambda: ["c1"], 2.2)
    assert recorder.pending == 1


def test_a_call_refused_while_the_provider_is_down_is_a_refused_call_event() -> None:
    h = Harness()
    h.core.wan_connection_state(False, "connection lost: closed by peer", 0.0, h.wall)
    h.collect()
    invite = phone_request("INVITE", body=phone_sdp())
    h.from_phone(invite)
    assert [m.status for m in only(h.take_lan(), SipResponse) if m.status >= 200] == [503]
    [refused] = [e for e in h.events if isinstance(e, CallRefused)]
    assert refused.status == 503 and refused.rule == "provider.unavailable"
    assert "closed by peer" in refused.reason
    recorder = CallRecorder(None)
    written: list[dict[str, object]] = []
    recorder.record_listeners.append(written.append)
    recorder.on_event(refused, 1.0)
    assert [(r["call_id"], r["outcome"], r["status"]) for r in written] == [
        (refused.call_id, "refused", 503)
    ]
