"""The status table and its exit codes (gateway.certs.status) and the expiry watch."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from gateway.certs.expiry import ExpiryWatch
from gateway.certs.inspect import TrustAnchors, spki_pin
from gateway.certs.status import (
    EXIT_EXPIRING,
    EXIT_OK,
    EXIT_PROBLEM,
    exit_status,
    identity_status,
    render_table,
    trust_status,
)
from gateway.certs.store import write_certificates
from tests.pki import NOW, expired_leaf, make_ca, make_leaf, write_pair


def _setup(tmp_path: Path, **leaf_args):  # type: ignore[no-untyped-def]
    ca = make_ca()
    leaf = make_leaf(ca, **leaf_args)
    cert, key = write_pair(tmp_path, "gw", leaf.chain, leaf.key)
    bundle = tmp_path / "ca.pem"
    write_certificates(bundle, [ca.certificate])
    return ca, leaf, cert, key, bundle


def _rows(cert: Path, key: Path, bundle: Path, names=("gw.example.test",)):  # type: ignore[no-untyped-def]
    rows = identity_status(
        str(cert),
        str(key),
        passphrase=None,
        trust=TrustAnchors(str(bundle)),
        names=names,
        window=30,
        now=NOW,
    )
    return rows + trust_status(str(bundle), [], window=30, now=NOW)


def test_all_good(tmp_path: Path) -> None:
    _, leaf, cert, key, bundle = _setup(tmp_path)
    rows = _rows(cert, key, bundle)
    assert exit_status(rows) == EXIT_OK
    first = rows[0]
    assert (first.role, first.chain, first.name, first.key) == ("identity", "ok", "ok", "EC P-256")
    assert first.sans == "DNS:gw.example.test,IP:127.0.0.1"
    assert first.pin == spki_pin(leaf.certificate)
    assert first.days_left == 397
    table = render_table(rows)
    assert table.splitlines()[0].split()[:3] == ["ROLE", "FILE", "SUBJECT"]
    assert "provider trust" in table and "ERROR" not in table


def test_expiring_within_window_is_exit_1(tmp_path: Path) -> None:
    _, _, cert, key, bundle = _setup(tmp_path, not_after=NOW + dt.timedelta(days=10, hours=1))
    rows = _rows(cert, key, bundle)
    assert rows[0].days_left == 10
    assert exit_status(rows) == EXIT_EXPIRING
    assert "WARNING" in render_table(rows)


def test_problems_are_exit_2(tmp_path: Path) -> None:
    ca, _, cert, key, bundle = _setup(tmp_path)
    # Wrong name.
    rows = _rows(cert, key, bundle, names=("sip.other.test",))
    assert rows[0].name == "missing sip.other.test" and exit_status(rows) == EXIT_PROBLEM
    # Key that does not match.
    other = make_leaf(ca)
    _, other_key = write_pair(tmp_path, "other", other.chain, other.key)
    rows = _rows(cert, other_key, bundle)
    assert any("does not match" in p for p in rows[0].problems)
    # Key readable by others.
    os.chmod(key, 0o644)
    assert exit_status(_rows(cert, key, bundle)) == EXIT_PROBLEM
    os.chmod(key, 0o600)
    # Expired.
    old = expired_leaf(ca)
    old_cert, old_key = write_pair(tmp_path, "old", old.chain, old.key)
    rows = _rows(old_cert, old_key, bundle)
    assert exit_status(rows) == EXIT_PROBLEM
    assert "expired" in render_table(rows)
    # Chain to a CA that is not trusted.
    other_bundle = tmp_path / "other.pem"
    write_certificates(other_bundle, [make_ca("Other").certificate])
    rows = _rows(cert, key, other_bundle)
    assert rows[0].chain != "ok" and exit_status(rows) == EXIT_PROBLEM
    # Missing file.
    rows = _rows(tmp_path / "none.pem", key, bundle)
    assert exit_status(rows) == EXIT_PROBLEM


def test_bad_pin_syntax_is_a_problem() -> None:
    rows = trust_status(None, ["not-a-pin"], now=NOW)
    assert rows[0].file == "system store"
    assert exit_status(rows) == EXIT_PROBLEM


def test_expiry_watch_warns_once_per_threshold() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, not_after=NOW + dt.timedelta(days=40)).certificate
    watch = ExpiryWatch((30, 14, 7, 1))
    seen = []
    for day in range(45):
        warning = watch.check("gw.pem", leaf, NOW + dt.timedelta(days=day))
        if warning:
            seen.append((day, warning.threshold))
    assert [t for _, t in seen[:4]] == [30, 14, 7, 1]
    # After expiry: a warning on every check.
    assert all(t is None for _, t in seen[4:]) and len(seen) > 4
    # Starting late reports only the smallest crossed threshold.
    late = ExpiryWatch((30, 14, 7, 1)).check("gw.pem", leaf, NOW + dt.timedelta(days=35))
    assert late is not None and late.threshold == 7 and "5 days left" in late.message()
