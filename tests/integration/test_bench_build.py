"""The benchmark's compiled programs are built and reused only in a folder of this user's that
nobody else can write (gateway.bench.build), never at the old fixed path under /tmp."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from gateway.bench import build, loadgen

PLANTED = b"#!/bin/sh\necho planted\n"


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def assert_private_dir(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_build_dir_is_the_users_cache_made_0700(cache_home: Path) -> None:
    folder = build.build_dir()
    assert folder == cache_home / "sip-media-gateway" / "bench"
    assert_private_dir(folder)


def test_relative_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert build.cache_dir() == Path.home() / ".cache" / "sip-media-gateway" / "bench"


def test_an_opened_up_cache_folder_of_ours_is_closed_again(cache_home: Path) -> None:
    folder = cache_home / "sip-media-gateway" / "bench"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    assert build.build_dir() == folder
    assert_private_dir(folder)


def test_a_symlink_in_place_of_the_cache_is_not_followed(cache_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (cache_home / "sip-media-gateway").mkdir(parents=True)
    (cache_home / "sip-media-gateway" / "bench").symlink_to(elsewhere)
    folder = build.build_dir()
    assert folder.resolve() != elsewhere.resolve()
    assert folder.parent == Path(tempfile.gettempdir())
    assert_private_dir(folder)
    folder.rmdir()


def test_a_cache_under_a_folder_others_can_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user could rename our folder away there and put their own in its place.
    writable = tmp_path / "world-writable"
    writable.mkdir()
    writable.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(writable))
    folder = build.build_dir()
    assert writable not in folder.parents
    assert folder.name.startswith("gateway-bench-")
    assert_private_dir(folder)
    folder.rmdir()


def test_a_file_others_can_write_is_not_a_private_executable(tmp_path: Path) -> None:
    exe = tmp_path / "prog"
    exe.write_bytes(PLANTED)
    exe.chmod(0o755)
    assert build.is_private_executable(exe)
    exe.chmod(0o775)
    assert not build.is_private_executable(exe)
    exe.chmod(0o644)
    assert not build.is_private_executable(exe)
    link = tmp_path / "link"
    link.symlink_to(exe)
    exe.chmod(0o755)
    assert not build.is_private_executable(link)


needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="no C compiler: the load generator is compiled at benchmark time",
)


def old_predictable_path(tmp: Path) -> Path:
    """Where the generator used to be built and reused: ``$TMPDIR/gateway-bench/loadgen-<16>``."""
    spec = importlib.util.find_spec("pylibsrtp._binding")
    assert spec is not None and spec.origin is not None
    text = loadgen.find_source().read_bytes()
    digest = hashlib.sha256(text + str(Path(spec.origin)).encode()).hexdigest()[:16]
    return tmp / "gateway-bench" / f"loadgen-{digest}"


@needs_gcc
def test_planted_binary_at_the_old_tmp_path_is_not_used(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    planted = old_predictable_path(tmp)
    planted.parent.mkdir()
    planted.write_bytes(PLANTED)
    planted.chmod(0o777)

    exe = loadgen.build_loadgen()

    assert exe.parent == cache_home / "sip-media-gateway" / "bench"
    assert tmp not in exe.parents
    assert_private_dir(exe.parent)
    assert build.is_private_executable(exe)
    assert exe.read_bytes()[:4] == b"\x7fELF"
    assert planted.read_bytes() == PLANTED
    # Built once per source: the second call reuses the same file.
    inode = exe.stat().st_ino
    assert loadgen.build_loadgen() == exe
    assert exe.stat().st_ino == inode


@needs_gcc
def test_a_writable_file_under_the_cached_name_is_rebuilt(cache_home: Path) -> None:
    exe = loadgen.build_loadgen()
    exe.unlink()
    exe.write_bytes(PLANTED)
    exe.chmod(0o777)
    assert loadgen.build_loadgen() == exe
    assert exe.read_bytes()[:4] == b"\x7fELF"
    assert build.is_private_executable(exe)


def test_source_ships_inside_the_package() -> None:
    source = loadgen.find_source()
    assert source.parent == Path(loadgen.__file__).parent
    assert b"srtp_protect" in source.read_bytes()
