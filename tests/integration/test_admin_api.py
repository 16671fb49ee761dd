"""Admin API against the running gateway: aiohttp's test client and a real HTTP client.

One site (lab provider, gateway with its media worker, lab phone) per test, on loopback; a real
call runs while the API is asked about it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.openapi import openapi_document
from gateway.admin.server import AdminServer, AdminStartupError, build_app
from gateway.policy import PersistedBan
from tests.admin_site import PHONE, TOKEN, Site, admin_site, wait_for


async def _get(session: aiohttp.ClientSession, site: Site, path: str) -> Any:
    async with session.get(site.base_url + path, headers=site.auth) as answer:
        assert answer.status == 200, (path, answer.status, await answer.text())
        return await answer.json()


async def test_refused_without_token_and_with_a_wrong_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.admin")
    async with admin_site(tmp_path) as site, aiohttp.ClientSession() as session:
        for path in ("/api/calls", "/api/status", "/api/bans", "/api/cdr"):
            async with session.get(site.base_url + path) as answer:
                assert answer.status == 401
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert "calls" not in await answer.text()
            async with session.get(
                site.base_url + path, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}
            ) as answer:
                assert answer.status == 401
        async with session.delete(site.base_url + "/api/bans/192.0.2.1") as answer:
            assert answer.status == 401
        async with session.get(site.base_url + "/api/calls", headers=site.auth) as answer:
            assert answer.status == 200
        # The page and /metrics hold no data behind the token and need none.
        async with session.get(site.base_url + "/") as answer:
            assert answer.status == 200
            assert "Sign in" in await answer.text()
        async with session.get(site.base_url + "/metrics") as answer:
            assert answer.status == 200
        # Every API request is logged: who, what, the answer; never the token.
        lines = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.admin.access"
        ]
        refused = [line for line in lines if line["status"] == 401]
        assert len(refused) == 9
        assert {line["method"] for line in refused} == {"GET", "DELETE"}
        assert any(line["status"] == 200 and line["client"] == "token" for line in lines)
        assert TOKEN not in caplog.text
        # Guessing is throttled: after ten failures within a minute the source waits, even
        # with the right token (else the throttle would not stop a guess that hits).
        async with session.get(site.base_url + "/api/bans") as answer:
            assert answer.status == 401
        async with session.get(site.base_url + "/api/bans", headers=site.auth) as answer:
            assert answer.status == 429 and answer.headers["Retry-After"] == "60"
        # Liveness and readiness need no token and are never throttled (they say nothing).
        async with session.get(site.base_url + "/api/health") as answer:
            assert answer.status == 200 and await answer.json() == {"status": "ok"}


async def test_api_during_a_real_call(tmp_path: Path) -> None:
    async with admin_site(tmp_path) as site, aiohttp.ClientSession() as session:
        gw = site.gateway
        assert (await site.phone.register()).status == 200
        call = await site.phone.dial("200")
        assert call.status == 200
        player = asyncio.create_task(site.phone.play(2.0))
        try:
            await asyncio.sleep(1.2)
            calls = (await _get(session, site, "/api/calls"))["calls"]
            assert len(calls) == 1
            c = calls[0]
            assert c["call_id"] == call.call_id
            assert c["caller"] == "100" and c["callee"] == "200"
            assert c["direction"] == "outbound"
            assert c["phone"].startswith(PHONE + ":")
            assert c["state"] == "confirmed"
            assert c["encrypted"] is True and c["suite"] == "AES_CM_128_HMAC_SHA1_80"
            assert abs(c["started_unix"] - time.time()) < 10
            up, down = c["media"]["phone_to_provider"], c["media"]["provider_to_phone"]
            assert up["packets_in"] > 10 and up["packets_out"] > 10
            assert down["packets_in"] > 10 and down["packets_out"] > 10
            assert up["lost"] == 0 and down["lost"] == 0
            assert 0 <= up["jitter_ms"] < 50 and 0 <= down["jitter_ms"] < 50
            assert c["media"]["drops"]["auth"] == 0

            regs = (await _get(session, site, "/api/registrations"))["registrations"]
            assert [r["user"] for r in regs] == ["100"]
            assert regs[0]["address"].startswith(PHONE) and regs[0]["active"]
            assert "token" not in regs[0] and "authorization" not in json.dumps(regs).lower()

            ready = await _get(session, site, "/api/ready")
            assert ready["ready"] is True
            health = await _get(session, site, "/api/health")
            assert health["status"] == "ok"

            certs = await _get(session, site, "/api/certificates")
            identity = certs["certificates"][0]
            assert identity["role"] == "identity" and identity["days_left"] > 300
            assert any(r["role"] == "provider trust" for r in certs["certificates"])
            assert certs["provider"]["up"] and certs["provider"]["tls_version"] in (
                "TLSv1.2",
                "TLSv1.3",
            )
            status = await _get(session, site, "/api/status")
            assert status["counts"]["calls"] == 1 and status["counts"]["encrypted"] == 1
        finally:
            await player
        assert (await site.phone.hang_up()).status == 200

        # The finished call's record, readable through the API.
        async def records() -> list[dict[str, Any]]:
            return (await _get(session, site, "/api/cdr"))["records"]

        for _ in range(50):
            found = await records()
            if found:
                break
            await asyncio.sleep(0.1)
        assert len(found) == 1
        record = found[0]
        assert record["call_id"] == call.call_id and record["outcome"] == "completed"
        assert record["caller"] == "100" and record["callee"] == "200"
        assert record["suite"] == "AES_CM_128_HMAC_SHA1_80"
        assert record["end_reason"] == "BYE from lan"
        assert record["duration"] >= 1.5
        assert record["packets"]["phone_to_provider"]["sent"] > 50
        assert record["packets"]["provider_to_phone"]["sent"] > 50
        assert record["drops"]["auth"] == 0 and record["media_counters"] is True
        by_caller = await _get(session, site, "/api/cdr?caller=100&outcome=completed")
        assert len(by_caller["records"]) == 1
        assert (await _get(session, site, "/api/cdr?caller=999"))["records"] == []
        assert (await _get(session, site, "/api/calls"))["calls"] == []
        assert gw.cdr.written == 1

        # The running gateway fed the call's ladder: both legs, in order, keys redacted.
        ladder = await _get(session, site, f"/api/calls/{quote(call.call_id, safe='')}/ladder")
        assert ladder["call_ids"]["lan"] == call.call_id
        assert ladder["call_ids"]["wan"] and ladder["call_ids"]["wan"] != call.call_id
        lines = [(m["side"], m["direction"], m["first_line"].split()[0]) for m in ladder["messages"]]
        assert ("lan", "in", "INVITE") in lines and ("wan", "out", "INVITE") in lines
        assert ("lan", "in", "BYE") in lines and ("wan", "out", "BYE") in lines
        assert lines.index(("lan", "in", "INVITE")) < lines.index(("wan", "out", "INVITE"))
        texts = "\n".join(m["text"] for m in ladder["messages"])
        assert "a=crypto:" in texts and not re.search(r"inline:[A-Za-z0-9+/]{20}", texts)


async def test_bans_events_and_configuration(tmp_path: Path) -> None:
    async with admin_site(tmp_path) as site, aiohttp.ClientSession() as session:
        gw = site.gateway
        now = time.time()
        gw.policy.import_bans(
            [PersistedBan("192.0.2.7", "scan.user-agent", now - 5, now + 600, 1)],
            asyncio.get_running_loop().time(),
            now,
        )
        bans = (await _get(session, site, "/api/bans"))["bans"]
        assert [b["address"] for b in bans] == ["192.0.2.7"]
        assert bans[0]["rule"] == "scan.user-agent" and 500 < bans[0]["seconds_left"] <= 600
        async with session.delete(site.base_url + "/api/bans/192.0.2.7", headers=site.auth) as r:
            assert r.status == 200
        async with session.delete(site.base_url + "/api/bans/192.0.2.7", headers=site.auth) as r:
            assert r.status == 404
        assert (await _get(session, site, "/api/bans"))["bans"] == []
        # The lift is a security event, and the ban file follows at once.
        events = (await _get(session, site, "/api/events?action=lift"))["events"]
        assert events and events[0]["source"] == "192.0.2.7" and events[0]["detail"] == "operator"
        assert "192.0.2.7" not in (tmp_path / "state" / "bans.json").read_text()

        # A source outside the LAN allowlist is refused; the event is filterable by rule.
        stranger = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.99", 0)
        )
        try:
            lan = (gw.config.lan.sip_address, gw.config.lan.sip_port)
            stranger[0].sendto(
                b"OPTIONS sip:x@127.0.0.20 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5060;branch=z9hG4bKx\r\n"
                b"From: <sip:a@x>;tag=1\r\nTo: <sip:x@127.0.0.20>\r\nCall-ID: scan1\r\nCSeq: 1 OPTIONS\r\n"
                b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                lan,
            )
            assert await wait_for(lambda: len(gw.observatory.events) >= 2, 5.0)
        finally:
            stranger[0].close()
        found = (await _get(session, site, "/api/events?rule=allowlist&side=lan"))["events"]
        assert found and found[0]["source"] == "127.0.0.99"
        assert (await _get(session, site, "/api/events?rule=dialplan"))["events"] == []
        timeline = (await _get(session, site, "/api/events/timeline"))["buckets"]
        assert len(timeline) == 60 and timeline[-1]["refusals"] >= 1
        async with session.get(site.base_url + "/api/events?limit=x", headers=site.auth) as r:
            assert r.status == 400

        check = await _get(session, site, "/api/config/check")
        assert check["valid"] is True and check["restart_needed"] == []
        async with session.post(site.base_url + "/api/config/reload", headers=site.auth) as r:
            assert r.status == 200
            body = await r.json()
        assert body["applied"] == ["certificates"] and gw.tls.reloads == 1
        # A broken file is reported with file, line and field, and changes nothing.
        text = site.config_path.read_text()
        site.config_path.write_text(text.replace("workers = 1", 'workers = "one"'))
        check = await _get(session, site, "/api/config/check")
        assert check["valid"] is False and "media.workers" in check["problems"][0]
        async with session.post(site.base_url + "/api/config/reload", headers=site.auth) as r:
            assert r.status == 422
        assert gw.tls.reloads == 1
        site.config_path.write_text(text.replace("workers = 1", "workers = 2"))
        check = await _get(session, site, "/api/config/check")
        assert check["valid"] is True and check["restart_needed"] == ["media"]

        spec = await _get(session, site, "/api/openapi.json")
        assert spec["openapi"].startswith("3.1")


async def test_aiohttp_test_client_and_openapi_covers_every_route(tmp_path: Path) -> None:
    async with admin_site(tmp_path) as site:
        gw = site.gateway
        app = build_app(gw.console, gw.console, gw.observatory, TOKEN)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/api/status")
            assert r.status == 401
            r = await client.get("/api/status", headers={"Authorization": "Basic " + TOKEN})
            assert r.status == 401
            r = await client.get("/api/status", headers=site.auth)
            assert r.status == 200
            body = await r.json()
            assert body["provider"]["up"] is True and len(body["timeline"]) == 60
            # No spike lock in force: nothing to lift, said as a 404, not an error.
            r = await client.post("/api/spike-lock/lift", headers=site.auth)
            assert r.status == 404 and "not locked" in (await r.json())["error"]
            r = await client.get("/static/status.js")
            assert r.status == 200 and "Bearer" in await r.text()
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        routed = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/api/")
        }
        described = {
            (method, path) for path, item in openapi_document()["paths"].items() for method in item
        }
        assert routed == described


async def test_admin_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    async with admin_site(tmp_path) as site:
        env = site.gateway.config.admin.token_env
        import os

        saved = os.environ.pop(env)
        try:
            with pytest.raises(AdminStartupError, match=env):
                gw = site.gateway
                await AdminServer(
                    gw.config.admin,
                    status=gw.console,
                    operations=gw.console,
                    observatory=gw.observatory,
                ).start()
        finally:
            os.environ[env] = saved
