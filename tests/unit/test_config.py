"""Configuration: typed decoding, every problem named with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, insecure_settings, load_config, parse_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["gateway.example.toml", "lab.toml"])
def test_shipped_configurations_are_valid(name: str) -> None:
    config = load_config(DEPLOY / name)
    assert insecure_settings(config) == []
    assert config.wan.suites  # at least one SRTP suite


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    config = load_config(DEPLOY / "lab.toml")
    assert config.wan.identity is not None
    assert config.wan.identity.certificate == str(DEPLOY.resolve().parent / "certs/lab/gateway.pem")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    return [str(p) for p in info.value.problems]


def test_type_error_names_file_line_and_field() -> None:
    assert problems('[lan]\nsip_address = "192.0.2.1"\nsip_port = "5060"\n') == [
        "site.toml:3: lan.sip_port: Expected `int`, got `str`"
    ]


def test_unknown_option_and_unknown_table_are_errors() -> None:
    found = problems("[wan]\nprovider = 1\n\n[wam]\nx = 1\n")
    assert "site.toml:2: wan.provider: unknown option; did you mean provider_host or provider_port?" in found
    assert any(p.startswith("site.toml:4: wam: unknown table") for p in found)


def test_null_cipher_suites_count_as_plaintext() -> None:
    found = problems('[wan]\nsrtp_suites = ["NULL_HMAC_SHA1_80"]\n')
    assert found == [
        "site.toml:2: wan.srtp_suites: NULL_HMAC_SHA1_80 encrypts nothing and counts as "
        "plaintext; remove it"
    ]


def test_every_cross_field_problem_is_reported_at_once() -> None:
    found = problems(
        '[lan]\nmedia_address = "127.0.0.1"\nmedia_ports = [40000, 41000]\n'
        '[wan]\nmedia_address = "127.0.0.1"\nmedia_ports = [40500, 42000]\nlisten_port = 5061\n'
        "[sip]\nt1 = 2.0\nt2 = 1.0\n"
    )
    assert "site.toml:6: wan.media_ports: overlaps lan.media_ports on the same address" in found
    assert any("wan.identity" in p and "certificate" in p for p in found)
    assert any("sip.t2" in p for p in found)


def test_downgrades_are_named() -> None:
    config = parse_config("[wan]\ninsecure_plaintext_media = true\ninsecure_skip_verify = true\n")
    assert insecure_settings(config) == [
        "wan.insecure_plaintext_media",
        "wan.insecure_skip_verify",
    ]


def test_syntax_error_gives_the_line() -> None:
    found = problems("[lan]\nsip_port = = 1\n")
    assert found[0].startswith("site.toml:2: (syntax)")
