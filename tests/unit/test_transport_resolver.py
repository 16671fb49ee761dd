"""RFC 3263 §4 target selection for the provider, without a DNS server."""

from __future__ import annotations

import asyncio
import random
import socket
import threading

import pytest

from gateway.transport import resolver
from gateway.transport.resolver import Target, order_srv, resolve_provider


def test_srv_priority_first_then_weight() -> None:
    records = [
        (20, 0, 5061, "backup.example"),
        (10, 60, 5061, "a.example"),
        (10, 40, 5062, "b.example"),
    ]
    seen = {tuple(order_srv(records, random.Random(seed))) for seed in range(200)}
    # Priority 10 always comes before 20; within it both orders occur, weighted.
    assert all(order[-1] == ("backup.example", 5061) for order in seen)
    assert {order[0] for order in seen} == {("a.example", 5061), ("b.example", 5062)}


def test_zero_weights_still_return_every_target() -> None:
    records = [(0, 0, 5061, "x.example"), (0, 0, 5061, "y.example")]
    assert sorted(order_srv(records, random.Random(1))) == [
        ("x.example", 5061),
        ("y.example", 5061),
    ]


async def test_an_address_skips_dns_and_keeps_the_name_to_verify() -> None:
    assert await resolve_provider("127.0.0.1", None) == [Target("127.0.0.1", 5061, "127.0.0.1")]
    assert await resolve_provider("[::1]", 5071, "sip.provider.example") == [
        Target("::1", 5071, "sip.provider.example")
    ]


async def test_a_name_with_a_port_uses_the_system_resolver_only() -> None:
    # localhost comes from /etc/hosts; with an explicit port no NAPTR/SRV look-up is made.
    targets = await resolve_provider("localhost", 5063)
    assert targets and all(t.port == 5063 and t.server_name == "localhost" for t in targets)
    assert {t.address for t in targets} <= {"127.0.0.1", "::1"}


async def test_a_slow_name_server_does_not_stall_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Name look-ups run off the loop: while one waits, the rest of the gateway goes on (a
    blocking getaddrinfo once stalled all signalling behind a slow DNS server)."""
    release = threading.Event()

    def slow_getaddrinfo(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        release.wait(2.0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.5", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    lookup = asyncio.create_task(resolver._addresses("sip.slow.example"))
    await asyncio.sleep(0.05)  # the look-up has started and is waiting on the name server
    assert not lookup.done()  # ... and this coroutine ran meanwhile
    release.set()
    assert await lookup == ["192.0.2.5"]
