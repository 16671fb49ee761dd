"""The deploy files as an operator installs them: the systemd unit accepted by systemd's own
checker, and the installed ``gateway`` script run through the link the unit names.

The install step ``ln -sf <venv>/bin/gateway /usr/local/sbin/sip-media-gateway`` (header of
deploy/gateway.service) is reproduced under tmp_path: the link points at this venv's script,
and the unit is verified with its ExecStart paths rewritten to that link.
``systemd-analyze verify`` checks every directive and that the executables exist; without
systemd-analyze on the machine the test is skipped (.ci/run installs systemd, which has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "gateway.service"
LINK = "/usr/local/sbin/sip-media-gateway"


def gateway_script() -> Path:
    """The console script pip wrote for this interpreter's environment."""
    script = Path(sys.executable).parent / "gateway"
    if not script.exists():
        pytest.skip(f"no gateway script next to {sys.executable}: package not installed")
    return script


@pytest.fixture
def link(tmp_path: Path) -> Path:
    installed = tmp_path / "sbin" / "sip-media-gateway"
    installed.parent.mkdir()
    installed.symlink_to(gateway_script())
    return installed


def run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No $GATEWAY_CONFIG from the developer's shell: the commands get explicit files.
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_the_link_runs_the_installed_gateway(link: Path, tmp_path: Path) -> None:
    res = run(link, "--version", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"sip-media-gateway {version('sip-media-gateway')}\n"
    example = REPO / "deploy" / "gateway.example.toml"
    # The unit's ExecStartPre, with the example configuration in place of the installed one
    # (its text only: the certificates it names live on the box it is installed on).
    res = run(link, "check-config", "--no-files", "--config", example, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{example}: configuration is valid\n"


def test_systemd_accepts_the_unit(link: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (it comes with the systemd package)")
    text = UNIT.read_text()
    assert text.count(f"={LINK} ") == 2  # ExecStartPre and ExecStart
    unit = tmp_path / "sip-media-gateway.service"  # the name the install step gives it
    unit.write_text(text.replace(LINK, str(link)))
    res = run(analyze, "verify", unit, cwd=tmp_path)
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr
