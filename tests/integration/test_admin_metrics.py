"""/metrics scraped during a real call: the counters move, the names follow Prometheus rules."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from gateway.admin.metrics import Exposition
from tests.admin_site import admin_site, wait_for

_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? '
    r"(?P<value>-?[0-9.e+-]+|NaN|\+Inf|-Inf)$"
)


def parse(text: str) -> dict[str, float]:
    """Samples as {'name{labels}': value}; asserts the text-format rules on the way."""
    samples: dict[str, float] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in typed, f"family {name} declared twice"
            assert kind in ("counter", "gauge")
            assert name.startswith("gateway_")
            assert (kind == "counter") == name.endswith("_total"), name
            typed[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        assert m.group("name") in typed, f"sample before its TYPE: {line!r}"
        key = m.group("name") + ("{" + m.group("labels") + "}" if m.group("labels") else "")
        samples[key] = float(m.group("value"))
    return samples


async def _scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url) as answer:  # no token: a scrape target holds no secrets
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await answer.text())


async def test_metrics_move_during_a_real_call(tmp_path: Path) -> None:
    async with admin_site(tmp_path) as site, aiohttp.ClientSession() as session:
        before = await _scrape(session, site.metrics_url)
        assert before["gateway_up"] == 1
        assert before['gateway_calls{state="confirmed"}'] == 0
        assert before["gateway_provider_tls_up"] == 1
        assert before['gateway_trunk_up{trunk="provider"}'] == 1
        assert before["gateway_call_setups_total"] == 0
        assert before['gateway_media_packets_total{direction="in",side="lan"}'] == 0
        expiry = [
            v for k, v in before.items() if k.startswith("gateway_certificate_expiry_seconds")
        ]
        assert expiry and all(v > 300 * 86400 for v in expiry)
        assert any(k.startswith("gateway_provider_tls_info{") for k in before)

        assert (await site.phone.register()).status == 200
        call = await site.phone.dial("200")
        assert call.status == 200
        player = asyncio.create_task(site.phone.play(3.0))
        try:
            await asyncio.sleep(1.0)
            first = await _scrape(session, site.metrics_url)
            await asyncio.sleep(1.5)
            second = await _scrape(session, site.metrics_url)
        finally:
            await player
        assert first['gateway_calls{state="confirmed"}'] == 1
        assert first["gateway_calls_encrypted"] == 1
        assert first["gateway_call_setups_total"] == 1
        assert first["gateway_calls_answered_total"] == 1
        assert first["gateway_registrations"] == 1
        for key in (
            'gateway_media_packets_total{direction="in",side="lan"}',
            'gateway_media_packets_total{direction="out",side="wan"}',
            'gateway_media_packets_total{direction="in",side="wan"}',
            'gateway_media_packets_total{direction="out",side="lan"}',
            'gateway_media_bytes_total{side="lan"}',
        ):
            assert 0 < first[key] < second[key], key
        assert second['gateway_media_drops_total{reason="auth"}'] == 0
        assert second['gateway_media_drops_total{reason="no_session"}'] >= 0
        assert second['gateway_media_worker_up{worker="0"}'] == 1
        assert second['gateway_media_worker_packets_per_second{worker="0"}'] > 20
        assert second['gateway_media_worker_cpu_seconds_total{worker="0"}'] > 0
        assert 0 <= second['gateway_media_worker_cpu_ratio{worker="0"}'] < 1.5

        assert (await site.phone.hang_up()).status == 200
        assert await wait_for(lambda: site.gateway.cdr.written == 1, 5.0)
        after = await _scrape(session, site.metrics_url)
        assert after['gateway_calls{state="confirmed"}'] == 0
        assert after['gateway_calls_ended_total{reason="bye_phone"}'] == 1
        assert after["gateway_call_records_written_total"] == 1
        # Counters never go back when the call's streams are gone.
        for key in (
            'gateway_media_packets_total{direction="in",side="lan"}',
            'gateway_media_packets_total{direction="out",side="lan"}',
        ):
            assert after[key] >= second[key], key
        # The same exposition on the admin address, also without the token.
        async with session.get(site.base_url + "/metrics") as answer:
            assert answer.status == 200
            assert "gateway_up 1" in await answer.text()


def test_label_values_are_escaped() -> None:
    out = Exposition()
    out.family("gateway_x", "gauge", "help", [({"a": 'q"\\\n'}, 1.5)])
    assert 'gateway_x{a="q\\"\\\\\\n"} 1.5' in out.render()
    parse(out.render())
