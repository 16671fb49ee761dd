"""The ``gateway`` command: run, demo, check-config, audit, bans, certs, bench.

Each sub-command returns an exit status; errors are printed as one clear line per problem,
never as a traceback, because operators read them at a console during an install.

One layout and one convention for every command (documented in ``gateway --help``):

- ``--config FILE``, else ``$GATEWAY_CONFIG``, else /etc/sip-media-gateway/gateway.toml
  (``gateway.config.default_config_path``), so that on an installed box every command reads
  the same file the service runs with. ``check-config FILE`` keeps its positional form.
- Exit status 0 success; 1 what was checked failed, or the command failed; 2 usage or
  configuration error. The ``certs`` commands keep their documented scale (1: expiring soon,
  2: refused or unusable; docs/certificates.md), which already fits it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.certs.commands import add_certs_commands
from gateway.certs.errors import CertificateError
from gateway.config import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    GatewayConfig,
    default_config_path,
    load_config,
)
from gateway.config_files import check_config_file
from gateway.control import (
    ControlError,
    control_request,
    format_calls,
    format_registrations,
    format_reload,
    format_status,
)
from gateway.inventory_commands import format_phones, phone_firmware_facts
from gateway.policy.allowlist import normalise_address
from gateway.policy.audit import audit, format_report
from gateway.policy.audit import exit_status as audit_exit_status
from gateway.policy.bans import PersistedBan, SharedBan
from gateway.policy.bans_store import (
    BanStoreError,
    format_bans,
    format_shared_bans,
    lift_ban,
    list_bans,
)
from gateway.shield_store import add_shield_commands, phone_secrets_finding

EXIT_OK = 0
#: What was checked failed (check-config, audit), or the command could not do its job.
EXIT_FAILED = 1
#: Bad arguments, or a configuration that is missing or invalid (argparse also exits with 2).
EXIT_USAGE = 2

DISTRIBUTION = "sip-media-gateway"

EPILOG = f"""\
configuration:
  Every command that reads a configuration takes --config FILE; without it, ${CONFIG_PATH_ENV}
  names the file, else {DEFAULT_CONFIG_PATH}.
  `gateway check-config FILE` and `gateway check-config --config FILE` are the same.

exit status:
  0  success
  1  what was checked failed (check-config: the file has problems; audit: a check failed),
     or the command failed (run could not start; bans lift: the address is not banned)
  2  usage or configuration error: bad arguments, a configuration file missing or invalid
  The certs commands: 0 ok, 1 something expires within the warning window, 2 refused or
  unusable (docs/certificates.md).
"""


def package_version() -> str:
    """The installed distribution's version (a source tree that is not installed has none)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


# -- configuration ----------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> str:
    return getattr(args, "config", None) or default_config_path()


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)


def _load_or_report(args: argparse.Namespace) -> GatewayConfig | None:
    """The configuration the command should use, or None after printing why it cannot."""
    path = _config_path(args)
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        _hint_default(args, path)
        return None


def _hint_default(args: argparse.Namespace, path: str) -> None:
    """The commonest first-run mistake is no file at the default: say where it came from."""
    given = getattr(args, "config", None) or getattr(args, "file", None)
    if given is None and not Path(path).exists():
        print(
            f"error: no configuration at {path} (the default): give --config FILE "
            f"or set {CONFIG_PATH_ENV}",
            file=sys.stderr,
        )


# -- handlers ---------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print(
            f"error: two files given ({args.file} and --config {args.config}): give one",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = args.file or _config_path(args)
    # Like `nginx -t`: the text, then every file and folder it names (gateway.config_files).
    report = check_config_file(path, files=not args.no_files)
    for line in report.lines():
        print(line, file=sys.stderr)
    if not report.ok:
        _hint_default(args, path)
        print(report.summary(), file=sys.stderr)
        # The file is what is being checked: its failing is a result (1), not a usage error.
        return EXIT_FAILED
    print(report.summary())
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import configure_logging
    from gateway.ha.node import gateway_for
    from gateway.startup import StartFailed, run_guarded

    # The checks of `check-config`, files included: a gateway that would fail on a missing
    # certificate or an unwritable state folder says so, every problem at once, before it
    # opens anything.
    path = _config_path(args)
    report = check_config_file(path)
    for line in report.lines():
        print(line, file=sys.stderr)
    config = report.config
    if config is None:
        _hint_default(args, path)
        print(report.summary(), file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log.level, config.log.format)

    async def main() -> None:
        gateway = gateway_for(config)  # [ha] enabled: starts as standby (gateway/ha/)
        await run_guarded(gateway, args.drain)  # a failed start ends, non-zero, with why

    try:
        _run_loop(main())
    except StartFailed as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _bans_file(args: argparse.Namespace) -> Path | None:
    """The ban file of the configuration's state folder; says on stderr which file it is, so
    an operator never reads an empty list from the wrong place."""
    config = _load_or_report(args)
    if config is None:
        return None
    path = Path(config.state.directory) / "bans.json"
    print(f"bans file: {path} (state folder of {_config_path(args)})", file=sys.stderr)
    return path


def cmd_bans_list(args: argparse.Namespace) -> int:
    answer = _ask_running(args, "GET", "/bans")
    if isinstance(answer, int):
        return answer
    if answer is not None:
        now = time.time()
        bans = [
            PersistedBan(b["address"], b["rule"], now, now + b["seconds_left"], b["offences"])
            for b in answer["bans"]
        ]
        print(format_bans(bans, now))
        if "shared" in answer:  # [state] redis_url: the bans every site on the Redis applies
            shared = [SharedBan(**b) for b in answer["shared"]]
            print(format_shared_bans(shared, now, answer.get("site")))
        return EXIT_OK
    path = _bans_file(args)
    if path is None:
        return EXIT_USAGE
    try:
        print(format_bans(list_bans(path, time.time()), time.time()))
    except BanStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_bans_lift(args: argparse.Namespace) -> int:
    if normalise_address(args.address) is None:
        print(f"error: {args.address!r} is not an IP address", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = _ask_running(args, "DELETE", "/bans/" + quote(args.address, safe=""))
    except ControlError as exc:
        if exc.status != 404:
            raise
        print(f"{args.address} is not banned", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(answer, int):
        return answer
    if answer is not None:
        print(f"lifted the ban on {args.address}")
        return EXIT_OK
    path = _bans_file(args)
    if path is None:
        return EXIT_USAGE
    try:
        lifted = lift_ban(path, args.address)
    except BanStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not lifted:
        print(f"{args.address} is not banned", file=sys.stderr)
        return EXIT_FAILED
    # A running gateway watches the file and lifts the ban within a few seconds.
    print(f"lifted the ban on {args.address}")
    return EXIT_OK


# -- the running gateway, over its control socket (gateway/control.py) ------------------------


def _control_target(args: argparse.Namespace) -> GatewayConfig | str | None:
    """--socket, else the configuration that names the socket; None after saying why not."""
    return getattr(args, "socket", None) or _load_or_report(args)


def _control_failed(exc: ControlError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _ask(args: argparse.Namespace, method: str, path: str) -> dict[str, Any] | int:
    """The running gateway's answer, or the exit status after saying why there is none."""
    target = _control_target(args)
    if target is None:
        return EXIT_USAGE
    try:
        return control_request(target, method, path)
    except ControlError as exc:
        return _control_failed(exc)


def _ask_running(args: argparse.Namespace, method: str, path: str) -> dict[str, Any] | int | None:
    """Ask the running gateway (bans): its answer; None when no gateway runs (the caller
    falls back to the files, and this says so); an exit status after printing an error.
    An error answer of the gateway is raised as ControlError for the caller to word."""
    target = _control_target(args)
    if target is None:
        return EXIT_USAGE
    try:
        return control_request(target, method, path)
    except ControlError as exc:
        if exc.status is not None:
            raise
        if not exc.unavailable or getattr(args, "socket", None):
            return _control_failed(exc)
        print(f"{exc}: using the files", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    if args.quiet:  # a health check: the exit status says it all
        target = _control_target(args)
        if target is None:
            return EXIT_USAGE
        try:
            control_request(target, "GET", "/ready")
        except ControlError:
            return EXIT_FAILED
        return EXIT_OK
    data = _ask(args, "GET", "/status")
    if isinstance(data, int):
        return data
    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return EXIT_OK


def cmd_state_status(args: argparse.Namespace) -> int:
    from gateway.state.redis_state import format_state_status

    data = _ask(args, "GET", "/state")
    if isinstance(data, int):
        return data
    print(json.dumps(data, indent=2) if args.json else format_state_status(data))
    return EXIT_OK


def cmd_calls(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", "/calls")
    if isinstance(data, int):
        return data
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(format_calls(data["calls"]))
    if data.get("media_error"):
        print(f"warning: no media counters: {data['media_error']}", file=sys.stderr)
    return EXIT_OK


def cmd_registrations(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", "/registrations")
    if isinstance(data, int):
        return data
    rows = data["registrations"]
    print(json.dumps(rows, indent=2) if args.json else format_registrations(rows))
    return EXIT_OK


def cmd_phones(args: argparse.Namespace) -> int:
    data = _ask(args, "GET", "/phones")
    if isinstance(data, int):
        return data
    rows = data["phones"]
    print(json.dumps(rows, indent=2) if args.json else format_phones(rows, time.time()))
    return EXIT_OK


def cmd_spike_lock_lift(args: argparse.Namespace) -> int:
    target = _control_target(args)
    if target is None:
        return EXIT_USAGE
    try:
        control_request(target, "POST", "/spike-lock/lift")
    except ControlError as exc:
        if exc.status == 404:
            print("outbound calling is not locked", file=sys.stderr)
            return EXIT_FAILED
        return _control_failed(exc)
    print("lifted the spike lock: outbound calls are allowed again")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    target = _control_target(args)
    if target is None:
        return EXIT_USAGE
    try:
        data = control_request(target, "POST", "/reload")
    except ControlError as exc:
        if exc.status not in (409, 422):
            return _control_failed(exc)
        print(format_reload(exc.body), file=sys.stderr)
        return EXIT_FAILED
    print(format_reload(data))
    return EXIT_OK


def _add_control(p: argparse.ArgumentParser, *, json_output: bool = False) -> None:
    _add_config(p, "configuration file (its [control] socket is asked)")
    p.add_argument("--socket", metavar="PATH", help="the gateway's control socket (no --config)")
    if json_output:
        p.add_argument("--json", action="store_true", help="the gateway's answer as JSON")


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    from gateway.audit_facts import AuditInputError, audit_view

    try:
        view = audit_view(config)  # loads the files the configuration names
    except AuditInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The phone inventory lives in the running gateway: asked over its control socket.
    view = dataclasses.replace(view, phone_firmware=phone_firmware_facts(config))
    findings = [*audit(view), phone_secrets_finding(config)]
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


def _add_config(p: argparse.ArgumentParser, what: str = "configuration file (TOML)") -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"{what}; default ${CONFIG_PATH_ENV}, else {DEFAULT_CONFIG_PATH}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Media encryption enforcement gateway: legacy SIP/RTP phones on the LAN, "
        "SIP over verified TLS and SRTP toward the provider.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"{DISTRIBUTION} {package_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway in the foreground")
    _add_config(p)
    p.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="seconds to let active calls finish on SIGTERM (default 10)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config",
        help="check a configuration file and list every problem (exit 1 if it has any)",
    )
    p.add_argument("file", nargs="?", help="the file to check (same as --config FILE)")
    _add_config(p)
    p.add_argument(
        "--no-files",
        action="store_true",
        help="check the text only, not the files and folders it names (a configuration "
        "written for another machine)",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="a self-contained call: phone -> gateway -> TLS/SRTP provider")
    p.add_argument("--seconds", type=float, default=3.0, help="tone duration each way")
    p.add_argument("--verbose", action="store_true", help="show the gateway's log")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", help="security posture report of a deployment")
    _add_config(p)
    p.set_defaults(func=cmd_audit)

    bans = sub.add_parser("bans", help="list or lift bans of scanners and brute-forcers")
    bans_sub = bans.add_subparsers(dest="bans_command", required=True)
    state_help = "configuration file (its [state] folder holds the bans)"
    p = bans_sub.add_parser("list", help="bans in force")
    _add_config(p, state_help)
    p.add_argument("--socket", metavar="PATH", help="ask the running gateway on this socket")
    p.set_defaults(func=cmd_bans_list)
    p = bans_sub.add_parser("lift", help="lift the ban on an address")
    p.add_argument("address")
    _add_config(p, state_help)
    p.add_argument("--socket", metavar="PATH", help="ask the running gateway on this socket")
    p.set_defaults(func=cmd_bans_lift)

    p = sub.add_parser("status", help="what the running gateway is doing (control socket)")
    _add_control(p, json_output=True)
    p.add_argument("--quiet", action="store_true", help="print nothing; exit 0 only if it is ready")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("calls", help="active calls: suite, packets, loss, jitter")
    _add_control(p, json_output=True)
    p.set_defaults(func=cmd_calls)
    p = sub.add_parser("registrations", help="phones registered through the running gateway")
    _add_control(p, json_output=True)
    p.set_defaults(func=cmd_registrations)
    p = sub.add_parser("phones", help="phone inventory: vendor, model, firmware, last seen")
    _add_control(p, json_output=True)
    p.set_defaults(func=cmd_phones)
    spike = sub.add_parser("spike-lock", help="the outbound spike lock of the running gateway")
    spike_sub = spike.add_subparsers(dest="spike_command", required=True)
    p = spike_sub.add_parser("lift", help="allow outbound calls again")
    _add_control(p)
    p.set_defaults(func=cmd_spike_lock_lift)
    p = sub.add_parser("reload", help="running gateway: re-read the configuration, certificates")
    _add_control(p)
    p.set_defaults(func=cmd_reload)
    state = sub.add_parser("state", help="saved state: Redis or the local folder")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    p = state_sub.add_parser("status", help="Redis reachable, site, last write, shared bans")
    _add_control(p, json_output=True)
    p.set_defaults(func=cmd_state_status)

    from gateway.bench.command import add_bench_arguments, cmd_bench

    p = sub.add_parser("bench", help="capacity report of this host: calls, latency, set-ups/s")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    add_certs_commands(sub)
    add_shield_commands(sub)
    from gateway.ha.commands import add_ha_commands

    add_ha_commands(sub)

    from gateway.install import add_install_command

    add_install_command(sub)
    return parser


def _default_certs_config(args: argparse.Namespace) -> None:
    """The certs commands work without a configuration (a box being set up); on an installed
    box, or with $GATEWAY_CONFIG, they read the default one like every other command."""
    if args.command != "certs" or not hasattr(args, "config") or args.config is not None:
        return
    path = default_config_path()
    if os.environ.get(CONFIG_PATH_ENV) or Path(path).exists():
        args.config = path
        print(f"configuration: {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _default_certs_config(args)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        # A handler that loads the configuration itself (the certs commands): same report.
        _print_problems(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
