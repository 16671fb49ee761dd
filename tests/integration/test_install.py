"""``gateway install --root TMP``: the layout's folders and files with their modes, a starter
configuration that passes ``gateway check-config``, nothing overwritten on a second run, and
the written unit accepted by ``systemd-analyze verify`` (skipped where systemd is absent).

--root puts every path, inside the files too, under TMP, and skips useradd and chown: what
the test cannot check is the owner and group of a real install (that needs root and "/").
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.install import dialplan_for
from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import DialPlanSettings, PolicySettings

ANSWERS = (
    "--provider-host", "sip.provider.example",
    "--lan-address", "192.0.2.1",
    "--wan-address", "203.0.113.10",
    "--country", "GB",
)  # fmt: skip


NOON = datetime(2024, 5, 1, 12, 0)


def gateway(*argv: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *(str(a) for a in argv)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_writes_the_layout_and_keeps_it(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "gateway").exists():
        pytest.skip("no gateway script beside this interpreter: package not installed")
    done = gateway("install", "--root", tmp_path, "--yes", *ANSWERS)
    assert done.returncode == 0, done.stdout + done.stderr
    etc = tmp_path / "etc/sip-media-gateway"
    data = tmp_path / "var/lib/sip-media-gateway"
    for folder in (data, data / "state", data / "certs", etc):
        assert mode(folder) == 0o750, folder
    config, env = etc / "gateway.toml", etc / "gateway.env"
    assert mode(config) == 0o640 and mode(env) == 0o640
    unit = tmp_path / "etc/systemd/system/sip-media-gateway.service"
    assert mode(unit) == 0o644
    link = tmp_path / "usr/local/sbin/sip-media-gateway"
    assert link.resolve() == (Path(sys.executable).parent / "gateway").resolve()

    text = config.read_text()
    assert 'provider_host = "sip.provider.example"' in text
    assert 'sip_address = "192.0.2.1"' in text and 'sip_address = "203.0.113.10"' in text
    assert 'lan = ["192.0.2.0/24"]' in text
    assert f'directory = "{data}/state"' in text and f'store = "{data}/certs"' in text
    assert "# [wan.identity]" in text
    token = next(line for line in env.read_text().splitlines() if line.startswith("GATEWAY_A"))
    assert len(token.split("=", 1)[1]) >= 32
    assert f"ExecStart={link} run --config {config}" in unit.read_text()
    assert "check-config: " in done.stdout and "configuration is valid" in done.stdout
    assert "systemctl enable --now sip-media-gateway" in done.stdout

    checked = gateway("check-config", config)
    assert checked.returncode == 0, checked.stderr

    # The UK dialling rules came from the country: a London number normalises to E.164.
    engine = PolicyEngine(load_config(config).policy)
    verdict = engine.check_outbound_call("201", "192.0.2.20", "020 7946 0000", 0.0, NOON)
    assert verdict.number is not None and verdict.number.number == "+442079460000"

    before = {p: p.read_bytes() for p in (config, env, unit)}
    again = gateway("install", "--root", tmp_path, "--yes", *ANSWERS[:6], "--country", "DE")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert f"{config}: exists, kept as it is (not overwritten)" in again.stdout
    assert f"{env}: exists, kept as it is (not overwritten)" in again.stdout

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: the unit was not verified")
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert verified.returncode == 0, verified.stderr


def test_install_asks_with_defaults(tmp_path: Path) -> None:
    # Provider, LAN address, subnet (default taken), WAN address, country (default taken).
    answers = "sip.provider.example\n192.0.2.1\n\n203.0.113.10\n\n"
    done = gateway("install", "--root", tmp_path, stdin=answers)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (tmp_path / "etc/sip-media-gateway/gateway.toml").read_text()
    assert 'lan = ["192.0.2.0/24"]' in text and 'country_code = "1"' in text


def test_install_refuses_wrong_answers(tmp_path: Path) -> None:
    done = gateway("install", "--root", tmp_path, "--yes", *ANSWERS[:6], "--country", "XX")
    assert done.returncode == 2 and "country 'XX'" in done.stderr
    missing = gateway("install", "--root", tmp_path, "--yes", "--provider-host", "p.example")
    assert missing.returncode == 2 and "--yes needs --lan-address" in missing.stderr
    assert not (tmp_path / "etc/sip-media-gateway/gateway.toml").exists()


def test_country_rules_normalise_like_the_site_settings() -> None:
    rules = dialplan_for("US")
    assert rules["country_code"] == "1" and rules["national_prefix_optional"] is True
    de = DialPlanSettings(**dialplan_for("DE"))  # type: ignore[arg-type]
    engine = PolicyEngine(PolicySettings(dialplan=de))
    verdict = engine.check_outbound_call("201", "192.0.2.20", "030 123456", 0.0, NOON)
    assert verdict.number is not None and verdict.number.number == "+4930123456"
