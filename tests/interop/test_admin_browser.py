"""The status page in a real browser: headless Chromium driven through chromedriver.

The site (lab provider, gateway with admin surface, lab phone) runs in the test's event loop;
chromedriver and Chromium are child processes of the test, stopped by PID. The WebDriver wire
protocol (W3C) is spoken directly over HTTP with aiohttp: no selenium. The test signs in as an
operator would, with a wrong token first, then checks what a person sees during an encrypted
call: the call with its suite, the tiles, the certificates with days left, the load of the
media worker, and a drawn chart. A screenshot is kept in ``test-artifacts/`` (or
``$GATEWAY_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.admin.observe import Observatory
from gateway.admin.server import build_app
from gateway.ladder import CallLadder
from tests.admin_site import TOKEN, admin_site
from tests.interop.peers import free_port
from tests.ladder_call import (
    LAN_CALL_ID,
    SECRETS,
    WAN_CALL_ID,
    LadderStatusView,
    NoOperations,
    feed_call,
)

pytestmark = pytest.mark.interop

ARTIFACTS = Path(
    os.environ.get("GATEWAY_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1400,1100",
]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriver:
    """Just enough of the W3C WebDriver protocol."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.session = ""

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base}/session/{self.session}{path}" if self.session else self.base + path
        async with self.http.request(method, url, json=body) as answer:
            data = await answer.json()
        if answer.status != 200:
            raise AssertionError(f"webdriver {method} {path}: {answer.status} {data}")
        return data["value"]

    async def start(self, chromium: str, profile: Path) -> None:
        capabilities = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [*CHROME_ARGS, f"--user-data-dir={profile}"],
                    },
                }
            }
        }
        value = await self.call("POST", "/session", capabilities)
        self.session = value["sessionId"]

    async def quit(self) -> None:
        if self.session:
            with contextlib.suppress(Exception):
                await self.call("DELETE", "")
            self.session = ""

    async def find(self, css: str) -> str:
        value = await self.call("POST", "/element", {"using": "css selector", "value": css})
        assert isinstance(value, dict) and ELEMENT in value, f"{css}: {value!r}"
        return str(value[ELEMENT])

    async def text(self, css: str) -> str:
        return str(await self.call("GET", f"/element/{await self.find(css)}/text"))

    async def displayed(self, css: str) -> bool:
        return bool(await self.call("GET", f"/element/{await self.find(css)}/displayed"))

    async def type(self, css: str, text: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/value", {"text": text})

    async def click(self, css: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/click", {})

    async def script(self, source: str) -> Any:
        return await self.call("POST", "/execute/sync", {"script": source, "args": []})

    async def screenshot(self, path: Path) -> None:
        png = base64.b64decode(await self.call("GET", "/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)

    async def until(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``check`` (an async callable) until it returns something true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            try:
                last = await check()
            except AssertionError as exc:  # e.g. no such element yet
                last = exc
            else:
                if last:
                    return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting; last value {last!r}")


@contextlib.asynccontextmanager
async def browser(tmp_path: Path, binaries: dict[str, str]) -> AsyncIterator[WebDriver]:
    port = free_port("127.0.0.1", proto="tcp")
    log = (tmp_path / "chromedriver.log").open("wb")
    driver = subprocess.Popen(
        [binaries["chromedriver"], f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as http:
            wd = WebDriver(http, f"http://127.0.0.1:{port}")
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(wd.base + "/status") as answer:
                        if (await answer.json())["value"]["ready"]:
                            break
                await asyncio.sleep(0.05)
            await wd.start(binaries["chromium"], tmp_path / "chromium-profile")
            try:
                yield wd
            finally:
                await wd.quit()
    finally:
        driver.terminate()
        try:
            driver.wait(5)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
        log.close()


async def test_status_page_in_a_real_browser(
    tmp_path: Path, need: Callable[..., dict[str, str]]
) -> None:
    binaries = need("chromium", "chromedriver")
    async with admin_site(tmp_path / "site") as site, browser(tmp_path, binaries) as wd:
        assert (await site.phone.register()).status == 200
        call = await site.phone.dial("200")
        assert call.status == 200
        player = asyncio.create_task(site.phone.play(8.0))
        # A stranger on the LAN side: refused by the allowlist, so the chart has a bar.
        stranger, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.99", 0)
        )
        stranger.sendto(
            b"OPTIONS sip:x@127.0.0.20 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5060;branch=z9hG4bKs\r\n"
            b"From: <sip:a@x>;tag=1\r\nTo: <sip:x@127.0.0.20>\r\nCall-ID: s1\r\nCSeq: 1 OPTIONS\r\n"
            b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            (site.gateway.config.lan.sip_address, site.gateway.config.lan.sip_port),
        )
        stranger.close()
        try:
            await wd.call("POST", "/url", {"url": site.base_url + "/"})
            assert await wd.until(lambda: wd.displayed("#login"))
            assert not await wd.displayed("#dashboard")  # nothing shown before sign-in

            await wd.type("#token", "not-the-token")
            await wd.click("#login-form button")

            async def wrong() -> bool:
                return await wd.text("#login-error") == "Wrong token."

            assert await wd.until(wrong)
            assert not await wd.displayed("#dashboard")

            await wd.type("#token", TOKEN)
            await wd.click("#login-form button")
            assert await wd.until(lambda: wd.displayed("#dashboard"))

            async def call_row() -> str:
                text = await wd.text("#calls tbody")
                return text if "SRTP" in text else ""

            row = await wd.until(call_row)
            assert "100" in row and "200" in row and "outbound" in row
            assert "AES_CM_128_HMAC_SHA1_80" in row and "PLAINTEXT" not in row
            assert await wd.text("#tile-calls") == "1"
            assert await wd.text("#tile-encrypted") == "1 of 1 encrypted"
            assert await wd.text("#tile-registrations") == "1"
            assert await wd.text("#ready") == "Ready"
            provider = await wd.text("#provider")
            assert "verified provider.lab" in provider and "TLSv1." in provider
            certs = await wd.text("#certs tbody")
            assert "identity" in certs and "provider trust" in certs
            days = await wd.script(
                "return [...document.querySelectorAll('#certs td.days')]"
                ".map(td => Number(td.textContent))"
            )
            assert days and all(d > 300 for d in days)

            async def worker_busy() -> str:
                text = await wd.text("#workers tbody")
                rate = await wd.script(
                    "const c = document.querySelector('#workers tbody tr td:nth-child(3)');"
                    "return c ? Number(c.textContent) : 0;"
                )
                return text if rate > 10 and "%" in text else ""

            workers = await wd.until(worker_busy)
            assert "down" not in workers

            # The chart is drawn: the canvas has painted pixels (axis and labels at least).
            painted = await wd.script(
                "const c = document.getElementById('chart');"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
            )
            assert painted > 50
            assert "1 refusals" in await wd.text("#chart-total")
            events = await wd.text("#events tbody")
            assert "127.0.0.99" in events and "allowlist.lan" in events
            # Laid out as meant: the four tiles on one row at this width, the table fits.
            layout = await wd.script(
                "const t = [...document.querySelectorAll('.tile')].map(e => e.getBoundingClientRect().top);"
                "return {tops: new Set(t).size, overflow: document.documentElement.scrollWidth > innerWidth};"
            )
            assert layout == {"tops": 1, "overflow": False}
            await wd.screenshot(ARTIFACTS / "admin-status-page.png")
            assert (ARTIFACTS / "admin-status-page.png").stat().st_size > 10_000

            # Signing out hides the data again.
            await wd.click("#logout")
            assert await wd.until(lambda: wd.displayed("#login"))
            assert not await wd.displayed("#dashboard")
        finally:
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await player


async def test_a_calls_sip_ladder_in_a_real_browser(
    tmp_path: Path, need: Callable[..., dict[str, str]]
) -> None:
    """The operator opens a call's ladder: both legs side by side, arrows with first lines,
    a message's redacted text on a click, and no secret of the call anywhere on the page.

    The admin application is the real one on 127.0.1.1; its status view is a stand-in whose
    ladder was fed the golden call of tests/ladder_call.py (a challenge, SDES keys, a BYE).
    """
    binaries = need("chromium", "chromedriver")
    ladder = CallLadder()
    feed_call(ladder)
    status = LadderStatusView(ladder, clock=lambda: 200.0)
    runner = web.AppRunner(build_app(status, NoOperations(), Observatory(), TOKEN))
    await runner.setup()
    await web.TCPSite(runner, "127.0.1.1", 0).start()
    base = "http://{}:{}".format(*next(iter(runner.addresses))[:2])
    try:
        async with browser(tmp_path, binaries) as wd:
            await wd.call("POST", "/url", {"url": base + "/"})
            assert await wd.until(lambda: wd.displayed("#login"))
            await wd.type("#token", TOKEN)
            await wd.click("#login-form button")
            assert await wd.until(lambda: wd.displayed("#dashboard"))
            assert not await wd.displayed("#ladder")

            async def recent() -> str:
                text = await wd.text("#ladders tbody")
                return text if "ended" in text else ""

            assert "19" in await wd.until(recent)
            await wd.until(lambda: wd.find("#calls button[data-ladder]"))
            await wd.click("#calls button[data-ladder]")
            assert await wd.until(lambda: wd.displayed("#ladder"))

            async def rows() -> int:
                count = await wd.script(
                    "return document.querySelectorAll('#ladder-table tr.msg').length;"
                )
                return int(count) if count == 19 else 0

            await wd.until(rows)
            assert await wd.text("#ladder-title") == "SIP ladder: 100 → 200 (outbound, ended)"
            assert await wd.text("#ladder-lan-id") == f"Call-ID {LAN_CALL_ID}"
            assert await wd.text("#ladder-wan-id") == f"Call-ID {WAN_CALL_ID}"
            # Each message in its leg's column, the arrow pointing the way it went.
            cells = await wd.script(
                "return [...document.querySelectorAll('#ladder-table tr.msg')].map(tr => {"
                "  const a = tr.querySelector('.arrow');"
                "  return [tr.cells[1].textContent ? 'lan' : 'wan', a.className, a.textContent];"
                "});"
            )
            assert cells[0] == ["lan", "arrow right", "INVITE sip:200@127.0.1.20 SIP/2.0"]
            assert cells[1] == ["lan", "arrow left", "SIP/2.0 100 Trying"]
            assert cells[2] == ["wan", "arrow right", "INVITE sip:200@provider.lab SIP/2.0"]
            assert cells[3] == [
                "wan",
                "arrow left fail",
                "SIP/2.0 407 Proxy Authentication Required",
            ]
            assert [c[0] for c in cells].count("lan") == 10
            # A click shows the message as the gateway sent it, the key redacted.
            await wd.click("#ladder-table tr.msg:nth-child(3)")
            detail = await wd.until(lambda: wd.text("#ladder-table tr.detail pre"))
            assert detail.startswith("sent to tls:127.0.1.30:5061")
            assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:[redacted]|2^31" in detail
            await wd.screenshot(ARTIFACTS / "admin-call-ladder.png")
            # Every message open: all the text the page holds is on it.
            await wd.script(
                "for (const tr of document.querySelectorAll('#ladder-table tr.msg'))"
                "  if (!tr.nextElementSibling?.classList.contains('detail')) tr.click();"
            )
            assert await wd.script("return document.querySelectorAll('tr.detail').length;") == 19
            page = str(await wd.script("return document.body.innerText;"))
            assert page.count("[redacted]") >= 6
            for secret in SECRETS:
                assert secret not in page
            overflow = await wd.script("return document.documentElement.scrollWidth > innerWidth;")
            assert overflow is False
            await wd.click("#ladder-close")
            assert not await wd.displayed("#ladder")
    finally:
        await runner.cleanup()
