"""The certificate store folder of the repository: keys can never be committed, and its README
describes the layout ``gateway.certs.store`` really uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.certs.store import StoreLayout

ROOT = Path(__file__).resolve().parents[2]

#: Every kind of private material the certs commands write, at the paths they write it.
PRIVATE = [
    "certs/ca/ca.key",
    "certs/identity/key.pem",
    "certs/identity/key.pem.prev",
    "certs/issued/admin/key.pem",
    "certs/csr/gw.site.test.key",
    "certs/lab/gateway.key",
    "certs/lab/provider.key",
    "certs/lab/ca.key",
    "certs/gateway-from-provider.p12",
    "certs/identity/.key.pem.abc123.tmp",
]


def ignored(paths: list[str]) -> set[str]:
    """The paths git would ignore (tracked or not: ``--no-index``)."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(paths) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    # Exit 1 means "none ignored"; anything above is git failing.
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.split())


@pytest.fixture(scope="module")
def git_checkout() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


@pytest.mark.usefixtures("git_checkout")
def test_private_material_in_the_store_is_ignored() -> None:
    assert ignored(PRIVATE) == set(PRIVATE)


@pytest.mark.usefixtures("git_checkout")
def test_store_readme_and_its_gitignore_are_not_ignored() -> None:
    assert ignored(["certs/README.md", "certs/.gitignore"]) == set()


def test_readme_names_every_folder_of_the_layout() -> None:
    readme = (ROOT / "certs" / "README.md").read_text()
    layout = StoreLayout(Path("certs"))
    folders = [layout.ca_dir, layout.identity_dir, layout.issued_dir, layout.csr_dir]
    folders.append(layout.lab_dir)
    for folder in folders:
        assert f"`{folder.name}/" in readme, folder
