"""What the control commands print (gateway/control.py), from answers shaped as the control
socket gives them; where the socket is looked for; who may use it."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import parse_config
from gateway.control import (
    DEFAULT_SOCKET,
    duration,
    format_calls,
    format_registrations,
    format_reload,
    format_status,
    may_control,
    socket_paths,
)

STATUS = {
    "version": "1.2.0",
    "pid": 4242,
    "config": "/etc/sip-media-gateway/gateway.toml",
    "socket": DEFAULT_SOCKET,
    "event_loop": "uvloop",
    "uptime_seconds": 3725.4,
    "accepting_calls": True,
    "ready": {
        "ready": True,
        "checks": {"accepting_calls": True, "provider_connected": True},
    },
    "media": {
        "workers": 2,
        "workers_up": 2,
        "pids": [101, 102],
        "loop": "C fast path (libsrtp 2.5.0)",
        "packets_per_second": 512.0,
        "error": None,
    },
    "provider": {
        "up": True,
        "tls_version": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "peer_certificate_subject": "sip.provider.example",
        "trunks": [
            {"name": "main", "host": "203.0.113.5", "port": 5061, "up": True, "state": "connected"},
            {"name": "backup", "host": "backup.example", "port": None, "up": False,
             "state": "TLS handshake failed"},
        ],
    },
    "counts": {
        "calls": 3, "encrypted": 3, "registrations": 12, "registrations_active": 11, "bans": 2,
    },
    "spike_locked": False,
}  # fmt: skip


def _lines(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        found[name.strip()] = value.strip()
    return found


def test_status_names_every_part_of_the_gateway() -> None:
    lines = _lines(format_status(STATUS))
    assert lines["gateway"] == "1.2.0 (pid 4242), up 1:02:05, uvloop loop"
    assert lines["state"] == "ready"
    assert lines["media"] == (
        "2/2 workers up (101, 102), C fast path (libsrtp 2.5.0), 512.0 packets/s"
    )
    assert lines["trunk main"] == "up 203.0.113.5:5061: connected"
    assert lines["trunk backup"] == "DOWN backup.example:SRV: TLS handshake failed"
    assert lines["calls"] == "3 active, 3 with SRTP"
    assert lines["registrations"] == "12 (11 active)"
    assert lines["bans"] == "2 in force"
    assert lines["spike lock"] == "off"


def test_status_says_what_is_not_ready_draining_and_locked() -> None:
    broken = {
        **STATUS,
        "ready": {"ready": False, "checks": {"accepting_calls": True, "provider_connected": False}},
        "media": {**STATUS["media"], "workers_up": 1, "pids": [101, None]},  # type: ignore[dict-item]
        "spike_locked": True,
    }
    lines = _lines(format_status(broken))
    assert lines["state"] == "NOT READY: provider connected failing"
    assert lines["media"].startswith("1/2 workers up (101, down)")
    assert lines["spike lock"] == "ENGAGED: outbound calls refused (gateway spike-lock lift)"
    draining = _lines(format_status({**broken, "accepting_calls": False}))
    assert draining["state"] == "DRAINING (no new calls)"


def _call(**over: object) -> dict[str, object]:
    call: dict[str, object] = {
        "pair": "p1",
        "state": "confirmed",
        "caller": "100",
        "callee": "0049301234567",
        "duration": 75.2,
        "suite": "AEAD_AES_128_GCM",
        "encryption": "srtp",
        "media": {
            "phone_to_provider": {"packets_in": 3760, "packets_out": 3760, "lost": 0,
                                  "jitter_ms": 0.42},
            "provider_to_phone": {"packets_in": 3755, "packets_out": 3755, "lost": 3,
                                  "jitter_ms": 1.234},
        },
    }  # fmt: skip
    call.update(over)
    return call


def test_calls_table_has_suite_packets_loss_and_jitter_per_direction() -> None:
    text = format_calls([_call(), _call(pair="p2", state="calling", suite=None,
                                        encryption="pending", duration=0.0, media={})])  # fmt: skip
    header, first, second = text.splitlines()
    assert header.split()[:6] == ["REF", "STATE", "FROM", "TO", "DURATION", "SUITE"]
    assert "LOST up/down" in header and "JITTER ms up/down" in header
    assert first.split() == [
        "p1", "confirmed", "100", "0049301234567", "0:01:15", "AEAD_AES_128_GCM",
        "3760/3760", "3755/3755", "0/3", "0.4/1.2",
    ]  # fmt: skip
    # No answer yet: no suite, no media counters; the columns still line up.
    assert second.split() == ["p2", "calling", "100", "0049301234567", "0:00:00", "pending",
                              "-/-", "-/-", "-", "-"]  # fmt: skip
    assert first.index("AEAD") == second.index("pending")
    assert format_calls([]) == "no active calls"


def test_registrations_and_reload() -> None:
    text = format_registrations(
        [
            {
                "user": "201",
                "address": "192.0.2.21:5060",
                "transport": "udp",
                "active": True,
                "expires_in": 299.6,
                "user_agent": "Yealink SIP-T21P 52.84.0.15",
            },
        ]
    )
    assert text.splitlines()[1].split()[:5] == ["201", "192.0.2.21:5060", "udp", "yes", "300s"]
    assert format_registrations([]) == "no registrations"
    ok = {"valid": True, "applied": ["certificates"], "restart_needed": ["lan"], "problems": []}
    assert format_reload(ok).splitlines() == [
        "configuration is valid",
        "applied: certificates",
        "needs a restart to take effect: [lan]",
    ]
    bad = {"valid": False, "problems": ["/etc/g.toml:3: lan.sip_port: expected int"]}
    assert format_reload(bad).splitlines() == [
        "configuration not reloaded: nothing changed",
        "  /etc/g.toml:3: lan.sip_port: expected int",
    ]
    cert = {"valid": True, "applied": [], "certificate_error": "key does not match"}
    assert "certificates NOT reloaded (still in service): key does not match" in format_reload(cert)


def test_duration() -> None:
    assert duration(None) == "0:00:00"
    assert duration(59.9) == "0:00:59"
    assert duration(3600 * 26 + 61) == "1d 2:01:01"


def test_socket_paths_default_falls_back_to_the_state_folder_only(tmp_path: Path) -> None:
    # The system configuration (the unit's): /run, then the state folder if /run is not there.
    system = parse_config("", base_dir="/etc/sip-media-gateway")
    assert socket_paths(system) == [
        Path(DEFAULT_SOCKET),
        Path("/var/lib/sip-media-gateway/state/control.sock"),
    ]
    # Any other configuration (a lab, a bench, a second instance): its own state folder, so
    # two gateways on one box never contend for the /run socket.
    default = parse_config("[state]\ndirectory = 'st'\n", base_dir=str(tmp_path))
    assert socket_paths(default) == [tmp_path / "st" / "control.sock"]
    chosen = parse_config("[control]\nsocket = 'run/c.sock'\n", base_dir=str(tmp_path))
    assert socket_paths(chosen) == [tmp_path / "run" / "c.sock"]


def test_who_may_use_the_socket() -> None:
    me = os.geteuid()
    assert may_control(0, 0, 12345, own_uid=me)
    assert may_control(me, 999, 12345, own_uid=me)
    assert may_control(54321, 12345, 12345, own_uid=me)  # the socket's group, as primary
    assert not may_control(54321, 54321, 12345, own_uid=1)  # no such user, not the group
