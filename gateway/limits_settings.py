"""The ``[limits]`` table (docs/robustness.md "Limits") and its cross-field checks.

Kept beside ``gateway/config.py`` as ``[ha]`` is: the limits of every listener (SIP, admin,
control socket) and of the core, each with a safe default and a range ``check-config`` names.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "LimitsSettings", "check_limits"]


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits a review should not have to find (docs/robustness.md "Limits"): each is hit only
    under abuse or a fault at a small site, and each hit is counted (``limit_*`` on /metrics)."""

    #: Open connections from one address on each stream listener (LAN TCP, WAN TLS); more
    #: are closed at accept, before any TLS work.
    connections_per_source: int = 16
    #: Open connections on each stream listener, whoever opens them.
    connections_total: int = 1024
    #: Seconds a client of the WAN TLS listener has to finish its handshake.
    tls_handshake_timeout: float = 5.0
    #: Seconds an accepted connection may stay open without carrying a SIP message, and a
    #: message may stay incomplete on any stream connection.
    idle_timeout: float = 30.0
    #: Largest SIP message (start line, headers, body) on any transport, in bytes.
    max_message_bytes: int = 65535
    #: Largest start line and header section, in bytes.
    max_header_bytes: int = 16384
    #: Most header fields in one SIP message.
    max_headers: int = 256
    #: Most calls (INVITE dialog pairs) at once; new ones get 503 with Retry-After.
    #: Emergency calls are admitted whatever the count.
    max_calls: int = 10000
    #: Most other dialog pairs (SUBSCRIBE, REFER) at once; new ones get 503 with Retry-After.
    max_dialogs: int = 10000
    #: Most registration bindings at once; new ones get 503, refreshes always pass.
    max_registrations: int = 10000
    #: The admin HTTP(S) listener (and the metrics one, each its own count): open connections
    #: from one address and in all; more are closed at accept, before any TLS work. Its TLS
    #: handshake is bounded by tls_handshake_timeout, the wait for a request's headers (idle
    #: keep-alive, slow-loris) by idle_timeout.
    admin_connections_per_source: int = 16
    admin_connections_total: int = 64
    #: Largest request line and headers (bytes) on the admin listener: larger gets 431.
    admin_max_header_bytes: int = 16384
    #: Largest request body (bytes) on the admin listener: larger gets 413.
    admin_max_body_bytes: int = 65536
    #: Requests a second from one address on the admin listener (bursts of twice that);
    #: more get 429 with Retry-After.
    admin_requests_per_second: float = 20.0
    #: Open connections on the control socket (local and group-checked): more are closed.
    control_connections: int = 16


DEFAULT_MAX_MESSAGE_BYTES = LimitsSettings().max_message_bytes


def check_limits(config: Any) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    limits = config.limits
    for field, value, low, high in (
        ("connections_per_source", limits.connections_per_source, 1, 100_000),
        ("connections_total", limits.connections_total, 1, 1_000_000),
        ("max_message_bytes", limits.max_message_bytes, 1024, 1_048_576),
        ("max_header_bytes", limits.max_header_bytes, 1024, 1_048_576),
        ("max_headers", limits.max_headers, 16, 10_000),
        ("max_calls", limits.max_calls, 1, 1_000_000),
        ("max_dialogs", limits.max_dialogs, 1, 1_000_000),
        ("max_registrations", limits.max_registrations, 1, 1_000_000),
        ("admin_connections_per_source", limits.admin_connections_per_source, 1, 10_000),
        ("admin_connections_total", limits.admin_connections_total, 1, 100_000),
        ("admin_max_header_bytes", limits.admin_max_header_bytes, 1024, 1_048_576),
        ("admin_max_body_bytes", limits.admin_max_body_bytes, 1024, 67_108_864),
        ("control_connections", limits.control_connections, 1, 10_000),
    ):
        if not low <= value <= high:
            where = f"limits.{field}"
            if field == "max_message_bytes" and config.sip.max_message_bytes == value:
                where = "sip.max_message_bytes"  # the deprecated spelling the file used
            problems.append((where, f"expected {low}..{high}, got {value}"))
    if limits.connections_total < limits.connections_per_source:
        problems.append(
            (
                "limits.connections_total",
                f"expected at least connections_per_source ({limits.connections_per_source}),"
                f" got {limits.connections_total}",
            )
        )
    if limits.admin_connections_total < limits.admin_connections_per_source:
        problems.append(
            (
                "limits.admin_connections_total",
                "expected at least admin_connections_per_source "
                f"({limits.admin_connections_per_source}), got {limits.admin_connections_total}",
            )
        )
    if not 0 < limits.admin_requests_per_second <= 100_000:
        problems.append(
            (
                "limits.admin_requests_per_second",
                f"expected 0 < rate <= 100000, got {limits.admin_requests_per_second}",
            )
        )
    for field, seconds in (
        ("tls_handshake_timeout", limits.tls_handshake_timeout),
        ("idle_timeout", limits.idle_timeout),
    ):
        if not 0 < seconds <= 3600:
            problems.append(
                (f"limits.{field}", f"expected seconds, 0 < seconds <= 3600, got {seconds}")
            )
    old = config.sip.max_message_bytes
    if old is not None and old != limits.max_message_bytes:
        problems.append(
            (
                "sip.max_message_bytes",
                f"deprecated, and [limits] max_message_bytes says {limits.max_message_bytes}:"
                " keep only [limits] max_message_bytes",
            )
        )
    return problems
