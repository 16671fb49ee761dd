"""The failover lab itself (tests/interop/ha_lab.py), before any gateway pair runs in it.

- keepalived: gwa (higher priority) takes both virtual addresses, gwb stays backup; when
  gwa's keepalived is killed (SIGKILL, no goodbye advertisement) gwb takes both within a few
  advertisement intervals, and its notify script was told ``master``.
- A single gateway (no HA) in gwa on the virtual addresses carries a call between a plain
  baresip on the LAN bridge and an srtp-mand baresip registered at kamailio (TLS) on the WAN
  bridge: tones both ways, and the capture on the WAN bridge sees only TLS and SRTP.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.ha_lab import LAN_VIP, WAN_VIP, HaLab, lab_pki, until
from tests.interop.ha_wan import assert_wan_bridge_secure, tones_after
from tests.pki import TestPki

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def ha_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return lab_pki(tmp_path_factory.mktemp("ha-pki"))


@pytest.fixture
def lab(
    request: pytest.FixtureRequest,
    need: Callable[..., dict[str, str]],
    ha_pki: TestPki,
    tmp_path: Path,
) -> Iterator[HaLab]:
    need("ip", "keepalived", "kamailio", "baresip", "tshark", "redis-server")
    with HaLab(tmp_path / "lab", ha_pki) as lab:
        yield lab
        report = getattr(request.node, "_report_call", None)
        if report is not None and report.failed:
            print("\n===== ha lab logs =====\n" + lab.log_tails())


def test_virtual_addresses_move_when_the_masters_keepalived_dies(lab: HaLab) -> None:
    lab.start_keepalived("gwa")
    lab.start_keepalived("gwb")
    lab.wait_master("gwa")
    until("gwb told backup", lambda: lab.roles("gwb")[-1:] == ["backup"], 10)
    until("gwa told master", lambda: lab.roles("gwa")[-1:] == ["master"], 5)

    lab.keepalived["gwa"].signal(signal.SIGKILL)
    # Killed, gwa's keepalived leaves its addresses configured (nobody removes them), but
    # its namespace stops advertising: gwb must take both within a few intervals.
    took = until(
        "gwb holding both virtual addresses",
        lambda: all("gwb" in holders for holders in lab.vip_holders().values()),
        10,
    )
    until("gwb told master", lambda: lab.roles("gwb")[-1:] == ["master"], 5)
    print(f"gwb master {took:.2f}s after the kill")


def test_single_gateway_in_the_lab_carries_a_call_tones_both_ways_wan_only_srtp(
    lab: HaLab,
) -> None:
    lab.start_keepalived("gwa")
    lab.wait_master("gwa")
    lab.start_kamailio()
    gw = lab.gateway("gwa")
    cap = lab.capture_wan()
    lan_cap = lab.capture_lan()
    secure = lab.provider_phone("3001")
    legacy = lab.legacy_phone("2001")
    legacy.dial(lab.ns["lan"], f"sip:3001@{LAN_VIP}:5060")
    legacy.wait_established(15)
    secure.wait_established(15)
    started = time.time()
    time.sleep(2.0)  # two seconds of audio to analyse (audio time, not a wait)
    legacy.hangup(lab.ns["lan"])
    legacy.wait_terminated(10)
    secure.wait_terminated(10)
    cap.stop()
    lan_cap.stop()
    packets = cap.packets()
    keys = assert_wan_bridge_secure(packets, [secure], [gw])
    tones_after(packets, lan_cap.packets(), keys, started, calls=1)
    assert WAN_VIP in {p.src[0] for p in packets}
