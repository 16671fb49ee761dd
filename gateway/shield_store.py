"""The credential shield's two files, its operator commands and its audit finding (the glue of
``gateway.sip.shield``).

``phones_file`` (written only by ``gateway shield add-phone``/``remove``, mode 0600)::

    [phones."1001"]
    secret = "..."                      # 24 characters from ``secrets``, three classes
    created = "2026-12-05T10:00:00+00:00"
    generated = true                    # made by the gateway (the audit vouches only for these)

``credentials_file`` (written by the operator, mode 0600): the provider credentials of one
extension, or of every extension without its own (``"*"``)::

    [credentials."*"]
    username = "trunk-account"
    password_env = "GATEWAY_TRUNK_PASSWORD"   # or: password = "..."
    realm = "sip.provider.example"            # optional: answer only this realm

Both must exist and be readable by their owner only while the shield is enabled; otherwise
``check-config`` names the problem and the gateway refuses to start. When each phone last
authenticated is kept by the running gateway in ``shield-last-used.json`` in the state folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import stat
import string
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, ConfigProblem, GatewayConfig, load_config
from gateway.policy.audit import AuditFinding
from gateway.sip.shield import ProviderCredential, ShieldSettings

#: A phone's LAN secret: length and alphabet (no quotes or backslashes: TOML and SIP
#: configuration screens take it as typed).
SECRET_LENGTH = 24
_SECRET_ALPHABET = string.ascii_letters + string.digits + "-_.+!*"
_USER = re.compile(r"[A-Za-z0-9+._-]{1,64}")
LAST_USED_FILE = "shield-last-used.json"


@dataclass(frozen=True)
class PhoneSecret:
    secret: str
    created: str
    generated: bool = True

    def __repr__(self) -> str:
        return f"PhoneSecret(created={self.created!r}, generated={self.generated})"


class ShieldFileError(Exception):
    """A shield file that cannot be used; the message names the file."""


def phones_path(config: GatewayConfig) -> Path:
    name = config.shield.phones_file
    if name is None:
        return Path(config.state.directory) / "shield-phones.toml"
    return config.path(name)


def credentials_path(config: GatewayConfig) -> Path | None:
    name = config.shield.credentials_file
    return config.path(name) if name is not None else None


# ------------------------------------------------------------------------------- secrets


def character_classes(secret: str) -> int:
    return sum(
        any(c in group for c in secret)
        for group in (
            string.ascii_lowercase,
            string.ascii_uppercase,
            string.digits,
            "-_.+!*",
        )
    )


def generate_secret(taken: set[str]) -> str:
    """A fresh secret: ``SECRET_LENGTH`` characters from ``secrets``, at least three
    character classes, different from every secret already given out."""
    while True:
        secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
        if character_classes(secret) >= 3 and secret not in taken:
            return secret


# ------------------------------------------------------------------------------- the files


def _private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ShieldFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ShieldFileError(f"{path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ShieldFileError(
            f"{path}: readable by group or others (mode {mode:04o}); run chmod 600 on it"
        )


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ShieldFileError(f"{path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ShieldFileError(f"{path}: {exc}") from None


def load_phones(path: Path, *, missing_ok: bool = False) -> dict[str, PhoneSecret]:
    if missing_ok and not path.exists():
        return {}
    _private(path)
    table = _read_toml(path).get("phones", {})
    if not isinstance(table, dict):
        raise ShieldFileError(f"{path}: [phones] must be a table")
    phones: dict[str, PhoneSecret] = {}
    for user, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("secret"), str):
            raise ShieldFileError(f"{path}: phones.{user}: expected a table with a secret")
        phones[user] = PhoneSecret(
            entry["secret"], str(entry.get("created", "")), bool(entry.get("generated", False))
        )
    return phones


def save_phones(path: Path, phones: Mapping[str, PhoneSecret]) -> None:
    """Write the file atomically, created 0600 (never readable by anyone else, not even for
    the moment between creating and chmod)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `gateway shield`: the phones' LAN-only SIP secrets. Keep it 0600.", ""]
    for user in sorted(phones):
        entry = phones[user]
        lines += [
            f'[phones."{user}"]',
            f'secret = "{entry.secret}"',
            f'created = "{entry.created}"',
            f"generated = {'true' if entry.generated else 'false'}",
            "",
        ]
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def load_credentials(
    path: Path, environ: Mapping[str, str] | None = None
) -> dict[str, ProviderCredential]:
    environ = os.environ if environ is None else environ
    _private(path)
    table = _read_toml(path).get("credentials", {})
    if not isinstance(table, dict) or not table:
        raise ShieldFileError(f'{path}: expected [credentials."*"] or [credentials.USER]')
    found: dict[str, ProviderCredential] = {}
    for user, entry in table.items():
        where = f"{path}: credentials.{user}"
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str):
            raise ShieldFileError(f"{where}: expected a table with a username")
        password = entry.get("password")
        variable = entry.get("password_env")
        if isinstance(variable, str):
            password = environ.get(variable)
            if not password:
                raise ShieldFileError(f"{where}: environment variable {variable} is not set")
        if not isinstance(password, str) or not password:
            raise ShieldFileError(f"{where}: expected password or password_env")
        realm = entry.get("realm")
        found[user] = ProviderCredential(
            entry["username"], password, realm if isinstance(realm, str) else None
        )
    return found


def file_problems(config: GatewayConfig) -> list[tuple[str, str]]:
    """(field, message) for every reason the enabled shield could not start."""
    if not config.shield.enabled:
        return []
    problems: list[tuple[str, str]] = []
    try:
        if not load_phones(phones_path(config)):
            problems.append(
                ("shield.phones_file", "no phone secrets yet: run gateway shield add-phone USER")
            )
    except ShieldFileError as exc:
        problems.append(("shield.phones_file", f"{exc} (gateway shield add-phone creates it)"))
    path = credentials_path(config)
    if path is None:
        problems.append(("shield.credentials_file", "needed while the shield is enabled"))
    else:
        try:
            load_credentials(path)
        except ShieldFileError as exc:
            problems.append(("shield.credentials_file", str(exc)))
    return problems


def build_settings(config: GatewayConfig) -> ShieldSettings | None:
    """The core's shield settings, or None when the shield is off; ConfigError when its files
    are missing, unreadable or readable by others (the gateway does not start)."""
    problems = file_problems(config)
    if problems:
        name = config.source_file or "<config>"
        raise ConfigError([ConfigProblem(name, None, f, m) for f, m in problems])
    if not config.shield.enabled:
        return None
    path = credentials_path(config)
    assert path is not None
    shield = config.shield
    return ShieldSettings(
        phone_secrets=phone_secrets(config),
        provider_credentials=load_credentials(path),
        # A new key per start: nonces of an earlier run answer stale=true, nothing worse.
        nonce_key=secrets.token_bytes(32),
        realm=shield.realm,
        algorithm=shield.algorithm,
        nonce_lifetime=shield.nonce_lifetime,
    )


def phone_secrets(config: GatewayConfig) -> dict[str, str]:
    """Extension -> LAN secret, as the phones file says now (``gateway reload`` hands them
    to the running shield); ShieldFileError names the file when it cannot be used."""
    return {user: p.secret for user, p in load_phones(phones_path(config)).items()}


def save_last_used(state: Path, used: Mapping[str, float]) -> None:
    """``used``: extension -> Unix time of its last successful authentication."""
    path = state / LAST_USED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(dict(sorted(used.items()))), encoding="utf-8")
    os.replace(temporary, path)


def load_last_used(state: Path) -> dict[str, float]:
    try:
        data = json.loads((state / LAST_USED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------- the audit


def phone_secrets_finding(config: GatewayConfig) -> AuditFinding:
    """With the shield on: every phone secret generated by the gateway, unique and strong."""
    if not config.shield.enabled:
        return AuditFinding(
            "phone-secrets", "n/a", "credential shield off: phones hold their provider secrets"
        )
    try:
        phones = load_phones(phones_path(config))
    except ShieldFileError as exc:
        return AuditFinding("phone-secrets", "fail", str(exc), "gateway shield add-phone USER")
    weak = [
        user
        for user, p in phones.items()
        if not p.generated or len(p.secret) < 20 or character_classes(p.secret) < 3
    ]
    values = [p.secret for p in phones.values()]
    if not phones:
        return AuditFinding("phone-secrets", "fail", "no phone secrets", "gateway shield add-phone")
    if weak or len(set(values)) != len(values):
        shared = len(values) - len(set(values))
        return AuditFinding(
            "phone-secrets",
            "fail",
            f"not generated or weak: {', '.join(sorted(weak)) or '-'}; shared: {shared}",
            "gateway shield remove USER, then gateway shield add-phone USER",
        )
    return AuditFinding(
        "phone-secrets",
        "pass",
        f"{len(phones)} phone secret(s), each generated by the gateway, unique, "
        f"{SECRET_LENGTH}+ characters of 3+ classes; provider credentials stay on the gateway",
    )


# ------------------------------------------------------------------------------- commands


def _config(args: argparse.Namespace) -> GatewayConfig | None:
    from gateway.config import default_config_path

    path = getattr(args, "config", None) or default_config_path()
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def cmd_add_phone(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    if not _USER.fullmatch(args.user):
        print(f"error: {args.user!r} is not an extension (letters, digits, +._-)", file=sys.stderr)
        return 2
    path = phones_path(config)
    try:
        phones = load_phones(path, missing_ok=True)
    except ShieldFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.user in phones:
        print(f"error: {args.user} has a secret already (remove it first)", file=sys.stderr)
        return 1
    secret = generate_secret({p.secret for p in phones.values()})
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    phones[args.user] = PhoneSecret(secret, created, generated=True)
    save_phones(path, phones)
    print(f"phones file: {path}", file=sys.stderr)
    print(f"{args.user}: {secret}")
    print(
        "Shown once: enter it as the phone's SIP password (its user name stays "
        f"{args.user}); run gateway reload (or restart the gateway) to use it.",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    try:
        phones = load_phones(phones_path(config), missing_ok=True)
    except ShieldFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    used = load_last_used(Path(config.state.directory))
    print(f"{'user':<16} {'created':<26} last used")
    for user in sorted(phones):
        at = used.get(user)
        last = "never"
        if at:
            last = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
        print(f"{user:<16} {phones[user].created:<26} {last}")
    if not config.shield.enabled:
        print("(the credential shield is off in this configuration)", file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    path = phones_path(config)
    try:
        phones = load_phones(path, missing_ok=True)
    except ShieldFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if phones.pop(args.user, None) is None:
        print(f"{args.user} has no secret", file=sys.stderr)
        return 1
    save_phones(path, phones)
    print(f"removed the secret of {args.user} (gateway reload, or a restart, refuses it)")
    return 0


def add_shield_commands(sub: argparse._SubParsersAction) -> None:
    shield = sub.add_parser("shield", help="the credential shield's per-phone LAN secrets")
    shield_sub = shield.add_subparsers(dest="shield_command", required=True)
    what = "configuration file (its [shield] names the phones file)"
    for name, func, text in (
        ("add-phone", cmd_add_phone, "generate a phone's LAN secret and print it once"),
        ("list", cmd_list, "phones with a secret: created, last used (never the secrets)"),
        ("remove", cmd_remove, "forget a phone's secret"),
    ):
        p = shield_sub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("user", help="the phone's extension (its SIP user name)")
        p.add_argument("--config", metavar="FILE", help=what)
        p.set_defaults(func=func)
