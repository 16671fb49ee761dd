"""Loading identities for the TLS layer, contexts, pins and the rotation watcher."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

import pytest

from gateway.certs.errors import CertificateError, PinMismatchError
from gateway.certs.inspect import spki_pin
from gateway.certs.material import (
    IdentityWatcher,
    build_client_context,
    build_server_context,
    load_identity,
    verify_pins,
)
from gateway.certs.settings import ProviderTrustSettings
from gateway.certs.store import write_certificates
from tests.pki import (
    NOW,
    expired_leaf,
    future_leaf,
    make_ca,
    make_intermediate,
    make_leaf,
    write_pair,
)


def test_load_identity_ok(tmp_path: Path) -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    cert, key = write_pair(tmp_path, "gw", leaf.chain, leaf.key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    identity = load_identity(cert, key, now=NOW)
    assert identity.leaf == leaf.certificate
    assert identity.pin == spki_pin(leaf.key)
    assert "key=" not in repr(identity) and "BEGIN" not in repr(identity)


def test_expired_and_not_yet_valid_refused(tmp_path: Path) -> None:
    ca = make_ca()
    for stem, issued, word in (
        ("old", expired_leaf(ca), "expired"),
        ("new", future_leaf(ca), "not valid before"),
    ):
        cert, key = write_pair(tmp_path, stem, issued.chain, issued.key)
        with pytest.raises(CertificateError) as err:
            load_identity(cert, key, now=NOW)
        assert err.value.file == str(cert)
        assert word in err.value.reason


def test_wrong_key_refused_naming_the_key_file(tmp_path: Path) -> None:
    ca = make_ca()
    a, b = make_leaf(ca), make_leaf(ca)
    cert, _ = write_pair(tmp_path, "a", a.chain, a.key)
    _, other_key = write_pair(tmp_path, "b", b.chain, b.key)
    with pytest.raises(CertificateError) as err:
        load_identity(cert, other_key, now=NOW)
    assert err.value.file == str(other_key)
    assert "does not match" in err.value.reason


def test_key_readable_by_others_refused(tmp_path: Path) -> None:
    leaf = make_leaf(make_ca())
    cert, key = write_pair(tmp_path, "gw", leaf.chain, leaf.key)
    os.chmod(key, 0o644)
    with pytest.raises(CertificateError) as err:
        load_identity(cert, key, now=NOW)
    assert err.value.file == str(key)
    assert "0644" in err.value.reason


def test_encrypted_key(tmp_path: Path) -> None:
    leaf = make_leaf(make_ca())
    cert, key = write_pair(tmp_path, "gw", leaf.chain, leaf.key, passphrase=b"s3cret-phrase")
    assert load_identity(cert, key, b"s3cret-phrase", now=NOW).leaf == leaf.certificate
    with pytest.raises(CertificateError) as err:
        load_identity(cert, key, now=NOW)
    assert "encrypted" in err.value.reason
    with pytest.raises(CertificateError) as err:
        load_identity(cert, key, b"wrong", now=NOW)
    assert "s3cret" not in str(err.value) and "wrong" in err.value.reason


def test_chain_out_of_order_refused(tmp_path: Path) -> None:
    root = make_ca("Root", path_length=1)
    inter = make_intermediate(root)
    leaf = make_leaf(inter)
    cert, key = write_pair(
        tmp_path, "gw", [leaf.certificate, root.certificate, inter.certificate], leaf.key
    )
    with pytest.raises(CertificateError) as err:
        load_identity(cert, key, now=NOW)
    assert "order" in err.value.reason


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str
) -> tuple[ssl.SSLObject, BaseException | None]:
    """Run a TLS handshake in memory; returns the client object and any client error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    error: BaseException | None = None
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                if side is client:
                    return client, exc
                error = exc
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client, error


def test_contexts_handshake_and_pins(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = make_ca(now=now)
    leaf = make_leaf(ca, ("provider.lab", "127.0.0.1"), now=now)
    cert, key = write_pair(tmp_path, "p", leaf.chain, leaf.key)
    bundle = tmp_path / "ca.pem"
    write_certificates(bundle, [ca.certificate])
    server_ctx = build_server_context(load_identity(cert, key))
    client_ctx = build_client_context(ProviderTrustSettings(ca_bundle=str(bundle)))
    assert client_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_ctx.verify_mode == ssl.CERT_REQUIRED and client_ctx.check_hostname
    client, err = _handshake(server_ctx, client_ctx, "provider.lab")
    assert err is None
    verify_pins(client, [spki_pin(leaf.certificate)])
    verify_pins(client, [])
    with pytest.raises(PinMismatchError):
        verify_pins(client, [spki_pin(make_ca().certificate)])
    # Wrong name fails verification.
    _, err = _handshake(server_ctx, client_ctx, "other.lab")
    assert isinstance(err, ssl.SSLCertVerificationError)


def test_mutual_tls_server_requires_client_cert(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = make_ca(now=now)
    srv = make_leaf(ca, ("provider.lab",), now=now)
    cli = make_leaf(ca, ("gateway.lab",), now=now)
    bundle = tmp_path / "ca.pem"
    write_certificates(bundle, [ca.certificate])
    s_cert, s_key = write_pair(tmp_path, "s", srv.chain, srv.key)
    c_cert, c_key = write_pair(tmp_path, "c", cli.chain, cli.key)
    server_ctx = build_server_context(load_identity(s_cert, s_key), client_ca=str(bundle))
    assert server_ctx.verify_mode == ssl.CERT_REQUIRED
    trust = ProviderTrustSettings(ca_bundle=str(bundle))
    with_id = build_client_context(trust, load_identity(c_cert, c_key))
    _, err = _handshake(server_ctx, with_id, "provider.lab")
    assert err is None


def test_watcher_takes_up_rotation_and_waits_out_mismatch(tmp_path: Path) -> None:
    ca = make_ca()
    old, new = make_leaf(ca), make_leaf(ca)
    cert, key = write_pair(tmp_path, "gw", old.chain, old.key)
    watcher = IdentityWatcher(str(cert), str(key), current=load_identity(cert, key, now=NOW))
    assert watcher.poll(NOW) is None
    # Half-way through a rotation: new key, old certificate.
    write_pair(tmp_path / "new", "gw", new.chain, new.key)
    os.replace(tmp_path / "new" / "gw.key", key)
    assert watcher.poll(NOW) is None
    assert watcher.last_error is not None and "does not match" in watcher.last_error.reason
    assert watcher.current is not None and watcher.current.leaf == old.certificate
    os.replace(tmp_path / "new" / "gw.pem", cert)
    taken = watcher.poll(NOW)
    assert taken is not None and taken.leaf == new.certificate
    assert watcher.last_error is None
    assert watcher.poll(NOW) is None


def test_client_context_system_store() -> None:
    ctx = build_client_context(ProviderTrustSettings())
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_bad_bundle_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    with pytest.raises(CertificateError) as err:
        build_client_context(ProviderTrustSettings(ca_bundle=str(bad)))
    assert err.value.file == str(bad)
