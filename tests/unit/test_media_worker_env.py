"""A media worker starts with an allowlist of the signalling process's environment: the
secrets that share that environment (admin token, state key, trunk passwords) stay out of the
process that parses hostile packets all day."""

from __future__ import annotations

from gateway.media.controller import worker_environment


def test_secrets_stay_out_of_a_media_workers_environment() -> None:
    parent = {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/src",
        "LC_ALL": "C.UTF-8",
        "GATEWAY_MEDIA_FASTPATH": "0",
        "GATEWAY_ADMIN_TOKEN": "admin-secret",
        "GATEWAY_STATE_KEY": "00" * 32,
        "GATEWAY_STATE_KEY_OLD": "11" * 32,
        "TRUNK_PASSWORD": "trunk-secret",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
    }
    env = worker_environment(parent)
    assert env == {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/src",
        "LC_ALL": "C.UTF-8",
        "GATEWAY_MEDIA_FASTPATH": "0",
    }
    assert not any("secret" in value for value in env.values())
