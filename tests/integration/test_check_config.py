"""``gateway check-config`` as an operator runs it after ``pip install``: broken copies of
deploy/gateway.example.toml, and what a person reads, compared with tests/data/check_config/.

The package is installed once per session into a plain venv (no system site packages, so a
dependency missing from pyproject.toml fails here), non-editable, from this checkout; pip takes
the dependencies from its index (PyPI in CI). The copies live under tmp_path with the example's
/var/lib/sip-media-gateway layout moved there and real certificates from tests/pki.py; the
output has tmp_path replaced by <site> before it is compared.

Line numbers are checked against the broken copy itself (the named line must hold the field)
and then written as ``gateway.toml:L:`` in the expected files, so that editing the example does
not break them. Set GATEWAY_UPDATE_EXPECTED=1 to rewrite the expected files (then read the diff).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.certs.store import write_certificates, write_private_key
from tests.pki import make_ca, make_leaf

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "gateway.example.toml"
EXPECTED = REPO / "tests" / "data" / "check_config"
VAR = "/var/lib/sip-media-gateway"


@pytest.fixture(scope="session")
def installed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``gateway`` script of a fresh venv holding this checkout, installed by pip."""
    env_dir = tmp_path_factory.mktemp("fresh-venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    res = subprocess.run(
        [env_dir / "bin" / "python", "-m", "pip", "install", "-q", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return env_dir / "bin" / "gateway"


def make_site(root: Path) -> Path:
    """The example configuration with its files under ``root``: an identity issued by a
    site CA the provider trust names, a state folder; returns the configuration file."""
    certs = root / "var" / "certs"
    for folder in ("identity", "trust", "other"):
        (certs / folder).mkdir(parents=True)
    now = dt.datetime.now(dt.UTC)
    ca = make_ca("Site CA", now=now)
    write_certificates(certs / "trust" / "provider-ca.pem", (ca.certificate,))
    for folder, stem in (("identity", ""), ("other", "other-")):
        leaf = make_leaf(ca, ["gateway.site.example"], now=now)
        write_certificates(certs / folder / f"{stem}cert.pem", leaf.chain[:1])
        write_private_key(certs / folder / f"{stem}key.pem", leaf.key)
    (root / "var" / "state").mkdir()
    text = EXAMPLE.read_text()
    text = text.replace("# ca_bundle = ", "ca_bundle = ").replace(VAR, str(root / "var"))
    path = root / "gateway.toml"
    path.write_text(text)
    return path


def edit(path: Path, *pairs: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)


def several_mistakes_per_table(site: Path) -> None:
    edit(
        site,
        ("sip_port = 5060", 'sip_port = "5060"'),
        ('transports = ["udp", "tcp"]', 'transports = ["udp", "sctp"]'),
        ("media_ports = [40000, 44999]", "media_ports = [40000]\nmedia_adress = 1"),
        ('number_format = "e164"', 'number_format = "international"'),
        ("keepalive_interval = 25.0", "keepalive = 25.0"),
        ("ban_growth = 4.0", "ban_growth = 0.5"),
        ("auth_failures = 5", "auth_failures = 0"),
        ('level = "info"', 'levl = "info"'),
        ("[audit]", "[[trunk]]\nname = 'x'\n\n[audit]"),
    )


def missing_certificate(site: Path) -> None:
    (site.parent / "var" / "certs" / "identity" / "cert.pem").unlink()


def key_of_another_certificate(site: Path) -> None:
    other = site.parent / "var" / "certs" / "other" / "other-key.pem"
    other.replace(site.parent / "var" / "certs" / "identity" / "key.pem")


def world_readable_key(site: Path) -> None:
    (site.parent / "var" / "certs" / "identity" / "key.pem").chmod(0o644)


def unwritable_state_folder(site: Path) -> None:
    # Permission bits do not stop root (CI runs as root): a file where a folder must be does.
    (site.parent / "var" / "lib").write_text("not a folder\n")
    edit(
        site,
        (f'directory = "{site.parent}/var/state"', f'directory = "{site.parent}/var/lib/state"'),
    )


CASES: dict[str, Callable[[Path], None]] = {
    "valid": lambda site: None,
    "mistakes": several_mistakes_per_table,
    "missing-certificate": missing_certificate,
    "key-mismatch": key_of_another_certificate,
    "world-readable-key": world_readable_key,
    "unwritable-state": unwritable_state_folder,
}


def check(gateway: Path, site: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    res = subprocess.run(
        [str(gateway), "check-config", site.name],
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    shown = (res.stderr + res.stdout).replace(str(site.parent), "<site>")
    return res.returncode, lines_checked(shown, site)


_LOCATED = re.compile(r"^(?:error|warning): gateway\.toml:(\d+): ([^\s:]+):", re.MULTILINE)


def lines_checked(shown: str, site: Path) -> str:
    """``shown`` with each ``gateway.toml:N:`` checked (line N of the file names the field's
    last part) and written ``gateway.toml:L:``."""
    lines = site.read_text().splitlines()

    def checked(found: re.Match[str]) -> str:
        number, field = int(found.group(1)), found.group(2)
        leaf = field.rsplit(".", 1)[-1]
        assert leaf in lines[number - 1], f"line {number} does not name {field}"
        return found.group(0).replace(f"gateway.toml:{number}:", "gateway.toml:L:", 1)

    return _LOCATED.sub(checked, shown)


def project_gateway() -> Path:
    """The ``gateway`` script of the venv running the tests."""
    return Path(sys.executable).parent / "gateway"


@pytest.mark.parametrize("case", [c for c in CASES if c != "mistakes"])
def test_what_an_operator_reads(case: str, tmp_path: Path) -> None:
    # A fresh venv took 1.5 to 8.5 minutes on a loaded 2-core host: the project's own venv
    # serves these cases, the fresh one the next test.
    compare(case, project_gateway(), tmp_path)


def test_what_an_operator_reads_after_a_fresh_install(
    installed_gateway: Path, tmp_path: Path
) -> None:
    compare("mistakes", installed_gateway, tmp_path)


def compare(case: str, gateway: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    CASES[case](site)
    status, shown = check(gateway, site)
    expected_file = EXPECTED / f"{case}.txt"
    if os.environ.get("GATEWAY_UPDATE_EXPECTED"):
        expected_file.write_text(shown)
    assert shown == expected_file.read_text()
    assert status == (0 if case == "valid" else 1)


def test_run_refuses_to_start_with_the_same_lines(tmp_path: Path) -> None:
    """``gateway run`` prints what check-config prints and opens nothing (exit 2)."""
    site = make_site(tmp_path)
    key_of_another_certificate(site)
    missing_certificate(site)
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", site.name],
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    shown = lines_checked(res.stderr.replace(str(site.parent), "<site>"), site)
    assert shown == (
        "error: gateway.toml:L: wan.identity.certificate: <site>/var/certs/identity/cert.pem: "
        "cannot read certificate file: No such file or directory\n"
        "gateway.toml: configuration test failed: 1 problem(s)\n"
    )
