"""Failover drills (issue 14) with keepalived, Redis and real peers in the HA lab.

An active/standby pair (tests/interop/ha_pair.py: gwa active, gwb standby, keepalived moving
192.0.2.100 and 198.51.100.100 between them) carries two calls, each a plain baresip on the
LAN bridge (440 Hz) calling an srtp-mand baresip registered at kamailio over TLS (1000 Hz).
Before the failure a LAN host sends a scanner's OPTIONS and is banned. Then, with the calls up:

- ``kill-gateway``: SIGKILL to gwa's main process (keepalived tracks it and gives up the
  addresses; gwb is promoted),
- ``links-down``: gwa's LAN and WAN interfaces go down (keepalived on gwb stops hearing gwa),
- ``kill-worker``: SIGKILL to one of gwa's media workers (gwa stays active and restarts it).

Before the failure the standby's warm copy holds both calls (``gateway ha status``). Checked
afterwards: the new active says so (``gateway ha status``: role active; after a switchover
both calls restored and their media re-opened), every call still carries 1000 Hz to its
plain phone (LAN bridge) and SRTP that decrypts to 440 Hz toward its SRTP phone (WAN bridge);
over the whole drill every UDP packet a gateway sent on the WAN
bridge is SRTP under a key a gateway gave, no SIP crosses it in the clear and the gateways'
TCP there is TLS; a BYE from either side after the switchover ends both legs; the phones'
registrations (``gateway registrations``) and the ban are still there; a new call from the
provider side to a plain phone is answered.

Needs root and the Debian peers (ip, keepalived, redis-server, kamailio, baresip, tshark);
CI has both. Without the gateway's HA commands (gateway/ha/, ``gateway ha ...``) the two pair
drills are skipped with the reason, and the worker drill runs with a single gateway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.ha_lab import HaLab, lab_pki
from tests.interop.ha_pair import (
    FAILURES,
    SCANNER_IP,
    Drill,
    Failure,
    Pair,
    banned,
    ha_missing,
    ha_status,
    registered_users,
)
from tests.interop.ha_wan import assert_wan_bridge_secure, to_phones, to_provider, tones_after
from tests.pki import TestPki

pytestmark = pytest.mark.interop

#: Seconds of audio before the failure and after the recovery (audio time, not a wait).
AUDIO = 3.0


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
    need("ip", "keepalived", "redis-server", "kamailio", "baresip", "tshark")
    with HaLab(tmp_path / "lab", ha_pki) as lab:
        yield lab
        report = getattr(request.node, "_report_call", None)
        if report is not None and report.failed:
            print("\n===== ha lab logs =====\n" + lab.log_tails())


def _single(lab: HaLab) -> Pair:
    """No HA in this checkout: one gateway in gwa on the virtual addresses (worker drill)."""
    lab.start_redis()
    lab.start_kamailio()
    lab.start_keepalived("gwa")
    lab.wait_master("gwa")
    return Pair(lab, {"gwa": lab.gateway("gwa")})


@pytest.mark.parametrize("failure", FAILURES)
def test_failover_drill_keeps_every_call_only_srtp_on_wan(lab: HaLab, failure: Failure) -> None:
    missing = ha_missing()
    if missing and failure != "kill-worker":
        pytest.skip(f"pair drill needs the gateway's HA support: {missing}")
    pair = _single(lab) if missing else Pair.start(lab)
    drill = Drill(pair)
    drill.set_up()
    time.sleep(AUDIO)

    drill.fail(failure)
    took = drill.wait_recovered()
    time.sleep(AUDIO)
    active = drill.active
    if not missing:
        status = ha_status(active)
        assert status.get("role") == "active", status
        assert status.get("node") == drill.new_active, status
        if drill.new_active == "gwb":  # every call restored, its media re-opened
            takeover = status.get("takeover") or {}
            assert (takeover.get("restored"), takeover.get("media")) == (2, 2), status
    assert registered_users(active) >= {"2001", "2002"}
    assert banned(active, SCANNER_IP)
    drill.hang_up()
    answer = drill.new_call()
    drill.stop_captures()
    assert drill.wan is not None and drill.lan is not None
    wan, lan = drill.wan.packets(), drill.lan.packets()

    for secure in drill.secures:
        assert "failed to decrypt" not in secure.output()
    keys = assert_wan_bridge_secure(wan, drill.secures, pair.gateways.values())
    tones_after(wan, lan, keys, drill.event_at + took, calls=drill.calls)
    window = (drill.event_at, drill.event_at + took + AUDIO)
    gaps = {
        "to phones": [s.gap(*window) for s in to_phones(lan)],
        "to provider": [s.gap(*window) for s in to_provider(wan, keys)],
    }
    print(f"{failure}: recovered after {took:.2f}s, gaps {gaps}, new call answered {answer:.2f}s")
