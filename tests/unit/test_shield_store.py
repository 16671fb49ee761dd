"""The credential shield's files, operator commands and audit finding (gateway.shield_store)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.shield_store import (
    build_settings,
    character_classes,
    file_problems,
    generate_secret,
    load_phones,
    phone_secrets_finding,
    phones_path,
    save_phones,
)


def site(tmp_path: Path, enabled: bool = True) -> Path:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[state]\ndirectory = "state"\n[shield]\nenabled = {str(enabled).lower()}\n'
        'credentials_file = "creds.toml"\n'
    )
    return config


def write_credentials(tmp_path: Path, mode: int = 0o600) -> None:
    creds = tmp_path / "creds.toml"
    creds.write_text(
        '[credentials."*"]\nusername = "trunk"\npassword_env = "SHIELD_TEST_PW"\n'
        '[credentials."1001"]\nusername = "acct-1001"\npassword = "P-1001-provider"\n'
        'realm = "provider.example"\n'
    )
    creds.chmod(mode)


def test_generated_secrets_are_strong_unique_and_from_three_classes() -> None:
    made: set[str] = set()
    for _ in range(200):
        secret = generate_secret(made)
        assert len(secret) >= 20 and character_classes(secret) >= 3 and secret not in made
        assert '"' not in secret and "\\" not in secret
        made.add(secret)


def test_add_list_remove_print_the_secret_once_and_keep_the_file_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(tmp_path)
    assert main(["shield", "add-phone", "1001", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    path = phones_path(load_config(config))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [entry] = load_phones(path).values()
    assert printed.strip() == f"1001: {entry.secret}" and entry.generated
    assert main(["shield", "add-phone", "1001", "--config", str(config)]) == 1  # one per phone
    assert main(["shield", "add-phone", "1002", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["shield", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "1001" in listing and "1002" in listing and "never" in listing
    assert entry.secret not in listing
    assert main(["shield", "remove", "1001", "--config", str(config)]) == 0
    assert list(load_phones(path)) == ["1002"]
    assert main(["shield", "remove", "1001", "--config", str(config)]) == 1


def test_enabled_shield_refuses_missing_or_readable_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIELD_TEST_PW", "trunk-password-from-env")
    config = load_config(site(tmp_path))
    fields = [f for f, _ in file_problems(config)]
    assert fields == ["shield.phones_file", "shield.credentials_file"]
    with pytest.raises(ConfigError):
        build_settings(config)
    write_credentials(tmp_path, 0o640)
    path = phones_path(config)
    save_phones(path, {})
    problems = dict(file_problems(config))
    assert "add-phone" in problems["shield.phones_file"]
    assert "mode 0640" in problems["shield.credentials_file"]
    (tmp_path / "creds.toml").chmod(0o600)
    main(["shield", "add-phone", "1001", "--config", str(tmp_path / "gw.toml")])
    assert file_problems(config) == []
    settings = build_settings(config)
    assert settings is not None
    assert settings.provider_credentials["*"].password == "trunk-password-from-env"
    assert settings.provider_credentials["1001"].realm == "provider.example"
    assert "trunk-password" not in repr(settings)
    os.chmod(path, 0o644)
    assert "mode 0644" in dict(file_problems(config))["shield.phones_file"]
    monkeypatch.delenv("SHIELD_TEST_PW")
    os.chmod(path, 0o600)
    assert "SHIELD_TEST_PW is not set" in dict(file_problems(config))["shield.credentials_file"]


def test_the_shield_off_needs_no_files_and_the_audit_says_n_a(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, enabled=False))
    assert file_problems(config) == [] and build_settings(config) is None
    assert phone_secrets_finding(config).status == "n/a"


def test_audit_vouches_only_for_generated_unique_strong_secrets(tmp_path: Path) -> None:
    config = load_config(site(tmp_path))
    main(["shield", "add-phone", "1001", "--config", str(tmp_path / "gw.toml")])
    main(["shield", "add-phone", "1002", "--config", str(tmp_path / "gw.toml")])
    finding = phone_secrets_finding(config)
    assert finding.status == "pass" and finding.practice == "phone-secrets"
    path = phones_path(config)
    phones = load_phones(path)
    first = phones["1001"]
    # An operator-typed secret, or one secret on two phones, is not vouched for.
    phones["1003"] = type(first)(first.secret, first.created, generated=True)
    save_phones(path, phones)
    assert phone_secrets_finding(config).status == "fail"
    del phones["1003"]
    phones["1002"] = type(first)("Summer2024!", first.created, generated=False)
    save_phones(path, phones)
    failing = phone_secrets_finding(config)
    assert failing.status == "fail" and "1002" in failing.message
