"""Import (PEM, PKCS#12) and rotation (gateway.certs.importer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    NoEncryption,
    pkcs12,
)

from gateway.certs import importer
from gateway.certs.errors import CertificateError
from gateway.certs.importer import (
    install_identity,
    read_pem_identity,
    read_pkcs12_identity,
    rotate_identity,
)
from gateway.certs.store import read_certificates
from tests.pki import (
    NOW,
    expired_leaf,
    future_leaf,
    make_ca,
    make_intermediate,
    make_leaf,
    write_pair,
)


def test_pem_import_reorders_chain_and_drops_strangers(tmp_path: Path) -> None:
    root = make_ca("Root", path_length=1)
    inter = make_intermediate(root)
    leaf = make_leaf(inter)
    stranger = make_ca("Stranger").certificate
    src_cert, src_key = write_pair(
        tmp_path, "src", [root.certificate, stranger, inter.certificate, leaf.certificate], leaf.key
    )
    os.chmod(src_key, 0o644)  # a downloaded key: accepted as a source, rewritten 0600
    prepared = read_pem_identity(src_cert, src_key, now=NOW)
    assert prepared.chain == (leaf.certificate, inter.certificate, root.certificate)
    assert prepared.dropped == (stranger,)
    assert any("Stranger" in n for n in prepared.notes)
    dest = tmp_path / "store" / "identity"
    identity = install_identity(prepared, dest / "cert.pem", dest / "key.pem", now=NOW)
    assert identity.chain == prepared.chain
    assert read_certificates(dest / "cert.pem") == list(prepared.chain)
    assert (dest / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (dest / "cert.pem").stat().st_mode & 0o777 == 0o644


def test_import_refuses_expired_not_yet_valid_and_foreign_key(tmp_path: Path) -> None:
    ca = make_ca()
    for stem, issued, word in (
        ("old", expired_leaf(ca), "expired"),
        ("new", future_leaf(ca), "not valid before"),
    ):
        cert, key = write_pair(tmp_path, stem, issued.chain, issued.key)
        with pytest.raises(CertificateError, match=word):
            read_pem_identity(cert, key, now=NOW)
    a, b = make_leaf(ca), make_leaf(ca)
    cert, _ = write_pair(tmp_path, "a", a.chain, a.key)
    _, key = write_pair(tmp_path, "b", b.chain, b.key)
    with pytest.raises(CertificateError, match="matches none"):
        read_pem_identity(cert, key, now=NOW)


def test_incomplete_chain_is_noted(tmp_path: Path) -> None:
    root = make_ca("Root", path_length=1)
    leaf = make_leaf(make_intermediate(root))
    cert, key = write_pair(tmp_path, "src", [leaf.certificate], leaf.key)
    prepared = read_pem_identity(cert, key, now=NOW)
    assert any("trust store" in n for n in prepared.notes)


@pytest.mark.parametrize("password", [None, b"p12-secret"])
def test_pkcs12_import(tmp_path: Path, password: bytes | None) -> None:
    root = make_ca("Root", path_length=1)
    inter = make_intermediate(root)
    leaf = make_leaf(inter)
    data = pkcs12.serialize_key_and_certificates(
        b"gw",
        leaf.key,
        leaf.certificate,
        [root.certificate, inter.certificate],
        BestAvailableEncryption(password) if password else NoEncryption(),
    )
    p12 = tmp_path / "gw.p12"
    p12.write_bytes(data)
    prepared = read_pkcs12_identity(p12, password, now=NOW)
    assert prepared.chain == (leaf.certificate, inter.certificate, root.certificate)
    if password:
        with pytest.raises(CertificateError, match="needs a password"):
            read_pkcs12_identity(p12, None, now=NOW)
        with pytest.raises(CertificateError, match="wrong password") as err:
            read_pkcs12_identity(p12, b"nope", now=NOW)
        assert "p12-secret" not in str(err.value)


def test_rotate_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca()
    old, new = make_leaf(ca), make_leaf(ca)
    live = tmp_path / "live"
    cert, key = write_pair(live, "gw", old.chain, old.key)
    new_cert, new_key = write_pair(tmp_path / "incoming", "gw", new.chain, new.key)
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(importer.os, "replace", spy)
    identity, _ = rotate_identity(new_cert, new_key, cert, key, now=NOW)
    assert identity.leaf == new.certificate
    # Both live files arrive by rename from a staged file in the same directory.
    targets = {dst: src for src, dst in replaced}
    assert Path(targets[str(key)]).parent == key.parent
    assert Path(targets[str(cert)]).parent == cert.parent
    assert read_certificates(cert)[0] == new.certificate
    assert read_certificates(cert.with_name("gw.pem.prev"))[0] == old.certificate
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.with_name("gw.key.prev").stat().st_mode & 0o777 == 0o600
    assert not [p for p in live.iterdir() if p.name.endswith(".new")]


def test_rotate_refuses_mismatched_key_and_touches_nothing(tmp_path: Path) -> None:
    ca = make_ca()
    old, new, other = make_leaf(ca), make_leaf(ca), make_leaf(ca)
    cert, key = write_pair(tmp_path / "live", "gw", old.chain, old.key)
    before = (cert.read_bytes(), key.read_bytes())
    new_cert, _ = write_pair(tmp_path / "in", "gw", new.chain, new.key)
    _, wrong_key = write_pair(tmp_path / "in", "other", other.chain, other.key)
    with pytest.raises(CertificateError, match="matches none"):
        rotate_identity(new_cert, wrong_key, cert, key, now=NOW)
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["gw.key", "gw.pem"]


def test_rotate_with_passphrase_protected_destination(tmp_path: Path) -> None:
    ca = make_ca()
    old, new = make_leaf(ca), make_leaf(ca)
    cert, key = write_pair(tmp_path / "live", "gw", old.chain, old.key, b"pass-one")
    new_cert, new_key = write_pair(tmp_path / "in", "gw", new.chain, new.key)
    identity, _ = rotate_identity(new_cert, new_key, cert, key, passphrase=b"pass-one", now=NOW)
    assert identity.leaf == new.certificate
    assert b"ENCRYPTED" in key.read_bytes()
