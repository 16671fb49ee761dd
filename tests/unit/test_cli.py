"""The ``gateway`` command line: one default configuration, one exit-code convention, the
version; and the deploy files agreeing on one layout with the code.

Commands run in-process through ``gateway.cli.main`` (no sockets, no child processes);
``$GATEWAY_CONFIG`` points the default at a file under ``tmp_path`` so that nothing under
/etc is ever read.
"""

from __future__ import annotations

import re
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, default_config_path
from gateway.policy.bans import PersistedBan
from gateway.policy.bans_store import list_bans, save_bans
from tests.gateway_config import write_gateway_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ETC = "/etc/sip-media-gateway"
VAR = "/var/lib/sip-media-gateway"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid configuration with its state folder under tmp_path, made the default."""
    config = write_gateway_config(
        tmp_path / "etc" / "gateway.toml", {"state": {"directory": str(tmp_path / "state")}}
    )
    (tmp_path / "state").mkdir()
    monkeypatch.setenv(CONFIG_PATH_ENV, str(config))
    monkeypatch.chdir(tmp_path)
    return config


@pytest.fixture
def no_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default configuration does not exist."""
    missing = tmp_path / "nowhere" / "gateway.toml"
    monkeypatch.setenv(CONFIG_PATH_ENV, str(missing))
    monkeypatch.chdir(tmp_path)
    return missing


def ban(site: Path, address: str) -> Path:
    path = site.parent.parent / "state" / "bans.json"
    now = time.time()
    save_bans(path, [PersistedBan(address, "scan.user-agent", now, now + 3600, 1)])
    return path


# -- the default configuration ----------------------------------------------------------------


def test_default_path_is_the_unit_layout_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == f"{ETC}/gateway.toml"
    monkeypatch.setenv(CONFIG_PATH_ENV, "")  # set but empty: as if unset
    assert default_config_path() == DEFAULT_CONFIG_PATH
    monkeypatch.setenv(CONFIG_PATH_ENV, "/srv/lab/gateway.toml")
    assert default_config_path() == "/srv/lab/gateway.toml"


def test_check_config_positional_option_and_default_are_the_same_check(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["check-config", str(site)], ["check-config", "--config", str(site)]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().out == f"{site}: configuration is valid\n"
    assert cli.main(["check-config"]) == 0
    assert capsys.readouterr().out == f"{site}: configuration is valid\n"
    # The same file both ways is not a conflict.
    assert cli.main(["check-config", str(site), "--config", str(site)]) == 0


def test_check_config_two_different_files_is_a_usage_error(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", str(tmp_path / "other.toml"), "--config", str(site)]) == 2
    assert "two files given" in capsys.readouterr().err


def test_check_config_of_a_bad_file_is_a_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[lan]\nsip_port = 'five'\n[nonsense]\n")
    assert cli.main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: lan.sip_port" in err or f"{bad}:2: sip_port" in err, err
    assert "nonsense" in err and err.rstrip().endswith("2 problem(s)")


def test_missing_default_says_where_the_default_came_from(
    no_default: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, status in (
        (["check-config"], 1),
        (["audit"], 2),
        (["run"], 2),
        (["bans", "list"], 2),
        (["bans", "lift", "192.0.2.1"], 2),
    ):
        assert cli.main(argv) == status, argv
        err = capsys.readouterr().err
        assert f"no configuration at {no_default} (the default)" in err, (argv, err)
        assert CONFIG_PATH_ENV in err


def test_an_invalid_configuration_is_a_configuration_error_for_the_other_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[lan]\nsip_port = 'five'\n")
    for argv in (["run"], ["audit"], ["bans", "list"]):
        assert cli.main([*argv, "--config", str(bad)]) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {bad}:2:" in err and "the default" not in err, err


# -- bans -------------------------------------------------------------------------------------


def test_bans_list_without_config_reads_the_default_state_folder_and_names_it(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ban(site, "198.51.100.7")
    assert cli.main(["bans", "list"]) == 0
    out, err = capsys.readouterr()
    assert f"bans file: {path} (state folder of {site})" in err
    assert re.search(r"(?m)^198\.51\.100\.7\s+scan\.user-agent\s+1\s", out), out


def test_bans_lift_exit_statuses(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ban(site, "198.51.100.7")
    assert cli.main(["bans", "lift", "not-an-address"]) == 2
    assert "is not an IP address" in capsys.readouterr().err
    assert cli.main(["bans", "lift", "203.0.113.9"]) == 1  # not banned: the command failed
    assert "203.0.113.9 is not banned" in capsys.readouterr().err
    assert cli.main(["bans", "lift", "198.51.100.7"]) == 0
    assert capsys.readouterr().out == "lifted the ban on 198.51.100.7\n"
    assert list_bans(path, time.time()) == []


def test_bans_with_an_explicit_config_ignore_the_default(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ban(site, "198.51.100.7")
    other = write_gateway_config(
        tmp_path / "other.toml", {"state": {"directory": str(tmp_path / "other-state")}}
    )
    assert cli.main(["bans", "list", "--config", str(other)]) == 0
    out, err = capsys.readouterr()
    assert out == "no active bans\n"
    assert str(tmp_path / "other-state" / "bans.json") in err


# -- audit, certs -----------------------------------------------------------------------------


def test_audit_reads_the_default_configuration(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    status = cli.main(["audit"])
    out = capsys.readouterr().out
    assert re.search(r"\d+ pass, \d+ warn, \d+ fail", out), out
    fails = int(re.search(r"(\d+) fail", out).group(1))  # type: ignore[union-attr]
    assert status == (1 if fails else 0)


def test_certs_commands_read_the_default_configuration_when_there_is_one(
    no_default: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # $GATEWAY_CONFIG names a missing file: the certs command reads it, and says so.
    assert cli.main(["certs", "status"]) == 2
    err = capsys.readouterr().err
    assert f"configuration: {no_default}" in err and f"error: {no_default}" in err, err


def test_certs_commands_work_without_any_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    monkeypatch.setattr(cli, "default_config_path", lambda: str(tmp_path / "absent.toml"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["certs", "lab"]) == 0
    assert (tmp_path / "certs" / "lab" / "gateway.pem").exists()
    assert "configuration:" not in capsys.readouterr().err


# -- version and help -------------------------------------------------------------------------


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"sip-media-gateway {version('sip-media-gateway')}\n"


def test_help_documents_the_default_and_the_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert DEFAULT_CONFIG_PATH in out and CONFIG_PATH_ENV in out
    for line in ("0  success", "1  what was checked failed", "2  usage or configuration error"):
        assert line in out


def test_usage_errors_exit_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--no-such-option"])
    assert exit_.value.code == 2


# -- one layout in the deploy files -----------------------------------------------------------


def test_deploy_files_use_one_layout() -> None:
    unit = (DEPLOY / "gateway.service").read_text()
    container = (DEPLOY / "Containerfile").read_text()
    example = tomllib.loads((DEPLOY / "gateway.example.toml").read_text())
    texts = {
        "gateway.service": unit,
        "Containerfile": container,
        "gateway.env.example": (DEPLOY / "gateway.env.example").read_text(),
        "SITE-GUIDE.md": (DEPLOY / "SITE-GUIDE.md").read_text(),
        "README.md": (REPO / "README.md").read_text(),
        **{p.name: p.read_text() for p in (REPO / "docs").glob("*.md")},
    }
    for name, text in texts.items():
        # The old names: /etc/sip-gateway, /var/lib/sip-gateway, the sip-gateway unit.
        assert not re.search(r"sip-gateway\b", text), name
    assert example["state"]["directory"] == f"{VAR}/state"
    assert example["certs"]["store"] == f"{VAR}/certs"
    for key in ("certificate", "private_key"):
        assert example["wan"]["identity"][key].startswith(f"{VAR}/certs/")
    # The unit lets the service write exactly where the example configuration writes.
    assert re.search(rf"(?m)^ReadWritePaths={VAR}$", unit)
    assert re.search(r"(?m)^StateDirectory=sip-media-gateway$", unit)
    assert f"EnvironmentFile={ETC}/gateway.env" in unit
    assert f"--config {DEFAULT_CONFIG_PATH}" in unit and f"--config {DEFAULT_CONFIG_PATH}" in (
        container
    )
    assert f'VOLUME ["{VAR}"]' in container


def test_unit_runs_the_documented_link_not_a_guessed_path() -> None:
    unit = (DEPLOY / "gateway.service").read_text()
    execs = re.findall(r"(?m)^ExecStart(?:Pre)?=(\S+)", unit)
    assert execs == ["/usr/local/sbin/sip-media-gateway"] * 2
    # The install step that creates the link is in the unit's own header; `gateway install`
    # (what the README runs) makes the same link.
    link = "ln -sf /opt/sip-media-gateway/bin/gateway /usr/local/sbin/sip-media-gateway"
    assert link in unit
    from gateway.install import LINK

    assert execs[0] == LINK and f"`{LINK}`" in (REPO / "README.md").read_text()


# -- packaging --------------------------------------------------------------------------------


def test_packaging_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert "Typing :: Typed" in project["project"]["classifiers"]
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["gateway"]
    assert (REPO / "gateway" / "py.typed").exists()
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    # All nine sections and the appendix: not a truncated copy.
    for n, title in enumerate(
        (
            "Definitions",
            "Grant of Copyright License",
            "Grant of Patent License",
            "Redistribution",
            "Submission of Contributions",
            "Trademarks",
            "Disclaimer of Warranty",
            "Limitation of Liability",
            "Accepting Warranty or Additional Liability",
        ),
        start=1,
    ):
        assert f"{n}. {title}." in text, title
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
