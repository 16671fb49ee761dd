"""gateway.service: sd_notify messages, the socket address, the watchdog's interval, and
that systemd's variables never reach the media workers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.service import ServiceNotifier, notify_message, socket_address, watchdog_interval


def test_message_is_key_value_lines_in_order() -> None:
    assert notify_message(READY=1, STATUS="LAN 192.0.2.1:5060") == (
        b"READY=1\nSTATUS=LAN 192.0.2.1:5060"
    )
    assert notify_message(WATCHDOG=1) == b"WATCHDOG=1"


def test_a_newline_in_a_value_cannot_add_an_assignment() -> None:
    assert notify_message(STATUS="bad\nREADY=1") == b"STATUS=bad READY=1"


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123"),
        ("", None),
        (None, None),
        ("relative/notify", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str | None, address: str | bytes | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process(
    env: dict[str, str], interval: float | None
) -> None:
    assert watchdog_interval(env, 42) == interval


def test_from_environment_takes_the_variables_away_from_children() -> None:
    env = {
        "NOTIFY_SOCKET": "@notify",
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": "7",
        "PATH": "/usr/bin",
    }
    notifier = ServiceNotifier.from_environment(env, pid=7)
    assert notifier.enabled and notifier.address == b"\0notify"
    assert notifier.watchdog_seconds == 0.5
    assert env == {"PATH": "/usr/bin"}


def test_without_a_manager_everything_is_a_no_op() -> None:
    notifier = ServiceNotifier.from_environment({}, pid=1)
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert not notifier.ready("ready")
    assert not notifier.stopping("stopping")
    asyncio.run(asyncio.wait_for(notifier.watchdog(), 1.0))  # returns at once
    assert not notifier.sent
