"""The ``gateway certs …`` sub-commands: argument parsing and printing, nothing more.

Each handler turns arguments (and, with ``--config``, the loaded configuration) into plain
paths and names, calls the core functions of this package, prints the result and returns an
exit status: 0 success, 1 "works but needs attention" (expiring within the warning window),
2 refused or broken. Passphrases are read from the environment or a file, never from the
command line (it shows up in ``ps`` and shell history), and never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from gateway.certs.authority import (
    KeyType,
    Usage,
    create_ca,
    create_csr,
    issue_certificate,
    parse_names,
)
from gateway.certs.errors import CertificateError
from gateway.certs.importer import (
    install_identity,
    read_pem_identity,
    read_pkcs12_identity,
    rotate_identity,
)
from gateway.certs.inspect import (
    TrustAnchors,
    common_name,
    describe_key,
    normalise_pin,
    spki_pin,
    subject_alt_names,
)
from gateway.certs.lab import make_lab
from gateway.certs.live import fetch_peer_chain, verify_provider
from gateway.certs.material import Identity, load_configured_identity
from gateway.certs.settings import CertWatchSettings, ProviderTrustSettings, TlsIdentitySettings
from gateway.certs.status import (
    EXIT_OK,
    EXIT_PROBLEM,
    exit_status,
    identity_status,
    render_table,
    trust_status,
)
from gateway.certs.store import (
    StoreLayout,
    read_certificates,
    read_passphrase,
    read_private_key,
    write_certificates,
    write_private_key,
)

EXIT_USAGE = 2


# -- configuration plumbing -------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any | None:
    """The main configuration when ``--config`` was given (imported lazily: the certificate
    commands must work on a box whose configuration is not written yet)."""
    path = getattr(args, "config", None)
    if path is None:
        return None
    from gateway.config import load_config

    return load_config(path)


def _watch(cfg: Any | None) -> CertWatchSettings:
    return cfg.certs if cfg is not None else CertWatchSettings()


def _layout(args: argparse.Namespace, cfg: Any | None) -> StoreLayout:
    store = getattr(args, "store", None) or _watch(cfg).store
    return StoreLayout(Path(store))


def _out_passphrase(args: argparse.Namespace) -> bytes | None:
    return read_passphrase(
        getattr(args, "passphrase_env", None), getattr(args, "passphrase_file", None)
    )


def _names(args: argparse.Namespace, cfg: Any | None) -> list[str]:
    names = list(getattr(args, "name", None) or [])
    if not names:
        names = list(_watch(cfg).gateway_names)
    return names


def _provider(
    args: argparse.Namespace, cfg: Any | None
) -> tuple[str, int, ProviderTrustSettings, Identity | None]:
    """Host, port, trust and client identity: options override the configuration."""
    host = args.host or (cfg.wan.provider_host if cfg is not None else None)
    if host is None:
        raise CertificateError("", "no provider: give HOST or --config")
    # 5061: SIP over TLS (RFC 3261 §26.2.2 / RFC 5630), when neither option nor config says.
    port = args.port or (cfg.wan.provider_port if cfg is not None else None) or 5061
    base = cfg.wan.trust if cfg is not None else ProviderTrustSettings()
    trust = ProviderTrustSettings(
        ca_bundle=getattr(args, "ca_bundle", None) or base.ca_bundle,
        spki_pins=tuple(getattr(args, "pin", None) or base.spki_pins),
        server_name=args.server_name or base.server_name,
    )
    identity = None
    if cfg is not None and cfg.wan.identity is not None:
        identity = load_configured_identity(cfg.wan.identity)
    return host, port, trust, identity


def _split_host_port(value: str | None) -> tuple[str | None, int | None]:
    if value is None:
        return None, None
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, None


def _print_cert(index: int, cert: Any) -> None:
    print(f"  [{index}] subject  {cert.subject.rfc4514_string()}")
    print(f"      issuer   {cert.issuer.rfc4514_string()}")
    print(f"      sans     {', '.join(subject_alt_names(cert)) or '-'}")
    print(f"      key      {describe_key(cert)}")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    print(f"      valid    {start:%Y-%m-%d} .. {end:%Y-%m-%d}")
    print(f"      pin      {spki_pin(cert)}")


# -- handlers ---------------------------------------------------------------------------------


def cmd_init_ca(args: argparse.Namespace) -> int:
    layout = _layout(args, _config(args))
    directory = Path(args.dir) if args.dir else layout.ca_dir
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if (cert_path.exists() or key_path.exists()) and not args.force:
        print(f"{cert_path} already exists; use --force to replace the CA", file=sys.stderr)
        return EXIT_PROBLEM
    key_type = KeyType.RSA_3072 if args.rsa else KeyType(args.key_type)
    ca = create_ca(args.common_name, key_type=key_type, days=args.days, organization=args.org)
    write_private_key(key_path, ca.key, _out_passphrase(args))
    write_certificates(cert_path, [ca.certificate])
    print(
        f"CA {args.common_name!r} ({describe_key(ca.key)}) written to {cert_path}, key {key_path}"
    )
    return EXIT_OK


def _load_ca(args: argparse.Namespace, layout: StoreLayout) -> tuple[Any, Any]:
    directory = Path(args.ca_dir) if args.ca_dir else layout.ca_dir
    ca_certs = read_certificates(directory / "ca.pem")
    passphrase = read_passphrase(args.ca_passphrase_env, args.ca_passphrase_file)
    return ca_certs[0], read_private_key(directory / "ca.key", passphrase)


def cmd_issue(args: argparse.Namespace) -> int:
    cfg = _config(args)
    layout = _layout(args, cfg)
    names = _names(args, cfg)
    if not names:
        print("no names: give --name (repeatable) or set certs.gateway_names", file=sys.stderr)
        return EXIT_USAGE
    usage = Usage(args.usage)
    ca_cert, ca_key = _load_ca(args, layout)
    general = parse_names(names)
    issued = issue_certificate(
        ca_cert,
        ca_key,
        general,
        usage=usage,
        key_type=KeyType.RSA_3072 if args.rsa else KeyType(args.key_type),
        days=args.days,
        common_name=args.common_name,
    )
    if args.out_dir:
        out = Path(args.out_dir)
    elif usage is Usage.CLIENT:
        out = layout.issued_dir / common_name(issued.certificate.subject)
    else:
        out = layout.identity_dir
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    if (cert_path.exists() or key_path.exists()) and not args.force:
        print(
            f"{cert_path} exists; use --force, or `certs rotate` for a live gateway",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    write_private_key(key_path, issued.key, _out_passphrase(args))
    write_certificates(cert_path, issued.chain)
    print(
        f"issued {usage.value} certificate for {', '.join(subject_alt_names(issued.certificate))}"
    )
    print(f"  certificate {cert_path}\n  key         {key_path}")
    print(f"  pin         {spki_pin(issued.certificate)}")
    return EXIT_OK


def cmd_csr(args: argparse.Namespace) -> int:
    cfg = _config(args)
    layout = _layout(args, cfg)
    names = _names(args, cfg)
    if not names:
        print("no names: give --name (repeatable) or set certs.gateway_names", file=sys.stderr)
        return EXIT_USAGE
    general = parse_names(names)
    key, csr = create_csr(
        general,
        key_type=KeyType.RSA_3072 if args.rsa else KeyType(args.key_type),
        common_name=args.common_name,
        organization=args.org,
        country=args.country,
    )
    out = Path(args.out_dir) if args.out_dir else layout.csr_dir
    stem = args.common_name or str(general[0].value)
    key_path, csr_path = out / f"{stem}.key", out / f"{stem}.csr"
    if key_path.exists() and not args.force:
        print(f"{key_path} exists; use --force to make a new key", file=sys.stderr)
        return EXIT_PROBLEM
    write_private_key(key_path, key, _out_passphrase(args))
    from gateway.certs.store import CERT_MODE, atomic_write

    atomic_write(csr_path, csr.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    print(f"key {key_path} (keep it here), request {csr_path}; send the request to the CA, then:")
    print(f"  gateway certs import --chain <the CA's PEM chain> --key {key_path}")
    return EXIT_OK


def _identity_paths(
    args: argparse.Namespace, cfg: Any | None, layout: StoreLayout
) -> tuple[Path, Path, bytes | None]:
    """Where the gateway's identity lives: options, else the configuration, else the store."""
    configured: TlsIdentitySettings | None = cfg.wan.identity if cfg is not None else None
    if args.dest_cert or args.dest_key:
        if not (args.dest_cert and args.dest_key):
            raise CertificateError("", "give both --dest-cert and --dest-key")
        return Path(args.dest_cert), Path(args.dest_key), _out_passphrase(args)
    if configured is not None:
        passphrase = read_passphrase(configured.passphrase_env, configured.passphrase_file)
        return Path(configured.certificate), Path(configured.private_key), passphrase
    return layout.identity_dir / "cert.pem", layout.identity_dir / "key.pem", _out_passphrase(args)


def cmd_import(args: argparse.Namespace) -> int:
    cfg = _config(args)
    layout = _layout(args, cfg)
    source_pass = read_passphrase(args.source_passphrase_env, args.source_passphrase_file)
    if args.pkcs12:
        prepared = read_pkcs12_identity(Path(args.pkcs12), source_pass)
    else:
        if not (args.chain and args.key):
            print("give --chain and --key, or --pkcs12", file=sys.stderr)
            return EXIT_USAGE
        prepared = read_pem_identity(Path(args.chain), Path(args.key), source_pass)
    cert_path, key_path, passphrase = _identity_paths(args, cfg, layout)
    identity = install_identity(prepared, cert_path, key_path, passphrase)
    for note in prepared.notes:
        print(f"note: {note}")
    print(
        f"installed {common_name(identity.leaf.subject)!r}: {cert_path} ({len(identity.chain)}"
        f" certificates, leaf first), key {key_path}"
    )
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    layout = _layout(args, cfg)
    cert_path, key_path, passphrase = _identity_paths(args, cfg, layout)
    new_pass = read_passphrase(args.source_passphrase_env, args.source_passphrase_file)
    identity, prepared = rotate_identity(
        Path(args.cert),
        Path(args.key),
        cert_path,
        key_path,
        new_passphrase=new_pass,
        passphrase=passphrase,
    )
    for note in prepared.notes:
        print(f"note: {note}")
    print(
        f"rotated {cert_path} and {key_path} (previous pair kept as *.prev);"
        f" new pin {identity.pin}; a running gateway picks it up for new connections"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    watch = _watch(cfg)
    warn_days = tuple(args.warn_days) if args.warn_days else watch.warn_days
    window = max(warn_days, default=0)
    layout = _layout(args, cfg)
    now = dt.datetime.now(dt.UTC)
    trust_cfg = cfg.wan.trust if cfg is not None else ProviderTrustSettings()
    ca_bundle = args.ca_bundle or trust_cfg.ca_bundle
    pins = tuple(args.pin or trust_cfg.spki_pins)
    identity: TlsIdentitySettings | None = cfg.wan.identity if cfg is not None else None
    if args.cert or args.key:
        if not (args.cert and args.key):
            print("give both --cert and --key", file=sys.stderr)
            return EXIT_USAGE
        identity = TlsIdentitySettings(
            args.cert, args.key, args.passphrase_env, args.passphrase_file
        )
    rows = []
    if identity is not None:
        # The provider, not the gateway, verifies the identity, with anchors we cannot see;
        # judge it against every issuer it may come from: a public CA (the system store),
        # the provider's own CA (the configured bundle), the store's CA (private or lab).
        # The provider bundle alone would flag a public CA's certificate as broken.
        local_ca = layout.ca_dir / "ca.pem"
        extra = tuple(b for b in (ca_bundle,) if b is not None)
        extra += (str(local_ca),) if local_ca.exists() else ()
        rows.extend(
            identity_status(
                identity.certificate,
                identity.private_key,
                passphrase=read_passphrase(identity.passphrase_env, identity.passphrase_file),
                trust=TrustAnchors(None, extra),
                names=_names(args, cfg),
                window=window,
                now=now,
            )
        )
    rows.extend(trust_status(ca_bundle, pins, window=window, now=now))
    print(render_table(rows))
    return exit_status(rows)


def cmd_pin(args: argparse.Namespace) -> int:
    if args.cert:
        certs = read_certificates(Path(args.cert))
    else:
        cfg = _config(args)
        h, p = _split_host_port(args.target)
        args.host, args.port = h, args.port or p
        host, port, trust, identity = _provider(args, cfg)
        certs = fetch_peer_chain(
            host, port, trust.server_name, identity=identity, timeout=args.timeout
        )
        if not certs:
            print(f"{host}:{port} sent no certificate", file=sys.stderr)
            return EXIT_PROBLEM
    for cert in certs if args.all else certs[:1]:
        print(f"{spki_pin(cert)}  {common_name(cert.subject)}")
    return EXIT_OK


def cmd_verify_provider(args: argparse.Namespace) -> int:
    cfg = _config(args)
    h, p = _split_host_port(args.target)
    args.host, args.port = h, args.port or p
    host, port, trust, identity = _provider(args, cfg)
    for pin in trust.spki_pins:
        normalise_pin(pin)  # a typo in a pin should say so, not look like a mismatch
    check = verify_provider(host, port, trust, identity=identity, timeout=args.timeout)
    anchors = trust.ca_bundle or "system store"
    print(f"provider {host}:{port}, name {check.server_name}, trust {anchors}", end="")
    print(f", pins {len(trust.spki_pins) or 'none'}")
    print(f"chain as sent ({len(check.chain)} certificates):")
    for i, cert in enumerate(check.chain):
        _print_cert(i, cert)
    if check.ok:
        print("VERIFIED" + (" and pinned" if check.pinned else ""))
        return EXIT_OK
    print(f"NOT VERIFIED: {check.error}")
    return EXIT_PROBLEM


def cmd_lab(args: argparse.Namespace) -> int:
    layout = _layout(args, None)
    directory = Path(args.dir) if args.dir else layout.lab_dir
    result = make_lab(directory, force=args.force)
    for stem in result.created:
        print(f"created {directory / stem}.pem / .key")
    for stem in result.kept:
        print(f"kept    {directory / stem}.pem / .key")
    provider = read_certificates(directory / "provider.pem")[0]
    print(f"provider pin {spki_pin(provider)}")
    return EXIT_OK


# -- registration -----------------------------------------------------------------------------


def _guarded(handler: Any) -> Any:
    """Turn the layer's expected failures into one line on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except CertificateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        except ValueError as exc:  # bad names, pins, key types from the command line
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _add_common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        p.add_argument("--config", metavar="FILE", help="gateway configuration (TOML)")
    p.add_argument("--store", metavar="DIR", help="certificate store (default: config or certs)")


def _add_out_passphrase(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--passphrase-env", metavar="VAR", help="encrypt the new key; passphrase in $VAR"
    )
    g.add_argument(
        "--passphrase-file", metavar="FILE", help="encrypt the new key; passphrase in FILE"
    )


def _add_source_passphrase(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--source-passphrase-env", metavar="VAR", help=f"{what} passphrase in $VAR")
    g.add_argument("--source-passphrase-file", metavar="FILE", help=f"{what} passphrase in FILE")


def _add_key_type(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default=KeyType.EC_P256.value)
    p.add_argument("--rsa", action="store_true", help="shorthand for --key-type rsa-3072")


def _add_provider(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target", nargs="?", metavar="HOST[:PORT]", help="default: the configured provider"
    )
    p.add_argument("--port", type=int)
    p.add_argument("--server-name", help="name to verify and send as SNI (default: the host)")
    p.add_argument("--timeout", type=float, default=10.0)


def add_certs_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``certs`` and its sub-commands; each sets ``func`` to a ``cmd_*`` handler."""
    certs = subparsers.add_parser("certs", help="certificate operations")
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-ca", help="create a private CA for a site or lab")
    _add_common(p)
    p.add_argument("--dir", help="where to write ca.pem/ca.key (default: STORE/ca)")
    p.add_argument("--common-name", default="Gateway Site CA")
    p.add_argument("--org")
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--force", action="store_true")
    _add_key_type(p)
    _add_out_passphrase(p)
    p.set_defaults(func=_guarded(cmd_init_ca))

    p = sub.add_parser("issue", help="issue a server or client certificate from the CA")
    _add_common(p)
    p.add_argument("--name", action="append", help="DNS name or IP (repeatable; default: config)")
    p.add_argument("--usage", choices=[u.value for u in Usage], default=Usage.BOTH.value)
    p.add_argument("--common-name")
    p.add_argument("--days", type=int, default=397)
    p.add_argument("--out-dir", help="default: STORE/identity, or STORE/issued/CN for client")
    p.add_argument("--ca-dir", help="default: STORE/ca")
    p.add_argument("--ca-passphrase-env", metavar="VAR")
    p.add_argument("--ca-passphrase-file", metavar="FILE")
    p.add_argument("--force", action="store_true")
    _add_key_type(p)
    _add_out_passphrase(p)
    p.set_defaults(func=_guarded(cmd_issue))

    p = sub.add_parser("csr", help="new key and CSR for a public CA")
    _add_common(p)
    p.add_argument("--name", action="append", help="DNS name or IP (repeatable; default: config)")
    p.add_argument("--common-name")
    p.add_argument("--org")
    p.add_argument("--country")
    p.add_argument("--out-dir", help="default: STORE/csr")
    p.add_argument("--force", action="store_true")
    _add_key_type(p)
    _add_out_passphrase(p)
    p.set_defaults(func=_guarded(cmd_csr))

    for name, helptext, handler in (
        ("import", "install a PEM chain + key or a PKCS#12 file as the identity", cmd_import),
        ("rotate", "replace the identity's certificate and key atomically", cmd_rotate),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_common(p)
        if name == "import":
            p.add_argument("--chain", help="PEM certificates, any order")
            p.add_argument("--key", help="PEM private key")
            p.add_argument("--pkcs12", help="PKCS#12 (.p12/.pfx) file")
        else:
            p.add_argument("--cert", required=True, help="new PEM chain")
            p.add_argument("--key", required=True, help="new PEM private key")
        p.add_argument("--dest-cert", help="default: configured identity, else STORE/identity")
        p.add_argument("--dest-key")
        _add_source_passphrase(p, "source key or PKCS#12")
        _add_out_passphrase(p)
        p.set_defaults(func=_guarded(handler))

    p = sub.add_parser("status", help="table of every certificate in use; non-zero if not ok")
    _add_common(p)
    p.add_argument("--cert", help="identity certificate (instead of the configured one)")
    p.add_argument("--key")
    p.add_argument("--passphrase-env", metavar="VAR")
    p.add_argument("--passphrase-file", metavar="FILE")
    p.add_argument("--ca-bundle", help="provider trust bundle (default: config or system)")
    p.add_argument("--pin", action="append", help="provider SPKI pin (repeatable)")
    p.add_argument("--name", action="append", help="name the identity must carry (repeatable)")
    p.add_argument("--warn-days", type=int, action="append", help="warning threshold (repeatable)")
    p.set_defaults(func=_guarded(cmd_status))

    p = sub.add_parser("pin", help="SPKI SHA-256 pin of a provider (live) or a certificate file")
    _add_common(p)
    _add_provider(p)
    p.add_argument("--cert", help="compute from this PEM file instead of connecting")
    p.add_argument("--all", action="store_true", help="every certificate of the chain")
    p.set_defaults(func=_guarded(cmd_pin))

    p = sub.add_parser("verify-provider", help="connect to the provider and verify it")
    _add_common(p)
    _add_provider(p)
    p.add_argument("--ca-bundle", help="trust bundle (default: config or system)")
    p.add_argument("--pin", action="append", help="SPKI pin (repeatable; default: config)")
    p.set_defaults(func=_guarded(cmd_verify_provider))

    p = sub.add_parser("lab", help="lab CA, gateway and provider certificates in STORE/lab")
    _add_common(p, config=False)
    p.add_argument("--dir", help="default: STORE/lab")
    p.add_argument("--force", action="store_true", help="regenerate even valid material")
    p.set_defaults(func=_guarded(cmd_lab))
