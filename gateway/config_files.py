"""The files and folders a configuration names, opened and judged as ``gateway run`` will use
them: what ``gateway check-config`` adds to the file's own checks, in the manner of ``nginx -t``.

A configuration whose text is right can still fail to start: a certificate that is not there,
a key that belongs to another certificate, a key others can read, a state folder that cannot be
written. Each of those is found here before the gateway starts, and each problem names the
configuration field that named the file, the file, and what is wrong with it.

Checked (errors unless said otherwise):

- ``[wan.identity]``: certificate and key read with the certificate layer's own loaders
  (gateway.certs.store), the key matches the leaf, the chain is in issuer order (RFC 5246
  §7.4.2), the leaf is within its validity (RFC 5280 §4.1.2.5; a warning when it ends within
  14 days); a key readable by group or others is refused, as the TLS loader refuses it; the
  passphrase can be had. Whether the chain leads to the configured trust, the system store or
  the store's own CA is a warning: the provider verifies it with anchors this host cannot see.
- ``[wan.trust]`` and each trunk's trust: the CA bundle reads as PEM certificates (expired
  anchors: warning), SPKI pins are RFC 7469 §2.4 values.
- ``[admin]`` when enabled: TLS certificate and key (a key readable by others: error; by the
  group: warning, as the admin TLS loader does not refuse it), the client CA bundle.
- ``[state] directory`` and the call-record folder: exist, or can be created, and can be
  written (tried by creating a file: permission bits say nothing to root).
- ``[audit] sip_secrets_file``: readable (a warning: only ``gateway audit`` reads it).

This module does I/O (files, the clock) and is glue, not a core.
"""

from __future__ import annotations

import datetime as dt
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway.certs.errors import CertificateError
from gateway.certs.inspect import (
    TrustAnchors,
    chain_problem,
    days_left,
    is_issued_by,
    key_matches,
    normalise_pin,
    validity_problem,
)
from gateway.certs.settings import ProviderTrustSettings
from gateway.certs.store import (
    identity_passphrase,
    read_certificates,
    read_private_key,
)
from gateway.config import (
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    insecure_settings,
    load_config,
)
from gateway.config_check import LineLocator
from gateway.ha.settings import check_ha_environment
from gateway.shield_store import file_problems as shield_file_problems

#: A certificate ending within this many days is a warning.
EXPIRY_WARNING_DAYS = 14


@dataclass
class Findings:
    """Problems (the gateway would not start, or not work) and warnings, in the order found."""

    name: str
    locate: Callable[[str], int | None]
    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(ConfigProblem(self.name, self.locate(where), where, message))

    def warning(self, where: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.name, self.locate(where), where, message))


@dataclass(frozen=True)
class ConfigReport:
    """The result of checking one configuration file: what ``check-config`` prints."""

    file: str
    config: GatewayConfig | None
    errors: tuple[ConfigProblem, ...]
    warnings: tuple[ConfigProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """One line per problem, errors first, then warnings."""
        return [f"error: {p}" for p in self.errors] + [f"warning: {p}" for p in self.warnings]

    def summary(self) -> str:
        warned = f"{len(self.warnings)} warning(s), " if self.warnings else ""
        if self.errors:
            return f"{self.file}: configuration test failed: {warned}{len(self.errors)} problem(s)"
        if self.warnings:
            return f"{self.file}: configuration is valid, {len(self.warnings)} warning(s)"
        return f"{self.file}: configuration is valid"


def check_config_file(
    path: str | Path, *, files: bool = True, now: dt.datetime | None = None
) -> ConfigReport:
    """Load ``path`` and, unless ``files`` is False, open every file it names; never raises
    for a problem of the configuration, every one is in the report."""
    name = str(path)
    try:
        config = load_config(path)
    except ConfigError as exc:
        errors = list(exc.problems)
        partial = exc.config
    else:
        errors, partial = [], config
    if partial is None or not files:
        warnings = _downgrades(name, partial, None)
        return ConfigReport(name, None if errors else partial, tuple(errors), tuple(warnings))
    try:
        locate = LineLocator(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return ConfigReport(name, None, tuple(errors), ())
    found = check_files(partial, name, locate, now=now)
    wrong = [p.field for p in errors]
    # A file field already reported wrong in the text was replaced by its default: judging
    # the default's file would only confuse.
    found.errors = [p for p in found.errors if not _under_any(p.field, wrong)]
    found.warnings = [p for p in found.warnings if not _under_any(p.field, wrong)]
    errors = sorted(errors, key=lambda p: p.line or 0) + found.errors
    warnings = found.warnings + _downgrades(name, partial, locate)
    return ConfigReport(name, None if errors else partial, tuple(errors), tuple(warnings))


def _under_any(field_name: str, wrong: list[str]) -> bool:
    return any(field_name == w or field_name.startswith(w + ".") for w in wrong)


def _downgrades(
    name: str, config: GatewayConfig | None, locate: Callable[[str], int | None] | None
) -> list[ConfigProblem]:
    if config is None:
        return []
    return [
        ConfigProblem(name, locate(option) if locate else None, option, "INSECURE downgrade is on")
        for option in insecure_settings(config)
    ]


def check_files(
    config: GatewayConfig,
    name: str,
    locate: Callable[[str], int | None],
    *,
    now: dt.datetime | None = None,
) -> Findings:
    """Every file and folder ``config`` names (paths already resolved by the loader)."""
    now = now or dt.datetime.now(dt.UTC)
    found = Findings(name, locate)
    _check_identity(config, found, now)
    _check_trust("wan.trust", config.wan.trust, found, now)
    for index, trunk in enumerate(config.trunks):
        _check_trust(f"trunks.{index}.trust", trunk.trust, found, now)
    if config.admin.enabled:
        _check_admin(config, found, now)
    state = Path(config.state.directory)
    cdr = Path(config.state.directory) / config.admin.cdr_file
    if _check_folder("state.directory", state, found) and cdr.parent != state:
        _check_folder("admin.cdr_file", cdr.parent, found)
    for where, message in shield_file_problems(config):  # the credential shield's files
        found.error(where, message)
    for message in check_ha_environment(config):  # [ha]: the state key must be there
        found.error("ha.enabled", message)
    secrets = config.audit.sip_secrets_file
    if secrets is not None:
        try:
            config.path(secrets).read_bytes()
        except OSError as exc:
            found.warning(
                "audit.sip_secrets_file",
                f"{config.path(secrets)}: {exc.strerror} (gateway audit cannot read it)",
            )
    return found


def _check_identity(config: GatewayConfig, found: Findings, now: dt.datetime) -> None:
    identity = config.wan.identity
    if identity is None:
        return
    where = "wan.identity"
    chain = _certificates(f"{where}.certificate", identity.certificate, found)
    key_file = Path(identity.private_key)
    # The TLS loader refuses a key group or others may open (gateway.certs.store): so does
    # this check, or it would pass a configuration that cannot start.
    _key_mode(f"{where}.private_key", key_file, found, group_is_error=True)
    try:
        passphrase = identity_passphrase(identity)
    except CertificateError as exc:
        option = "passphrase_file" if identity.passphrase_file else "passphrase_env"
        found.error(f"{where}.{option}", str(exc))
        return
    try:
        key = read_private_key(key_file, passphrase, check_mode=False)
    except CertificateError as exc:
        found.error(f"{where}.private_key", str(exc))
        key = None
    if not chain:
        return
    leaf = chain[0]
    if key is not None and not key_matches(leaf, key):
        found.error(
            f"{where}.private_key",
            f"{key_file}: private key does not match the certificate in {identity.certificate}",
        )
    _validity(f"{where}.certificate", identity.certificate, leaf, found, now)
    for i in range(len(chain) - 1):
        if not is_issued_by(chain[i], chain[i + 1]):
            found.error(
                f"{where}.certificate",
                f"{identity.certificate}: certificate {i + 2} did not issue certificate {i + 1}:"
                " the chain must be leaf first, then each issuer",
            )
            break
    # The provider judges this chain with its own anchors: try every issuer it may come from
    # (a public CA, the provider's CA, the store's own CA), as `gateway certs status` does.
    extra = tuple(b for b in (config.wan.trust.ca_bundle,) if b is not None)
    local_ca = Path(config.certs.store) / "ca" / "ca.pem"
    extra += (str(local_ca),) if local_ca.is_file() else ()
    anchors = TrustAnchors(None, extra)
    try:
        problem = chain_problem(chain, anchors, now)
    except CertificateError as exc:
        problem = exc.reason
    if problem is not None:
        found.warning(
            f"{where}.certificate",
            f"{identity.certificate}: chain does not lead to {anchors.describe()}: {problem}",
        )


def _check_trust(
    where: str, trust: ProviderTrustSettings, found: Findings, now: dt.datetime
) -> None:
    if trust.ca_bundle is not None:
        for cert in _certificates(f"{where}.ca_bundle", trust.ca_bundle, found):
            problem = validity_problem(cert, now)
            if problem:
                subject = cert.subject.rfc4514_string()
                found.warning(
                    f"{where}.ca_bundle", f"{trust.ca_bundle}: anchor {subject} {problem}"
                )
    for pin in trust.spki_pins:
        try:
            normalise_pin(pin)
        except ValueError as exc:
            found.error(f"{where}.spki_pins", str(exc))


def _check_admin(config: GatewayConfig, found: Findings, now: dt.datetime) -> None:
    admin = config.admin
    if admin.tls_certificate is not None and admin.tls_private_key is not None:
        chain = _certificates("admin.tls_certificate", admin.tls_certificate, found)
        key_file = Path(admin.tls_private_key)
        _key_mode("admin.tls_private_key", key_file, found, group_is_error=False)
        try:
            key = read_private_key(key_file, None, check_mode=False)
        except CertificateError as exc:
            found.error("admin.tls_private_key", str(exc))
            key = None
        if chain:
            if key is not None and not key_matches(chain[0], key):
                found.error(
                    "admin.tls_private_key",
                    f"{key_file}: private key does not match the certificate in "
                    f"{admin.tls_certificate}",
                )
            _validity("admin.tls_certificate", admin.tls_certificate, chain[0], found, now)
    if admin.client_ca is not None:
        _certificates("admin.client_ca", admin.client_ca, found)


def _certificates(where: str, path: str, found: Findings) -> list[x509.Certificate]:
    try:
        certs = read_certificates(Path(path))
    except CertificateError as exc:
        found.error(where, str(exc))
        return []
    if not certs:
        found.error(where, f"{path}: no certificate in the file")
    return certs


def _validity(
    where: str, path: str, cert: x509.Certificate, found: Findings, now: dt.datetime
) -> None:
    problem = validity_problem(cert, now)
    if problem:
        found.error(where, f"{path}: certificate {problem}")
    elif days_left(cert, now) < EXPIRY_WARNING_DAYS:
        found.warning(
            where,
            f"{path}: certificate expires in {days_left(cert, now)} day(s) "
            f"({cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
        )


def _key_mode(where: str, path: Path, found: Findings, *, group_is_error: bool) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading the key says why, once
    if mode & 0o007:
        found.error(
            where,
            f"{path}: private key is accessible to others (mode {mode:04o}); run chmod 600 on it",
        )
    elif mode & 0o070:
        message = f"{path}: private key is accessible to its group (mode {mode:04o})"
        if group_is_error:
            found.error(where, f"{message}; the gateway refuses it: run chmod 600 on it")
        else:
            found.warning(where, f"{message}; chmod 600 unless the group is meant to read it")


def _check_folder(where: str, folder: Path, found: Findings) -> bool:
    """The folder exists and takes a new file, or its nearest existing parent does (the
    gateway creates the rest)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        found.error(where, f"{folder}: cannot be created: {probe} is not a folder")
        return False
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        what = "cannot be written" if probe == folder else f"cannot be created in {probe}"
        found.error(where, f"{folder}: {what} ({exc.strerror})")
        return False
    return True


__all__ = [
    "EXPIRY_WARNING_DAYS",
    "ConfigReport",
    "Findings",
    "check_config_file",
    "check_files",
]
