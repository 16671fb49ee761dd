"""The ``gateway`` command: run, demo, check-config, certs …

Each sub-command returns an exit status; errors are printed as one clear line per problem,
never as a traceback, because operators read them at a console during an install.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from gateway.certs.commands import add_certs_commands
from gateway.certs.errors import CertificateError
from gateway.config import ConfigError, insecure_settings, load_config


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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return _run_loop(run_demo(seconds=args.seconds, verbose=args.verbose))


def _run_loop(coro):  # type: ignore[no-untyped-def]
    """uvloop where available: it is the signalling process's loop (DESIGN.md)."""
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
