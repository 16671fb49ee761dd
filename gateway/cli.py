"""The ``gateway`` command: run, demo, check-config, certs …

Each sub-command returns an exit status; errors are printed as one clear line per problem,
never as a traceback, because operators read them at a console during an install.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.certs.commands import add_certs_commands
from gateway.certs.errors import CertificateError
from gateway.config import ConfigError, GatewayConfig, insecure_settings, load_config
from gateway.policy.audit import AuditView, audit, format_report
from gateway.policy.audit import exit_status as audit_exit_status
from gateway.policy.bans_store import BanStoreError, format_bans, lift_ban, list_bans


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    for name in insecure_settings(config):
        print(f"warning: {args.file}: {name} is on: INSECURE downgrade", file=sys.stderr)
    print(f"{args.file}: configuration is valid")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway, configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    configure_logging(config.log.level, config.log.format)

    async def main() -> None:
        gateway = Gateway(config)
        await gateway.run_forever(drain=args.drain)

    try:
        _run_loop(main())
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _load_or_report(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _bans_file(args: argparse.Namespace) -> Path | None:
    if args.config is None:
        return Path("state") / "bans.json"
    config = _load_or_report(args.config)
    return None if config is None else Path(config.state.directory) / "bans.json"


def cmd_bans_list(args: argparse.Namespace) -> int:
    path = _bans_file(args)
    if path is None:
        return 1
    try:
        print(format_bans(list_bans(path, time.time()), time.time()))
    except BanStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_bans_lift(args: argparse.Namespace) -> int:
    path = _bans_file(args)
    if path is None:
        return 1
    try:
        lifted = lift_ban(path, args.address)
    except BanStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not lifted:
        print(f"{args.address} is not banned", file=sys.stderr)
        return 1
    # A running gateway watches the file and lifts the ban within a few seconds.
    print(f"lifted the ban on {args.address}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 2
    wan = config.wan
    secrets: list[str] = []
    if config.audit.sip_secrets_file:
        try:
            text = config.path(config.audit.sip_secrets_file).read_text(encoding="utf-8")
        except OSError as exc:
            print(f"error: {config.audit.sip_secrets_file}: {exc.strerror}", file=sys.stderr)
            return 2
        secrets = [line.strip() for line in text.splitlines() if line.strip()]
    view = AuditView(
        tls_verify=not wan.insecure_skip_verify,
        wan_transport="tcp" if wan.insecure_plaintext_signalling else "tls",
        srtp_required=not wan.insecure_plaintext_media,
        plaintext_downgrade=wan.insecure_plaintext_media,
        admin_token=os.environ.get(config.admin.token_env),
        sip_secrets=secrets,
        personal_words=(*config.audit.personal_words, wan.sip_domain),
        policy=config.policy,
        admin_enabled=config.admin.enabled,
    )
    findings = audit(view)
    print(format_report(findings))
    return audit_exit_status(findings)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return _run_loop(run_demo(seconds=args.seconds, verbose=args.verbose))


def _run_loop(coro):  # type: ignore[no-untyped-def]
    """uvloop where available: it is the signalling process's loop (docs/design.md §1.3)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Media encryption enforcement gateway: legacy SIP/RTP phones on the LAN, "
        "SIP over verified TLS and SRTP toward the provider.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway in the foreground")
    p.add_argument("--config", required=True, help="configuration file (TOML)")
    p.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="seconds to let active calls finish on SIGTERM (default 10)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="check a configuration file and list every problem")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="a self-contained call: phone -> gateway -> TLS/SRTP provider")
    p.add_argument("--seconds", type=float, default=3.0, help="tone duration each way")
    p.add_argument("--verbose", action="store_true", help="show the gateway's log")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", help="security posture report of a deployment")
    p.add_argument("--config", required=True, help="configuration file (TOML)")
    p.set_defaults(func=cmd_audit)

    bans = sub.add_parser("bans", help="list or lift bans of scanners and brute-forcers")
    bans_sub = bans.add_subparsers(dest="bans_command", required=True)
    p = bans_sub.add_parser("list", help="bans in force")
    p.add_argument("--config", help="configuration file (its [state] folder holds the bans)")
    p.set_defaults(func=cmd_bans_list)
    p = bans_sub.add_parser("lift", help="lift the ban on an address")
    p.add_argument("address")
    p.add_argument("--config", help="configuration file (its [state] folder holds the bans)")
    p.set_defaults(func=cmd_bans_lift)

    from gateway.bench.command import add_bench_arguments, cmd_bench

    p = sub.add_parser("bench", help="capacity report of this host: calls, latency, set-ups/s")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    add_certs_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
