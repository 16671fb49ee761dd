"""``gateway install``: the one layout on a host, from answers to a few questions.

What it does, as root on a Debian-like host (deploy/gateway.service lists the same layout):

- the system user and group ``sip-media-gateway`` (``useradd --system``), when missing;
- /var/lib/sip-media-gateway/{,state,certs} (0750, the gateway's user) and
  /etc/sip-media-gateway (0750, root and the gateway's group);
- /etc/sip-media-gateway/gateway.toml from deploy/gateway.example.toml with the answers filled
  in (provider host, LAN and WAN addresses, the phones' subnet, the country's dialling rules
  from the phonenumbers metadata), and gateway.env with a generated admin token, both 0640
  root and the gateway's group;
- the link /usr/local/sbin/sip-media-gateway to this interpreter's ``gateway`` script (the
  unit's ExecStart needs an absolute path; deploy/gateway.service says why) and the unit in
  /etc/systemd/system;
- then the ``check-config`` checks on the written file, and the next commands to type.

An existing file is never overwritten (it is named as kept), so running it again is harmless.
It starts no service. ``--root DIR`` puts every path, in the files written too, under DIR: a
self-contained tree for a test or a lab, made without useradd or chown.

This module does I/O (files, users, the clock) and is glue, not a core.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phonenumbers import SUPPORTED_REGIONS, PhoneMetadata

from gateway.config import SYSTEM_CONFIG_DIR, SYSTEM_DATA_DIR
from gateway.config_files import check_config_file

USER = "sip-media-gateway"
UNIT_NAME = "sip-media-gateway.service"
LINK = "/usr/local/sbin/sip-media-gateway"
#: deploy/ files, shipped in the package (gateway/site_files links to them in a checkout).
SITE_FILES = Path(__file__).resolve().parent / "site_files"
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?$")  # fmt: skip


class InstallError(Exception):
    """An answer or a step that stops the install; the message is one line for the operator."""


@dataclass(frozen=True)
class Answers:
    """What the installer asks."""

    provider_host: str
    lan_address: str
    wan_address: str
    country: str
    #: The phones' subnet ([policy.allowlist] lan); default: the /24 of the LAN address.
    lan_subnet: str = ""


@dataclass(frozen=True)
class Layout:
    """Every path the installer writes, under ``root``."""

    root: Path

    def under(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def system(self) -> bool:
        """A real install (root "/"), where users and owners are set."""
        return self.root == Path("/")

    @property
    def config_dir(self) -> Path:
        return self.under(SYSTEM_CONFIG_DIR)

    @property
    def data_dir(self) -> Path:
        return self.under(SYSTEM_DATA_DIR)

    @property
    def link(self) -> Path:
        return self.under(LINK)

    @property
    def unit(self) -> Path:
        return self.under("/etc/systemd/system/" + UNIT_NAME)

    def text(self, text: str) -> str:
        """``text`` with the layout's absolute paths moved under ``root``."""
        if self.system:
            return text
        for path in (SYSTEM_CONFIG_DIR, SYSTEM_DATA_DIR, LINK):
            text = text.replace(path, str(self.under(path)))
        return text


# --- answers --------------------------------------------------------------------------------


def check_answers(answers: Answers) -> Answers:
    """Validated answers, the subnet filled in; InstallError names the wrong one."""
    host = answers.provider_host.strip()
    if not host or not (_is_address(host) or _HOST.match(host)):
        raise InstallError(f"provider host {host!r} is not a host name or an address")
    for what, value in (("LAN", answers.lan_address), ("WAN", answers.wan_address)):
        if not _is_address(value):
            raise InstallError(f"{what} address {value!r} is not an IP address")
    if answers.lan_address == answers.wan_address:
        raise InstallError("the LAN and WAN addresses must differ (one per side)")
    country = answers.country.strip().upper()
    if country not in SUPPORTED_REGIONS:
        raise InstallError(f"country {answers.country!r} is not an ISO 3166 code (US, GB, DE …)")
    subnet = answers.lan_subnet or _default_subnet(answers.lan_address)
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise InstallError(f"LAN subnet {subnet!r} is not a CIDR network") from None
    if ipaddress.ip_address(answers.lan_address) not in net:
        raise InstallError(f"the LAN address {answers.lan_address} is not in {net}")
    return Answers(host, answers.lan_address, answers.wan_address, country, str(net))


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _default_subnet(address: str) -> str:
    prefix = 24 if ipaddress.ip_address(address).version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def dialplan_for(country: str) -> dict[str, object]:
    """``[policy.dialplan]`` number normalisation for ``country`` from the phonenumbers
    metadata: calling code, trunk and international prefixes, national number lengths."""
    meta = PhoneMetadata.metadata_for_region(country)
    if meta is None:
        raise InstallError(f"no numbering data for {country}")
    international = meta.preferred_international_prefix or meta.international_prefix or ""
    if not international.isdigit():
        raise InstallError(
            f"{country} has several international prefixes ({international}): "
            "install with another country and set [policy.dialplan] by hand"
        )
    lengths = sorted(
        n
        for desc in (meta.fixed_line, meta.mobile)
        if desc is not None
        for n in desc.possible_length or ()
        if 0 < n <= 14
    )
    if not lengths and meta.general_desc is not None:
        lengths = sorted(n for n in meta.general_desc.possible_length or () if 0 < n <= 14)
    if not lengths:
        raise InstallError(f"no national number lengths for {country}")
    national = meta.national_prefix or ""
    return {
        "country_code": str(meta.country_code),
        "national_prefix": national,
        "international_prefix": international,
        "national_min_length": lengths[0],
        "national_max_length": lengths[-1],
        # NANP dials national numbers without the "1"; without a trunk prefix there is no
        # other way to dial them.
        "national_prefix_optional": meta.country_code == 1 or not national,
    }


# --- the files ------------------------------------------------------------------------------


def render_config(example: str, answers: Answers, layout: Layout) -> str:
    """The starter configuration: the example with the answers filled in.

    [wan.identity] and the WAN listener are left commented out: a site whose gateway
    registers to its provider needs no certificate of its own, and check-config would refuse
    the example's identity files, which do not exist yet (docs/certificates.md makes them).
    """
    values: dict[tuple[str, str], object] = {
        ("lan", "sip_address"): answers.lan_address,
        ("lan", "media_address"): answers.lan_address,
        ("wan", "provider_host"): answers.provider_host,
        ("wan", "domain"): answers.provider_host,
        ("wan", "sip_address"): answers.wan_address,
        ("wan", "media_address"): answers.wan_address,
        ("policy.allowlist", "lan"): [answers.lan_subnet],
        ("certs", "gateway_names"): [answers.wan_address],
    }
    values.update({("policy.dialplan", k): v for k, v in dialplan_for(answers.country).items()})
    hidden = {("wan", "listen_port")}
    lines = layout.text(example).splitlines()
    out = [
        "# Written by `gateway install` from deploy/gateway.example.toml: provider "
        f"{answers.provider_host}, LAN {answers.lan_address} ({answers.lan_subnet}), "
        f"WAN {answers.wan_address}, country {answers.country}.",
    ]
    table = ""
    found: set[tuple[str, str]] = set()
    for line in lines:
        header = re.match(r"^\[([A-Za-z0-9_.\"-]+)\]\s*$", line)
        if header:
            table = header.group(1)
        key = re.match(r"^([A-Za-z0-9_]+)\s*=", line)
        if table == "wan.identity" and (header or key):
            out.append("# " + line)
            continue
        if key and (table, key.group(1)) in values:
            found.add((table, key.group(1)))
            out.append(f"{key.group(1)} = {_toml(values[(table, key.group(1))])}")
            continue
        if key and (table, key.group(1)) in hidden:
            out.append("# " + line)
            continue
        out.append(line)
    missing = sorted(f"[{t}] {k}" for t, k in set(values) - found)
    if missing:
        raise InstallError(f"the example configuration has no {', '.join(missing)}")
    return "\n".join(out) + "\n"


def _toml(value: object) -> str:
    # JSON strings, numbers, booleans and arrays of them are TOML too.
    return json.dumps(value)


def render_env(example: str) -> str:
    """gateway.env with a fresh admin token (the example leaves it empty)."""
    token = secrets.token_urlsafe(32)
    text, count = re.subn(r"(?m)^GATEWAY_ADMIN_TOKEN=.*$", f"GATEWAY_ADMIN_TOKEN={token}", example)
    if count != 1:
        raise InstallError("the example environment file has no GATEWAY_ADMIN_TOKEN line")
    return text


def gateway_script() -> Path:
    """This interpreter's ``gateway`` script (where pip put it beside the interpreter), else
    the script being run."""
    beside = Path(sys.executable).parent / "gateway"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("gateway")
    if found:
        return Path(found).resolve()
    raise InstallError("cannot find the `gateway` script of this installation")


# --- the install ----------------------------------------------------------------------------


class Installer:
    """Carries out the steps, saying each one on ``say``."""

    def __init__(self, layout: Layout, say: Callable[[str], None]) -> None:
        self.layout = layout
        self.say = say
        # Owners only on a real install by root; a tree under --root is the caller's.
        self.chown = layout.system and os.geteuid() == 0

    def run(self, answers: Answers) -> bool:
        """Every step; True when the written configuration passes check-config."""
        lay = self.layout
        if self.chown:
            self.ensure_user()
        owner, group = (USER, USER) if self.chown else (None, None)
        self.folder(lay.data_dir, 0o750, owner, group)
        self.folder(lay.data_dir / "state", 0o750, owner, group)
        self.folder(lay.data_dir / "certs", 0o750, owner, group)
        self.folder(lay.config_dir, 0o750, "root" if self.chown else None, group)
        config = lay.config_dir / "gateway.toml"
        example = (SITE_FILES / "gateway.example.toml").read_text(encoding="utf-8")
        self.file(config, lambda: render_config(example, answers, lay), 0o640, group)
        env_example = (SITE_FILES / "gateway.env.example").read_text(encoding="utf-8")
        self.file(lay.config_dir / "gateway.env", lambda: render_env(env_example), 0o640, group)
        self.link(gateway_script())
        unit = (SITE_FILES / "gateway.service").read_text(encoding="utf-8")
        self.folder(lay.unit.parent, 0o755, None, None, quiet=True)
        self.file(lay.unit, lambda: lay.text(unit), 0o644, None)
        report = check_config_file(str(config))
        for line in report.lines():
            self.say(line)
        self.say(f"check-config: {report.summary()}")
        return report.ok

    def ensure_user(self) -> None:
        try:
            pwd.getpwnam(USER)
            self.say(f"user {USER}: exists")
            return
        except KeyError:
            pass
        command = [
            "useradd", "--system", "--user-group", "--home-dir", SYSTEM_DATA_DIR,
            "--no-create-home", "--shell", "/usr/sbin/nologin", USER,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise InstallError(f"useradd failed: {done.stderr.strip() or done.returncode}")
        self.say(f"user {USER}: created (system user, no login)")

    def folder(
        self, path: Path, mode: int, owner: str | None, group: str | None, quiet: bool = False
    ) -> None:
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        if existed and quiet:
            return
        path.chmod(mode)
        self._own(path, owner, group)
        if not quiet:
            self.say(f"{path}/: {'exists' if existed else 'created'}, mode {mode:04o}")

    def file(self, path: Path, make: Callable[[], str], mode: int, group: str | None) -> None:
        if path.exists() or path.is_symlink():
            self.say(f"{path}: exists, kept as it is (not overwritten)")
            return
        text = make()
        temp = path.with_name(f".{path.name}.new")
        # Created with its final mode: a secret is never readable by others, even briefly.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, mode)
        self._own(temp, "root" if group else None, group)
        os.replace(temp, path)
        self.say(f"{path}: written, mode {mode:04o}")

    def link(self, target: Path) -> None:
        link = self.layout.link
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                self.say(f"{link} -> {target}: exists")
                return
            link.unlink()
        elif link.exists():
            self.say(f"{link}: a file, not a link: kept; the unit runs it")
            return
        link.symlink_to(target)
        self.say(f"{link} -> {target}: linked")

    def _own(self, path: Path, owner: str | None, group: str | None) -> None:
        if not self.chown or (owner is None and group is None):
            return
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
        os.chown(path, uid, gid)


def next_steps(layout: Layout) -> list[str]:
    """What the operator types next (the installer starts nothing)."""
    config = layout.config_dir / "gateway.toml"
    env = layout.config_dir / "gateway.env"
    return [
        "next:",
        f"  edit {config} if needed (trunks, [policy] rules; docs: deploy/SITE-GUIDE.md)",
        "  systemctl daemon-reload && systemctl enable --now sip-media-gateway",
        f"  set -a; . {env}; set +a; {layout.link} audit --config {config}",
        f"  journalctl -u sip-media-gateway -f    # and: {layout.link} status",
    ]


# --- the command ----------------------------------------------------------------------------


def add_install_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gateway install``."""
    p = subparsers.add_parser(
        "install",
        help="as root: user, folders, starter configuration, unit (starts nothing)",
        description="Create the user, folders, a starter configuration, gateway.env and the "
        "systemd unit of the one layout; never overwrites a file; starts no service.",
    )
    p.add_argument("--provider-host", help="the provider's SIP host name or address")
    p.add_argument("--lan-address", help="the gateway's address on the phones' network")
    p.add_argument("--lan-subnet", help="the phones' subnet (default: the /24 of --lan-address)")
    p.add_argument("--wan-address", help="the gateway's address toward the provider")
    p.add_argument("--country", help="ISO 3166 code of the site's country (default: US)")
    p.add_argument("--yes", action="store_true", help="ask nothing: take the flags and defaults")
    p.add_argument("--root", default="/", help="put every path under DIR (tests, labs)")
    p.set_defaults(func=cmd_install)


def _ask(prompt: str, default: str | None) -> str:
    shown = f" [{default}]" if default else ""
    while True:
        try:
            value = input(f"{prompt}{shown}: ").strip()
        except EOFError:
            value = ""
        if value or default:
            return value or str(default)


def gather(args: argparse.Namespace) -> Answers:
    """The answers: from the flags with --yes, else asked with the flags as defaults."""
    fields = (
        ("provider_host", "Provider SIP host (name or address)", None),
        ("lan_address", "Gateway address on the phones' LAN", None),
        ("lan_subnet", "Phones' subnet (CIDR)", ""),
        ("wan_address", "Gateway address toward the provider (WAN)", None),
        ("country", "Country (ISO 3166 code)", "US"),
    )
    values: dict[str, str] = {}
    for name, prompt, default in fields:
        given = getattr(args, name)
        if args.yes:
            if given is None and default is None:
                flag = "--" + name.replace("_", "-")
                raise InstallError(f"--yes needs {flag}")
            values[name] = given if given is not None else default or ""
            continue
        if name == "lan_subnet":
            default = (
                _default_subnet(values["lan_address"])
                if _is_address(values["lan_address"])
                else None
            )
        values[name] = _ask(prompt, given or default)
    return check_answers(Answers(**values))


def cmd_install(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.root).resolve())
    if layout.system and os.geteuid() != 0:
        print("error: gateway install writes /etc and /var/lib: run it as root", file=sys.stderr)
        return 2
    try:
        answers = gather(args)
        ok = Installer(layout, print).run(answers)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for line in next_steps(layout):
        print(line)
    return 0 if ok else 1
