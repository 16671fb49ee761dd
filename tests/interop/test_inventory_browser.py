"""The status page's Phones section in a real browser (headless Chromium through chromedriver,
as tests/interop/test_admin_browser.py drives it): lab phones with desk-phone User-Agents
register and call through the real gateway on 127.0.29.0/24, and the operator sees each phone's
vendor, model and firmware, the outdated one marked, and the page still fits its width.
A screenshot is kept in ``test-artifacts/`` (or ``$GATEWAY_TEST_ARTIFACTS``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.admin_site import TOKEN
from tests.interop.test_admin_browser import ARTIFACTS, browser
from tests.inventory_site import inventory_site

pytestmark = pytest.mark.interop


async def test_phones_section_in_a_real_browser(
    tmp_path: Path, need: Callable[..., dict[str, str]]
) -> None:
    binaries = need("chromium", "chromedriver")
    async with inventory_site(tmp_path / "site") as site, browser(tmp_path, binaries) as wd:
        yealink, grandstream, cisco = site.phones
        assert (await yealink.register()).status == 200
        assert (await grandstream.register()).status == 200
        assert (await cisco.dial("200")).status == 200
        await cisco.hang_up()

        await wd.call("POST", "/url", {"url": site.base_url + "/"})
        assert await wd.until(lambda: wd.displayed("#login"))
        await wd.type("#token", TOKEN)
        await wd.click("#login-form button")
        assert await wd.until(lambda: wd.displayed("#dashboard"))

        async def three_phones() -> list[list[str]]:
            rows = await wd.script(
                "return [...document.querySelectorAll('#phones tbody tr')]"
                ".map(tr => [...tr.cells].map(td => td.textContent));"
            )
            return rows if len(rows) == 3 else []

        rows = await wd.until(three_phones)
        # Phone, address, transport, vendor, model, firmware, registered, last seen, UA.
        assert [r[0] for r in rows] == ["201@127.0.29.10", "202@127.0.29.11", "203@127.0.29.12"]
        assert [r[3:7] for r in rows] == [
            ["Yealink", "T46S", "66.85.0.5 (below 66.86.0.15)", "yes"],
            ["Grandstream", "HT801", "1.0.27.2", "yes"],
            ["Cisco", "SPA504G", "7.6.2e", "no"],
        ]
        assert rows[0][1].startswith("127.0.29.10:") and rows[0][2] == "udp"
        assert rows[0][8] == "Yealink SIP-T46S 66.85.0.5"
        # The outdated firmware is marked (class and colour), the others are not.
        marked = await wd.script(
            "return [...document.querySelectorAll('#phones td.firmware')].map(td => "
            "[td.className, getComputedStyle(td).color]);"
        )
        assert [m[0] for m in marked] == ["firmware outdated", "firmware", "firmware"]
        assert marked[0][1] != marked[1][1]
        summary = await wd.text("#phones-summary")
        assert summary == "3 phones seen, 1 below the minimum firmware"
        overflow = await wd.script("return document.documentElement.scrollWidth > innerWidth;")
        assert overflow is False
        await wd.script("document.getElementById('phones').closest('section').scrollIntoView();")
        await wd.screenshot(ARTIFACTS / "admin-phones.png")
        assert (ARTIFACTS / "admin-phones.png").stat().st_size > 10_000
