"""Pins, names, chain order and chain validation (gateway.certs.inspect)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.certs.inspect import (
    TrustAnchors,
    chain_problem,
    describe_key,
    name_matches,
    normalise_pin,
    order_chain,
    spki_pin,
    validity_problem,
)
from gateway.certs.store import write_certificates
from tests.pki import NOW, make_ca, make_intermediate, make_leaf


def test_pin_is_sha256_of_spki_der() -> None:
    leaf = make_leaf(make_ca())
    der = leaf.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert spki_pin(leaf.certificate) == expected
    assert spki_pin(leaf.key) == expected
    assert spki_pin(leaf.key.public_key()) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_pin_matches_openssl_pipeline(tmp_path: Path) -> None:
    leaf = make_leaf(make_ca())
    pem = tmp_path / "leaf.pem"
    write_certificates(pem, [leaf.certificate])
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(pem), "-pubkey", "-noout"], check=True, capture_output=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, check=True, capture_output=True
    ).stdout
    assert spki_pin(leaf.certificate) == base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_normalise_pin_forms() -> None:
    pin = spki_pin(make_leaf(make_ca()).certificate)
    assert normalise_pin(f'pin-sha256="{pin}"') == pin
    assert normalise_pin(f"sha256//{pin}") == pin
    with pytest.raises(ValueError):
        normalise_pin("abc")
    with pytest.raises(ValueError):
        normalise_pin("!!!")


def test_name_matching() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, ("gw.example.test", "*.lab.test", "127.0.0.1", "::1")).certificate
    assert name_matches(leaf, "GW.example.test.")
    assert name_matches(leaf, "a.lab.test")
    assert not name_matches(leaf, "a.b.lab.test")
    assert not name_matches(leaf, "lab.test")
    assert name_matches(leaf, "127.0.0.1")
    assert name_matches(leaf, "[::1]")
    assert not name_matches(leaf, "127.0.0.2")
    assert not name_matches(leaf, "other.example.test")


def test_validity() -> None:
    ca = make_ca()
    expired = make_leaf(
        ca, not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    ).certificate
    future = make_leaf(ca, not_before=NOW + dt.timedelta(days=1)).certificate
    assert (validity_problem(expired, NOW) or "").startswith("expired")
    assert (validity_problem(future, NOW) or "").startswith("not valid before")
    assert validity_problem(make_leaf(ca).certificate, NOW) is None


def test_order_chain_and_drop_strangers() -> None:
    root = make_ca("Root", path_length=1)
    inter = make_intermediate(root)
    leaf = make_leaf(inter)
    stranger = make_ca("Stranger").certificate
    shuffled = [root.certificate, stranger, leaf.certificate, inter.certificate]
    path, dropped = order_chain(shuffled, leaf.certificate)
    assert path == [leaf.certificate, inter.certificate, root.certificate]
    assert dropped == [stranger]


def test_chain_validation(tmp_path: Path) -> None:
    root = make_ca("Root", path_length=1)
    inter = make_intermediate(root)
    leaf = make_leaf(inter)
    bundle = tmp_path / "root.pem"
    write_certificates(bundle, [root.certificate])
    trust = TrustAnchors(str(bundle))
    assert chain_problem([leaf.certificate, inter.certificate], trust, NOW) is None
    # Broken chain: the intermediate is missing.
    broken = chain_problem([leaf.certificate], trust, NOW)
    assert broken is not None and "issuer" in broken
    # Validated at a time after the leaf expired.
    late = chain_problem([leaf.certificate, inter.certificate], trust, NOW + dt.timedelta(days=500))
    assert late is not None and "expired" in late
    # Another root entirely.
    other = tmp_path / "other.pem"
    write_certificates(other, [make_ca("Other").certificate])
    assert chain_problem([leaf.certificate, inter.certificate], TrustAnchors(str(other)), NOW)


def test_describe_key() -> None:
    assert describe_key(make_ca().certificate) == "EC P-256"
