"""The phone inventory of a running gateway: lab phones register and call with the User-Agents
of real desk phones, and ``/api/phones``, ``gateway phones`` (over the control socket),
``/metrics`` and ``gateway audit`` list what they are and flag the one below its minimum
firmware. A scanner the policy bans never appears.

Everything runs on 127.0.29.0/24 (tests/inventory_site.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp

from gateway.lab.phone import PhoneError
from tests.admin_site import wait_for
from tests.inventory_site import PHONES, SCANNER, InventorySite, inventory_site


async def _gateway_command(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _api(site: InventorySite, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(site.base_url + path, headers=site.auth) as answer,
    ):
        assert answer.status == 200, await answer.text()
        if answer.content_type == "application/json":
            return await answer.json()
        return await answer.text()


async def _scanner_banned(site: InventorySite) -> None:
    """A SIPVicious-like REGISTER from inside the LAN allowlist: the policy bans its source."""
    scanner = site.phone(SCANNER, "100", "friendly-scanner", timeout=2.0)
    await scanner.start()
    try:
        with contextlib.suppress(PhoneError):
            await scanner.register()
    finally:
        await scanner.close()
    console = site.gateway.console
    assert await wait_for(lambda: any(b.address == SCANNER for b in console.bans()), 5.0)


async def test_inventory_lists_phones_from_registrations_and_calls(tmp_path: Path) -> None:
    async with inventory_site(tmp_path) as site:
        yealink, grandstream, cisco = site.phones
        # Two register; the third only calls (never registered).
        assert (await yealink.register()).status == 200
        assert (await grandstream.register()).status == 200
        call = await cisco.dial("200")
        assert call.status == 200
        await cisco.hang_up()
        await _scanner_banned(site)

        phones = (await _api(site, "/api/phones"))["phones"]
        by_key = {p["phone"]: p for p in phones}
        assert list(by_key) == [f"{user}@{address}" for address, user, _ in PHONES]
        old = by_key["201@127.0.29.10"]
        assert (old["vendor"], old["model"], old["firmware"]) == ("Yealink", "T46S", "66.85.0.5")
        assert old["user_agent"] == "Yealink SIP-T46S 66.85.0.5"
        assert (old["transport"], old["registered"]) == ("udp", True)
        assert old["address"].startswith("127.0.29.10:")
        assert (old["minimum_firmware"], old["outdated"]) == ("66.86.0.15", True)
        ata = by_key["202@127.0.29.11"]
        assert (ata["vendor"], ata["model"], ata["firmware"]) == (
            "Grandstream",
            "HT801",
            "1.0.27.2",
        )
        assert (ata["minimum_firmware"], ata["outdated"]) == (None, False)
        caller = by_key["203@127.0.29.12"]
        assert (caller["vendor"], caller["model"], caller["firmware"]) == (
            "Cisco",
            "SPA504G",
            "7.6.2e",
        )
        assert (caller["registered"], caller["minimum_firmware"], caller["outdated"]) == (
            False,
            "7.6.2e",
            False,
        )
        assert caller["first_seen"] is not None and caller["last_seen_unix"] > 0
        # The scanner the policy banned is nowhere in it.
        assert not any(SCANNER in p["address"] for p in phones)

        status = await _api(site, "/api/status")
        assert [p["phone"] for p in status["phones"]] == list(by_key)

        metrics = await _api(site, "/metrics")
        assert 'gateway_phones{model="T46S",vendor="Yealink"} 1' in metrics
        assert 'gateway_phones{model="SPA504G",vendor="Cisco"} 1' in metrics
        assert re.search(r"^gateway_phones_outdated 1$", metrics, re.MULTILINE)

        # The same inventory from the gateway's own shell, over its control socket.
        config = str(site.config_path)
        code, out, err = await _gateway_command("phones", "--config", config)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split()[:6] == [
            "PHONE", "ADDRESS", "TRANSPORT", "VENDOR", "MODEL", "FIRMWARE",
        ]  # fmt: skip
        row = next(line for line in lines if line.startswith("201@127.0.29.10"))
        assert row.split()[3:7] == ["Yealink", "T46S", "66.85.0.5", "(below"]
        assert "66.85.0.5 (below 66.86.0.15)  yes" in row
        assert lines[-1] == "3 phone(s), 1 below the minimum firmware"
        code, out, _ = await _gateway_command("phones", "--config", config, "--json")
        assert code == 0
        assert [p["phone"] for p in json.loads(out)] == list(by_key)

        # The audit asks the running gateway and warns about the outdated phone.
        code, out, err = await _gateway_command("audit", "--config", config)
        finding = next(line for line in out.splitlines() if "phone-firmware" in line)
        assert finding.split()[0] == "WARN", out
        assert "1 phone(s) below the minimum firmware: 201@127.0.29.10 " in finding
        assert "(Yealink T46S 66.85.0.5 < 66.86.0.15)" in finding


async def test_audit_says_n_a_without_a_running_gateway(tmp_path: Path) -> None:
    async with inventory_site(tmp_path) as site:
        config = str(site.config_path)
    # The gateway has stopped: nothing to ask, so nothing is claimed about phones.
    _, out, _ = await _gateway_command("audit", "--config", config)
    finding = next(line for line in out.splitlines() if "phone-firmware" in line)
    assert finding.split()[0] == "N/A", out
    assert "no phone inventory to check: no gateway is running" in finding


async def test_reload_applies_new_minimums_at_once(tmp_path: Path) -> None:
    async with inventory_site(tmp_path) as site:
        yealink = site.phones[0]
        assert (await yealink.register()).status == 200
        console = site.gateway.console
        assert [p.outdated for p in console.phones()] == [True]
        text = site.config_path.read_text()
        site.config_path.write_text(text.replace('"66.86.0.15"', '"66.80.0.1"'))
        result = await console.reload_configuration()
        assert result.valid and "inventory minimum_firmware" in result.applied
        (phone,) = console.phones()
        assert (phone.minimum_firmware, phone.outdated) == ("66.80.0.1", False)
        # Nothing changed since: nothing more to apply.
        again = await console.reload_configuration()
        assert "inventory minimum_firmware" not in again.applied
