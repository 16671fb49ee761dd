"""``gateway status`` names a media worker that restarted or failed (issue 14, crash recovery)."""

from __future__ import annotations

from gateway.control import format_status


def _media_line(states: list[dict[str, object]]) -> str:
    text = format_status({"media": {"workers": 2, "workers_up": 1, "worker_states": states}})
    (line,) = [row for row in text.splitlines() if row.strip().startswith("media")]
    return line


def test_quiet_workers_add_nothing_restarted_and_failed_are_named() -> None:
    running = {"slot": 0, "state": "running", "restarts": 0, "last_restored": None}
    assert "worker" not in _media_line([running]).split("up", 1)[1]
    restarted = {"slot": 0, "state": "running", "restarts": 1, "last_restored": 2, "last_lost": 0}
    failed = {
        "slot": 1,
        "state": "failed",
        "restarts": 2,
        "last_restored": 0,
        "last_lost": 3,
        "failed": "died 3 times within 60 s; not restarted",
    }
    line = _media_line([restarted, failed])
    assert "worker 0 RUNNING, 1 restart(s), last: 2 call(s) restored, 0 lost" in line
    assert "worker 1 FAILED, 2 restart(s), last: 0 call(s) restored, 3 lost" in line
    assert "not restarted" in line
