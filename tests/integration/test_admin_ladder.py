"""The SIP ladder through the admin API: ``GET /api/calls/{ref}/ladder`` and ``GET /api/ladders``.

The admin application is the real one (``build_app``), served by aiohttp's test server on
127.0.1.1; the status view is a stand-in whose ladder is a real ``CallLadder`` fed with the
golden call of tests/ladder_call.py (digest response, nonce and SDES keys included), so the test
proves what an operator can read and that no secret fed in comes out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.observe import Observatory
from gateway.admin.openapi import openapi_document
from gateway.admin.server import build_app
from gateway.ladder import CallLadder
from gateway.sip.call_events import CallStarted
from tests.ladder_call import (
    LAN,
    LAN_CALL_ID,
    PAIR,
    SECRETS,
    WAN_CALL_ID,
    LadderStatusView,
    NoOperations,
    feed_call,
)

TOKEN = "Ladder-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "127.0.1.1"


@pytest.fixture
def ladder() -> CallLadder:
    fed = CallLadder()
    feed_call(fed, start=100.0)
    return fed


@pytest.fixture
async def client(ladder: CallLadder) -> AsyncIterator[TestClient]:
    status = LadderStatusView(ladder, clock=lambda: 200.0)
    app = build_app(status, NoOperations(), Observatory(), TOKEN)
    async with TestClient(TestServer(app, host=HOST)) as test_client:
        yield test_client


async def test_a_calls_ladder_by_key_or_either_call_id(client: TestClient) -> None:
    answer = await client.get(f"/api/calls/{PAIR}/ladder", headers=AUTH)
    assert answer.status == 200
    text = await answer.text()
    body = await answer.json()
    assert body["pair"] == PAIR
    assert body["call_ids"] == {"lan": LAN_CALL_ID, "wan": WAN_CALL_ID}
    assert body["direction"] == "outbound" and body["outcome"] == "ended"
    assert (body["caller"], body["callee"]) == ("100", "200")
    messages = body["messages"]
    assert body["kept"] == len(messages) == 19 and body["dropped"] == 0
    times = [m["time_unix"] for m in messages]
    assert times == sorted(times)
    first = messages[0]
    assert (first["side"], first["direction"], first["peer"], first["transport"]) == (
        "lan",
        "in",
        "127.0.1.10:5062",
        "udp",
    )
    assert first["first_line"] == "INVITE sip:200@127.0.1.20 SIP/2.0"
    assert {"name": "Call-ID", "value": LAN_CALL_ID} in first["headers"]
    assert first["time"].endswith("+00:00")
    relayed = messages[2]
    assert (relayed["side"], relayed["direction"], relayed["call_id"]) == (
        "wan",
        "out",
        WAN_CALL_ID,
    )
    assert "inline:[redacted]|2^31" in relayed["text"]
    # Redacted where a secret was, and no secret anywhere in what went out.
    assert any('response="[redacted]"' in m["text"] for m in messages)
    for secret in SECRETS:
        assert secret not in text

    for ref in (LAN_CALL_ID, WAN_CALL_ID):
        again = await client.get(f"/api/calls/{quote(ref, safe='')}/ladder", headers=AUTH)
        assert again.status == 200 and (await again.json())["pair"] == PAIR


async def test_unknown_call_unauthorised_reader_and_odd_call_ids(
    client: TestClient,
    ladder: CallLadder,
) -> None:
    answer = await client.get("/api/calls/no-such-call/ladder", headers=AUTH)
    assert answer.status == 404 and "no-such-call" in (await answer.json())["error"]
    answer = await client.get(f"/api/calls/{PAIR}/ladder")
    assert answer.status == 401 and "INVITE" not in await answer.text()
    # A Call-ID may hold "/" and "@" (RFC 3261 §25.1 word): percent-encoded, it is found.
    odd = "x/y@host"
    invite = f"INVITE sip:a SIP/2.0\r\nCall-ID: {odd}\r\nCSeq: 1 INVITE\r\n\r\n"
    ladder.received(LAN, invite.encode(), 300.0)
    ladder.event(CallStarted(odd, "p-odd", "INVITE", "lan", None, None, "wan-odd"))
    answer = await client.get(f"/api/calls/{quote(odd, safe='')}/ladder", headers=AUTH)
    assert answer.status == 200 and (await answer.json())["pair"] == "p-odd"


async def test_kept_calls_listed_and_on_the_status_answer(client: TestClient) -> None:
    listed = await (await client.get("/api/ladders", headers=AUTH)).json()
    (call,) = listed["calls"]
    assert call["pair"] == PAIR and call["messages"] == 19 and "text" not in str(call)
    status = await (await client.get("/api/status", headers=AUTH)).json()
    assert [c["pair"] for c in status["ladders"]] == [PAIR]


def test_openapi_describes_the_ladder_routes() -> None:
    paths = openapi_document()["paths"]
    ladder = paths["/api/calls/{ref}/ladder"]["get"]
    assert ladder["parameters"][0]["name"] == "ref" and "404" in ladder["responses"]
    assert "get" in paths["/api/ladders"]
