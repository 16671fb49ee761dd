"""The test data in tests/data is intact: every file its SHA256SUMS lists has that digest, and
nothing sits beside the listed files unaccounted for.

The RFC 4475 messages are byte-exact (CRLF, NUL bytes, trailing spaces); an editor, a line-ending
conversion or a partial copy changes what the parser tests test, so a damaged copy must fail
here by name rather than as a puzzling parser verdict elsewhere.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.testdata import RFC4475_DIR

#: Files of the folder that describe the data and are not covered by SHA256SUMS.
RFC4475_DOCS = {"SHA256SUMS", "INDEX.md", "README.md", ".gitattributes"}


def read_sums(folder: Path) -> dict[str, str]:
    """Relative path -> expected hex digest, from ``sha256sum`` output (text or binary mode)."""
    sums: dict[str, str] = {}
    for number, line in enumerate((folder / "SHA256SUMS").read_text("ascii").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        assert sep and len(digest) == 64, f"SHA256SUMS line {number} is not '<digest>  <file>'"
        name = name[1:] if name[:1] in (" ", "*") else name
        assert name not in sums, f"SHA256SUMS lists {name} twice"
        sums[name] = digest.lower()
    return sums


RFC4475_SUMS = read_sums(RFC4475_DIR)


def test_sums_cover_the_rfc_messages() -> None:
    # The RFC's archive has 50 members: the 49 messages and unreferenced/test.dat.
    assert len(RFC4475_SUMS) == 50
    assert "unreferenced/test.dat" in RFC4475_SUMS
    assert all(name.endswith(".dat") for name in RFC4475_SUMS)


def damage(folder: Path, name: str, sums: dict[str, str]) -> str | None:
    """What is wrong with ``folder/name`` against its listed digest, or None when it matches."""
    path = folder / name
    if not path.is_file():
        return f"{path} is listed in SHA256SUMS but missing"
    if hashlib.sha256(path.read_bytes()).hexdigest() != sums[name]:
        return f"{path} differs from SHA256SUMS (damaged copy?)"
    return None


@pytest.mark.parametrize("name", sorted(RFC4475_SUMS))
def test_rfc4475_file_matches_its_digest(name: str) -> None:
    problem = damage(RFC4475_DIR, name, RFC4475_SUMS)
    assert problem is None, problem


def test_no_unlisted_file_in_rfc4475() -> None:
    present = {
        path.relative_to(RFC4475_DIR).as_posix()
        for path in RFC4475_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert present >= RFC4475_DOCS, f"missing beside the data: {RFC4475_DOCS - present}"
    assert present - RFC4475_DOCS == set(RFC4475_SUMS)


def test_damaged_copy_is_named(tmp_path: Path) -> None:
    # The check must be able to fail: one converted line ending and one lost file are caught,
    # and an intact file still passes.
    copy = tmp_path / "rfc4475"
    shutil.copytree(RFC4475_DIR, copy)
    wsinv = copy / "wsinv.dat"
    original = wsinv.read_bytes()
    assert b"\r\n" in original
    wsinv.write_bytes(original.replace(b"\r\n", b"\n", 1))
    (copy / "unreferenced" / "test.dat").unlink()
    sums = read_sums(copy)
    assert damage(copy, "wsinv.dat", sums) == f"{wsinv} differs from SHA256SUMS (damaged copy?)"
    assert damage(copy, "unreferenced/test.dat", sums) == (
        f"{copy / 'unreferenced' / 'test.dat'} is listed in SHA256SUMS but missing"
    )
    assert damage(copy, "intmeth.dat", sums) is None
