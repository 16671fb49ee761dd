"""Every problem of a configuration file in one run: each key checked on its own, unknown names
with a "did you mean", nested tables and arrays of tables included; and the files a
configuration names opened as ``gateway run`` opens them (gateway.config_files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config_check import LineLocator, did_you_mean
from gateway.config_files import check_config_file
from tests.pki import make_ca, make_leaf, write_pair


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    return [str(p) for p in info.value.problems]


def test_three_mistakes_in_one_table_are_three_problems() -> None:
    found = problems(
        '[lan]\nsip_port = "5060"\ntransports = ["udp", "sctp"]\nmedia_address = "lan"\n'
    )
    assert found == [
        "site.toml:2: lan.sip_port: Expected `int`, got `str`",
        "site.toml:3: lan.transports: expected 'udp' or 'tcp', got 'sctp'",
        "site.toml:4: lan.media_address: expected an IP address, got 'lan'",
    ]


def test_misspelt_names_get_a_did_you_mean() -> None:
    found = problems(
        '[lan]\nsip_adress = "192.0.2.1"\n\n[polcy]\n\n[wan]\nnumber_format = "e.164"\n'
    )
    assert found == [
        "site.toml:2: lan.sip_adress: unknown option; did you mean sip_address?",
        "site.toml:4: polcy: unknown table; did you mean [policy]?",
        "site.toml:7: wan.number_format: expected one of 'as-dialled', 'e164', 'e164-no-plus', "
        "'national', got 'e.164'; did you mean 'e164'?",
    ]


def test_did_you_mean_names_both_when_two_are_as_close() -> None:
    assert did_you_mean("provider", ["provider_host", "provider_port", "domain"]) == (
        "provider_host or provider_port"
    )
    assert did_you_mean("zzz", ["provider_host"]) is None


def test_nested_tables_each_report_their_own_mistakes() -> None:
    found = problems(
        "[wan.identity]\ncertificate = 1\nprivate_kye = 'k.pem'\n\n"
        "[policy.flood]\nban_growth = 0.5\nauth_failures = 0\n"
        "per_source = { rate = 1.0, brust = 2.0 }\n"
    )
    assert found == [
        "site.toml:1: wan.identity.private_key: required option missing (a string)",
        "site.toml:2: wan.identity.certificate: Expected `str`, got `int`",
        "site.toml:3: wan.identity.private_kye: unknown option; did you mean private_key?",
        "site.toml:6: policy.flood.ban_growth: ban_growth must be >= 1",
        "site.toml:7: policy.flood.auth_failures: auth_failures must be >= 1 and "
        "enumeration_users >= 2",
        "site.toml:8: policy.flood.per_source.brust: unknown option; did you mean burst?",
        "site.toml:8: policy.flood.per_source.burst: required option missing (a number)",
    ]


def test_each_trunk_and_rule_is_named_by_its_place_and_line() -> None:
    found = problems(
        '[[trunks]]\nname = "a"\nprovider_host = "x"\nanswer_timeout = "soon"\n\n'
        '[[trunks]]\nname = "b"\nprovider_host = "y"\nnumber_format = "intl"\n'
        "trust = { ca_bundel = 'ca.pem' }\n\n"
        '[[policy.dialplan.rules]]\nname = "r"\naction = "denny"\nprefixes = ["+1900"]\n'
    )
    assert found == [
        "site.toml:4: trunks.0.answer_timeout: Expected `float`, got `str`",
        "site.toml:9: trunks.1.number_format: expected one of 'as-dialled', 'e164', "
        "'e164-no-plus', 'national', got 'intl'",
        "site.toml:10: trunks.1.trust.ca_bundel: unknown option; did you mean ca_bundle?",
        "site.toml:14: policy.dialplan.rules.0.action: expected one of 'allow', 'deny', got "
        "'denny'; did you mean 'deny'?",
    ]


def test_a_cross_field_check_does_not_repeat_a_value_already_wrong() -> None:
    # listen_port needs [wan.identity]; the identity is wrong (reported), not missing.
    found = problems("[wan]\nlisten_port = 5061\n[wan.identity]\ncertificate = 'c.pem'\n")
    assert found == ["site.toml:3: wan.identity.private_key: required option missing (a string)"]


def test_line_locator_counts_arrays_of_tables() -> None:
    locate = LineLocator("[[trunks]]\nname = 'a'\n[[trunks]]\nname = 'b'\n[trunks.trust]\nx = 1\n")
    assert (locate("trunks.0.name"), locate("trunks.1.name"), locate("trunks.1.trust.x")) == (
        2,
        4,
        6,
    )


# -- the files a configuration names ----------------------------------------------------------


def write_site(tmp_path: Path, identity: tuple[Path, Path], state: Path) -> Path:
    cert, key = identity
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[wan.identity]\ncertificate = "{cert}"\nprivate_key = "{key}"\n\n'
        f'[state]\ndirectory = "{state}"\n'
    )
    return path


NOW = dt.datetime.now(dt.UTC)


def pair(tmp_path: Path, name: str, *, days: int = 365) -> tuple[Path, Path]:
    ca = make_ca(now=NOW - dt.timedelta(days=1))
    leaf = make_leaf(ca, ["gateway.example"], now=NOW - dt.timedelta(days=1), days=days)
    (tmp_path / name).mkdir()
    return write_pair(tmp_path / name, "gateway", leaf.chain, leaf.key)


def test_a_good_site_is_valid(tmp_path: Path) -> None:
    report = check_config_file(write_site(tmp_path, pair(tmp_path, "id"), tmp_path / "state"))
    assert report.errors == ()
    assert report.config is not None and report.ok


def test_missing_mismatched_and_loose_files_are_each_reported(tmp_path: Path) -> None:
    cert, _ = pair(tmp_path, "one")
    _, other_key = pair(tmp_path, "two")
    other_key.chmod(0o644)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    report = check_config_file(write_site(tmp_path, (cert, other_key), blocker / "state"))
    site = str(tmp_path / "gateway.toml")
    assert [str(p) for p in report.errors] == [
        f"{site}:3: wan.identity.private_key: {other_key}: private key is accessible to others "
        "(mode 0644); run chmod 600 on it",
        f"{site}:3: wan.identity.private_key: {other_key}: private key does not match the "
        f"certificate in {cert}",
        f"{site}:6: state.directory: {blocker}/state: cannot be created: {blocker} is not a folder",
    ]
    assert report.config is None and not report.ok
    missing = check_config_file(
        write_site(tmp_path, (tmp_path / "no.pem", tmp_path / "no.key"), tmp_path)
    )
    assert [p.field for p in missing.errors] == [
        "wan.identity.certificate",
        "wan.identity.private_key",
    ]
    assert "No such file or directory" in missing.errors[0].message


def test_a_certificate_near_its_end_is_a_warning(tmp_path: Path) -> None:
    report = check_config_file(
        write_site(tmp_path, pair(tmp_path, "id", days=10), tmp_path / "state")
    )
    assert report.ok
    [warning] = [w for w in report.warnings if "expires" in w.message]
    assert warning.field == "wan.identity.certificate"
    assert "expires in 8 day(s)" in warning.message or "expires in 9 day(s)" in warning.message


def test_the_credential_shields_files_are_checked_with_the_others(tmp_path: Path) -> None:
    # check-config is the place an operator learns the shield cannot start: its files are
    # opened like the certificates (missing phones file, a credentials file others can read).
    site = write_site(tmp_path, pair(tmp_path, "id"), tmp_path / "state")
    credentials = tmp_path / "trunk.toml"
    credentials.write_text('username = "trunk"\npassword = "x"\n')
    credentials.chmod(0o644)
    site.write_text(
        site.read_text() + f'\n[shield]\nenabled = true\ncredentials_file = "{credentials}"\n'
    )
    report = check_config_file(site)
    assert [p.field for p in report.errors] == ["shield.phones_file", "shield.credentials_file"]
    assert "gateway shield add-phone" in report.errors[0].message
    assert str(credentials) in report.errors[1].message and not report.ok
