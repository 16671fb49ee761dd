"""CA creation, issuing and CSRs (gateway.certs.authority)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.certs.authority import KeyType, Usage, create_ca, create_csr, parse_names
from gateway.certs.inspect import TrustAnchors, chain_problem, spki_pin, subject_alt_names
from gateway.certs.store import write_certificates
from tests.pki import NOW, make_ca, make_leaf


def test_ca_defaults_to_ecdsa_p256_with_ca_extensions() -> None:
    ca = make_ca()
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert ca.key.curve.name == "secp256r1"
    bc = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.certificate.not_valid_after_utc - NOW == dt.timedelta(days=3650)


def test_ca_rsa_3072_on_request() -> None:
    ca = create_ca("RSA CA", key_type=KeyType.RSA_3072)
    assert isinstance(ca.key, rsa.RSAPrivateKey)
    assert ca.key.key_size == 3072


def test_issued_leaf_has_sans_usage_and_chains_to_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = make_ca()
    leaf = make_leaf(ca, ("gw.example.test", "192.0.2.7"), usage=Usage.SERVER)
    assert subject_alt_names(leaf.certificate) == ["DNS:gw.example.test", "IP:192.0.2.7"]
    eku = leaf.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bundle = tmp_path / "ca.pem"
    write_certificates(bundle, [ca.certificate])
    assert chain_problem(leaf.chain, TrustAnchors(str(bundle)), NOW) is None
    assert leaf.chain == (leaf.certificate, ca.certificate)


def test_client_usage() -> None:
    leaf = make_leaf(make_ca(), usage=Usage.CLIENT)
    eku = leaf.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_csr_carries_all_names_and_is_signed() -> None:
    key, csr = create_csr(parse_names(["sip.example.test", "203.0.113.5"]), organization="Example")
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sip.example.test"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.5"]
    assert spki_pin(csr.public_key()) == spki_pin(key)


def test_parse_names() -> None:
    names = parse_names(["DNS:Gw.Example.test.", "IP:::1", "192.0.2.1", "*.lab.test", "192.0.2.1"])
    assert [str(n.value) for n in names] == ["gw.example.test", "::1", "192.0.2.1", "*.lab.test"]
    for bad in ("", "IP:not-an-ip", "bad name", "a.*.b"):
        with pytest.raises(ValueError):
            parse_names([bad])
