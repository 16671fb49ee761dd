"""Log set-up: JSON lines for machines, and the call-event line the gateway writes per event."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.logsetup import JsonLineFormatter, configure_logging
from gateway.sip.call_events import CallAnswered, CallRefused
from tests.unit.test_operations import CONFIG


def _record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_event_lines_pass_through_and_other_lines_are_wrapped() -> None:
    formatter = JsonLineFormatter()
    event = '{"event":"answered","call_id":"x"}'
    assert formatter.format(_record("gateway.events", event)) == event
    wrapped = json.loads(formatter.format(_record("gateway", "gateway started", logging.WARNING)))
    assert wrapped["logger"] == "gateway" and wrapped["message"] == "gateway started"
    assert wrapped["level"] == "warning"
    # A message that merely looks like JSON from another logger is still wrapped.
    assert json.loads(formatter.format(_record("gateway.admin", "{x")))["message"] == "{x"


def test_configure_logging_installs_one_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", "json")
        configure_logging("warning", "json")
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, JsonLineFormatter)
        configure_logging("debug", "text")
        assert not isinstance(root.handlers[0].formatter, JsonLineFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_each_call_event_is_one_json_line_with_its_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = Gateway(parse_config(CONFIG, base_dir=str(tmp_path)), workers=1)
    with caplog.at_level(logging.INFO, logger="gateway.events"):
        gw._record(CallAnswered("abc@phone", "c1", "AEAD_AES_128_GCM", False, "sdes"))
        gw._record(CallRefused("x@phone", "no international", 403, rule="dialplan.intl"))
    answered, refused = (r for r in caplog.records if r.name == "gateway.events")
    line = json.loads(answered.getMessage())
    assert {k: v for k, v in line.items() if k != "time"} == {
        "event": "answered",
        "call_id": "abc@phone",
        "pair": "c1",
        "suite": "AEAD_AES_128_GCM",
        "plaintext_downgrade": False,
        "keying": "sdes",
    }
    assert answered.levelno == logging.INFO and refused.levelno == logging.WARNING
    assert json.loads(refused.getMessage())["rule"] == "dialplan.intl"
    # The same event reached the operator's counters and the recent-events window.
    assert gw.observatory.calls_answered == 1
    assert gw.observatory.call_refusals == {"dialplan.intl": 1}
    assert [e.kind for e in gw.console.recent_call_events()] == ["answered", "refused"]


def test_a_logged_exception_keeps_its_traceback_in_the_json_line() -> None:
    formatter = JsonLineFormatter()
    try:
        raise ValueError("broken header")
    except ValueError:
        record = logging.getLogger("gateway").makeRecord(
            "gateway", logging.ERROR, __file__, 1, "handling failed", (), sys.exc_info()
        )
    line = json.loads(formatter.format(record))
    assert line["message"] == "handling failed"
    assert "ValueError: broken header" in line["traceback"]
    assert "Traceback (most recent call last)" in line["traceback"]
