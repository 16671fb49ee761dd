"""Real SIP/RTP peers for interop tests: process control, TLS clients, kamailio, sipp, stunnel,
baresip, linphone, rtpengine and packet capture.

Everything here starts programs as children of the test process (never daemonised), stops
them by PID, waits for readiness by polling (a port, a log line, a predicate) with a bounded
timeout, and puts the tail of a program's logs into the failure message when something goes
wrong. Traffic stays on 127.0.0.0/8 or inside network namespaces created by
:class:`NetNamespace`.

See /work/shared/PEERS.md for the peers' known behaviours and pitfalls.

Typical use in a test (fixtures from tests/interop/conftest.py)::

    def test_call(need, netns, pki, procs, tmp_path, tones):
        need("kamailio", "baresip")
        kam = procs.start(Kamailio(tmp_path / "kam", pki, netns=netns.name))
        phone = procs.start(Baresip(tmp_path / "a", user="a", audio_file=tones.wav_440,
                                    netns=netns.name, tls=True, srtp="srtp-mand", pki=pki,
                                    domain=f"127.0.0.1:{kam.tls_port}", regint=60))
        phone.wait_registered()
        ...
        assert analyse_wav(phone.recordings("dec")[0]).is_tone(1000.0)
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ipaddress
import json
import os
import pty
import re
import secrets
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest

from tests.pki import TestPki

#: Resource files (kamailio cfg template, sipp scenarios).
RESOURCES = Path(__file__).with_name("peers")
SCENARIOS = RESOURCES / "sipp"

Proto = Literal["tcp", "udp"]


class PeerError(AssertionError):
    """A peer failed to start, become ready or do its job (an assertion failure in tests)."""


# ---------------------------------------------------------------------------------------------
# binaries


def in_ci() -> bool:
    """True when running under CI (env var CI set to a true-ish value)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_binaries(*names: str) -> dict[str, str]:
    """Return {name: path} for the given executables.

    A missing one skips the test locally (with the reason), but fails it when CI is set:
    CI must never silently skip interop tests.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
        )
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        reason = f"missing peer binaries: {', '.join(missing)} (see /work/shared/PEERS.md)"
        if in_ci():
            pytest.fail(reason + " - CI is set, so this is a failure", pytrace=False)
        pytest.skip(reason)
    return found


# ---------------------------------------------------------------------------------------------
# ports


def _proc_net_bound(port: int, proto: Proto, pid: int | None, host: str | None) -> bool:
    """True if a socket is bound (UDP) or listening (TCP) on ``port`` per /proc/net.

    With ``pid`` the tables of that process's network namespace are read.
    """
    base = Path(f"/proc/{pid}/net") if pid else Path("/proc/net")
    want_host: bytes | None = None
    if host is not None:
        addr = ipaddress.ip_address(host)
        if addr.version == 4:
            want_host = struct.pack("<I", int.from_bytes(addr.packed, "big"))
    for table in (f"{proto}", f"{proto}6"):
        try:
            lines = (base / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            local_hex, port_hex = parts[1].rsplit(":", 1)
            if int(port_hex, 16) != port:
                continue
            if proto == "tcp" and parts[3] != "0A":  # LISTEN
                continue
            if want_host is not None and table == proto:
                local = bytes.fromhex(local_hex)
                if local not in (want_host, b"\x00\x00\x00\x00"):
                    continue
            return True
    return False


def port_is_bound(host: str, port: int, proto: Proto = "tcp", *, pid: int | None = None) -> bool:
    """True if something listens (TCP) or is bound (UDP) on host:port (or in ``pid``'s netns)."""
    return _proc_net_bound(port, proto, pid, host)


def wait_for_port(
    host: str,
    port: int,
    proto: Proto = "tcp",
    timeout: float = 10.0,
    *,
    pid: int | None = None,
    connect: bool = True,
) -> None:
    """Wait until host:port accepts TCP connections or has a bound UDP socket.

    TCP is checked by connecting (when ``connect`` and no ``pid`` is given), otherwise both
    protocols are checked in /proc/net (of ``pid``'s network namespace when given).
    Raises :class:`PeerError` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proto == "tcp" and connect and pid is None:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        elif _proc_net_bound(port, proto, pid, host):
            return
        if time.monotonic() >= deadline:
            raise PeerError(f"nothing on {proto}:{host}:{port} after {timeout:.1f}s")
        time.sleep(0.05)


#: Ports this process handed out, never handed out twice: a peer that runs in a test's network
#: namespace binds its port there, where the probe below (in this process's namespace) cannot
#: see it, so the kernel would offer the same port again.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1", *, span: int = 1, proto: Proto | None = None) -> int:
    """Return a port P such that P..P+span-1 are free on ``host`` (TCP and UDP by default).

    There is an unavoidable race between this check and the peer binding the port; ports come
    from the kernel's ephemeral allocator, so collisions between concurrent tests are rare.
    """
    protos: tuple[Proto, ...] = (proto,) if proto else ("tcp", "udp")
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + span > 65535 or not _handed_out.isdisjoint(range(base, base + span)):
            continue
        ok = True
        for p in range(base, base + span):
            for pr in protos:
                kind = socket.SOCK_STREAM if pr == "tcp" else socket.SOCK_DGRAM
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind((host, p))
                    except OSError:
                        ok = False
                if not ok:
                    break
            if not ok:
                break
        if ok:
            _handed_out.update(range(base, base + span))
            return base
    raise PeerError(f"no run of {span} free ports on {host}")


# ---------------------------------------------------------------------------------------------
# processes


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return "(no file)"
    text = data.decode("utf-8", "replace")
    # Strip the ANSI colours and carriage-return status lines baresip and sipp like to print.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process in its own process group with stdout/stderr captured to files.

    Use as a context manager (stops on exit) or call :meth:`start`/:meth:`stop`. With
    ``netns`` the command runs under ``ip netns exec NAME`` (which execs, so the PID is the
    program's own).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        logdir: str | Path,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        """Prepare (not start) ``argv``; logs go to ``logdir/NAME.stdout`` and ``.stderr``."""
        self.name = name
        self.argv = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
        self.netns = netns
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.logdir / f"{name}.stdout"
        self.stderr_path = self.logdir / f"{name}.stderr"
        self.cwd = Path(cwd) if cwd else self.logdir
        self.env = dict(env) if env is not None else None
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process (stdin is /dev/null)."""
        if self.proc is not None:
            raise PeerError(f"{self.name} already started")
        env = {**os.environ, **self.env} if self.env is not None else None
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=self.cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise PeerError(f"{self.name}: cannot start {self.argv!r}: {exc}") from exc
        return self

    @property
    def pid(self) -> int:
        """PID of the started process."""
        if self.proc is None:
            raise PeerError(f"{self.name} not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running (or not started)."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stdout(self) -> str:
        """Everything written to stdout so far."""
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return self.stderr_path.read_text("utf-8", "replace")

    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout() + self.stderr()

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` of stdout and stderr, labelled, for failure messages."""
        return (
            f"--- {self.name} {self.argv!r} rc={self.returncode}\n"
            f"--- stdout (last {lines}):\n{_tail(self.stdout_path, lines)}\n"
            f"--- stderr (last {lines}):\n{_tail(self.stderr_path, lines)}"
        )

    def fail(self, message: str) -> PeerError:
        """A :class:`PeerError` with ``message`` and this process's log tail."""
        return PeerError(f"{self.name}: {message}\n{self.log_tail()}")

    def wait_ready(
        self,
        predicate: Callable[[], bool] | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        proto: Proto = "tcp",
        log_regex: str | re.Pattern[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Wait until all given conditions hold: ``predicate()``, a bound ``port``, a line
        matching ``log_regex`` in stdout or stderr. Fails early if the process exits.

        Ports of a process in a network namespace are looked up in its /proc/PID/net.
        """
        regex = re.compile(log_regex) if isinstance(log_regex, str) else log_regex
        deadline = time.monotonic() + timeout
        while True:
            ok = True
            if port is not None:
                if self.netns:
                    ok = _proc_net_bound(port, proto, self.pid, host)
                elif proto == "tcp":
                    ok = _proc_net_bound(port, "tcp", None, host)
                else:
                    ok = _proc_net_bound(port, "udp", None, host)
            if ok and regex is not None:
                ok = bool(regex.search(self.output()))
            if ok and predicate is not None:
                ok = predicate()
            if ok:
                return
            if not self.running():
                raise self.fail("exited before it was ready")
            if time.monotonic() >= deadline:
                what = []
                if port is not None:
                    what.append(f"{proto} port {host}:{port}")
                if regex is not None:
                    what.append(f"log /{regex.pattern}/")
                if predicate is not None:
                    what.append("predicate")
                raise self.fail(f"not ready after {timeout:.1f}s (waiting for {', '.join(what)})")
            time.sleep(0.05)

    def wait_log(self, log_regex: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for a line matching ``log_regex`` in the output and return the match.

        Unlike :meth:`wait_ready` this also works after the process has exited.
        """
        regex = re.compile(log_regex)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.output())
            if m:
                return m
            if not self.running() and self.proc is not None:
                m = regex.search(self.output())
                if m:
                    return m
                raise self.fail(f"exited without logging /{log_regex}/")
            if time.monotonic() >= deadline:
                raise self.fail(f"no /{log_regex}/ in its output after {timeout:.1f}s")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself and return its status."""
        if self.proc is None:
            raise PeerError(f"{self.name} not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"still running after {timeout:.1f}s") from None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (by PID) if it is still running."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _exited_unreaped(self) -> bool:
        """True once the leader has exited; it stays a zombie (not reaped), so its PID and
        process group id cannot be reused while we clean up its group."""
        if self.proc is None or self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def stop(self, grace: float = 3.0) -> int | None:
        """Stop by PID: the stop signal to its process group, SIGKILL after ``grace`` s.

        The group is the one ``start_new_session`` made for this child: it holds only the
        child and its descendants (kamailio's workers, tshark's dumpcap). Leftovers of the
        group are killed before the leader is reaped. Returns the exit status (None if never
        started). Safe to call twice.
        """
        if self.proc is None:
            return None
        if self.proc.returncode is None and not self._exited_unreaped():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, self.stop_signal)
            deadline = time.monotonic() + grace
            while not self._exited_unreaped() and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            raise self.fail("did not die after SIGKILL") from None
        return self.proc.returncode

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# network namespaces

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetNamespace:
    """A network namespace whose only interface is ``lo`` (up, default route via ``lo``).

    baresip puts its default-route address into SDP; inside such a namespace that is
    127.0.0.1. Run a test's peers (and the gateway) with ``netns=ns.name``; use
    :meth:`socket` for Python-side sockets inside it. Always :meth:`delete` (context manager).
    """

    def __init__(self, name: str | None = None) -> None:
        """Choose a unique name (with our PID) unless one is given; nothing is created yet."""
        self.name = name or f"sgw-{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    def create(self) -> Self:
        """Create the namespace, bring ``lo`` up and add the default route."""
        for argv in (
            ["ip", "netns", "add", self.name],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
            ["ip", "netns", "exec", self.name, "ip", "route", "add", "default", "dev", "lo"],
        ):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            if res.returncode != 0:
                self.delete()
                raise PeerError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
            self.created = True
        return self

    def delete(self) -> None:
        """Delete the namespace (idempotent). Processes inside should be stopped first."""
        if self.created:
            subprocess.run(
                ["ip", "netns", "delete", self.name], capture_output=True, timeout=10, check=False
            )
            self.created = False

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and return its result."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """Create a socket that lives in this namespace (usable from any thread afterwards).

        setns(2) switches only the calling thread, so a throwaway thread enters the namespace
        and creates the socket there.
        """
        result: list[socket.socket | BaseException] = []

        def worker() -> None:
            try:
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.socket(family, kind, proto))
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=worker, name=f"netns-{self.name}")
        t.start()
        t.join(10)
        if not result:
            raise PeerError(f"could not create a socket in netns {self.name}")
        item = result[0]
        if isinstance(item, BaseException):
            raise item
        return item

    def __enter__(self) -> Self:
        if not self.created:
            self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


# ---------------------------------------------------------------------------------------------
# test PKI (the certificates themselves come from tests/pki.py)


def client_ssl_context(pki: TestPki, *, client_cert: bool = False) -> ssl.SSLContext:
    """An ``ssl`` client context trusting only the test CA (optionally with the client cert)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return ctx


# ---------------------------------------------------------------------------------------------
# minimal SIP over a stream (for checks from Python)


def read_sip_message(sock: socket.socket | ssl.SSLSocket, timeout: float = 5.0) -> str:
    """Read one SIP message (headers + Content-Length body) from a stream socket."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise PeerError(f"connection closed after {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return (head + b"\r\n\r\n" + rest[:length]).decode("utf-8", "replace")


def sip_register_request(
    *,
    user: str,
    domain: str,
    transport: str,
    local: tuple[str, int],
    contact: str | None = None,
    expires: int = 300,
    cseq: int = 1,
    call_id: str | None = None,
    extra_headers: Sequence[str] = (),
) -> bytes:
    """Build a REGISTER request (no auth) as bytes."""
    host, port = local
    branch = "z9hG4bK" + secrets.token_hex(8)
    contact = contact or f"sip:{user}@{host}:{port};transport={transport.lower()}"
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id or secrets.token_hex(8)}@{host}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <{contact}>",
        f"Expires: {expires}",
        "User-Agent: sgw-interop-harness",
        *extra_headers,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def tls_register(
    host: str,
    port: int,
    pki: TestPki,
    *,
    user: str = "alice",
    domain: str = "127.0.0.1",
    client_cert: bool = False,
    timeout: float = 5.0,
    ns: NetNamespace | None = None,
) -> str:
    """REGISTER over TLS (verifying the server with the test CA); return the final response.

    With ``ns`` the connection is made from inside that network namespace.
    """
    ctx = client_ssl_context(pki, client_cert=client_cert)
    if ns is None:
        raw = socket.create_connection((host, port), timeout=timeout)
    else:
        raw = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        try:
            raw.connect((host, port))
        except OSError:
            raw.close()
            raise
    with raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        local = tls.getsockname()
        tls.sendall(
            sip_register_request(
                user=user, domain=domain, transport="TLS", local=(local[0], local[1])
            )
        )
        while True:
            msg = read_sip_message(tls, timeout)
            status = int(msg.split(" ", 2)[1])
            if status >= 200:
                return msg


def status_code(message: str) -> int:
    """Status code of a SIP response text."""
    return int(message.split(" ", 2)[1])


# ---------------------------------------------------------------------------------------------
# kamailio

KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


class Kamailio(ManagedProcess):
    """kamailio as a provider-side registrar/proxy on ``tls:host:tls_port`` (+ optional UDP).

    Route: sanity, in-dialog loose_route + t_relay, CANCEL, REGISTER save("location"),
    INVITE record_route, lookup("location"), t_relay (template in peers/kamailio.cfg.tmpl).
    """

    def __init__(
        self,
        workdir: str | Path,
        pki: TestPki,
        *,
        host: str = "127.0.0.1",
        tls_port: int | None = None,
        udp_port: int | None = None,
        require_client_cert: bool = False,
        debug: int = 2,
        netns: str | None = None,
    ) -> None:
        """Write kamailio.cfg and tls.cfg into ``workdir`` (a free TLS port unless given)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.tls_port = tls_port or free_port(host, proto="tcp")
        self.udp_port = udp_port
        self.pki = pki
        self.cfg_path = self.workdir / "kamailio.cfg"
        self.tls_cfg_path = self.workdir / "tls.cfg"
        self.pid_path = self.workdir / "kamailio.pid"
        listen = [f"listen=tls:{host}:{self.tls_port}"]
        if udp_port:
            listen.append(f"listen=udp:{host}:{udp_port}")
        template = string.Template((RESOURCES / "kamailio.cfg.tmpl").read_text())
        self.cfg_path.write_text(
            template.substitute(
                debug=debug,
                listen="\n".join(listen),
                mpath=KAMAILIO_MODULES + "/",
                rundir=str(self.workdir),
                tls_cfg=str(self.tls_cfg_path),
            )
        )
        verify = "yes" if require_client_cert else "no"
        self.tls_cfg_path.write_text(
            "[server:default]\n"
            "method = TLSv1.2+\n"
            f"verify_certificate = {verify}\n"
            f"require_certificate = {verify}\n"
            f"certificate = {pki.server.cert}\n"
            f"private_key = {pki.server.key}\n"
            f"ca_list = {pki.ca_cert}\n"
            "\n"
            "[client:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = yes\n"
            "require_certificate = yes\n"
            f"certificate = {pki.client.cert}\n"
            f"private_key = {pki.client.key}\n"
            f"ca_list = {pki.ca_cert}\n"
        )
        argv = [
            "kamailio",
            "-f", str(self.cfg_path),
            "-P", str(self.pid_path),
            "-E",  # log to stderr
            "-DD",  # stay in the foreground: the PID we hold is kamailio's main process
            "-w", str(self.workdir),
            "-Y", str(self.workdir),
            "-m", "64",
            "-M", "8",
        ]  # fmt: skip
        super().__init__(argv, name="kamailio", logdir=self.workdir, netns=netns)

    def check_config(self) -> None:
        """Run ``kamailio -c -f`` on the generated config; raise with its output on error."""
        res = subprocess.run(
            ["kamailio", "-c", "-f", str(self.cfg_path), "-Y", str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode != 0:
            raise PeerError(f"kamailio -c -f {self.cfg_path} failed:\n{res.stdout}{res.stderr}")

    def start(self) -> Self:
        """Check the config, start, and wait until the TLS port listens."""
        self.check_config()
        super().start()
        self.wait_ready(port=self.tls_port, host=self.host, proto="tcp", timeout=15)
        if self.udp_port:
            self.wait_ready(port=self.udp_port, host=self.host, proto="udp", timeout=5)
        return self

    @property
    def tls_address(self) -> tuple[str, int]:
        """(host, tls_port)."""
        return self.host, self.tls_port


# ---------------------------------------------------------------------------------------------
# sipp


@dataclass
class SippStats:
    """Final counters of a sipp run (from its -trace_stat CSV, else from its screen)."""

    successful: int = 0
    failed: int = 0
    created: int = 0
    raw: dict[str, str] = field(default_factory=dict, repr=False)


def _render_scenario(src: Path, dst: Path, values: Mapping[str, str]) -> Path:
    text = src.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    leftover = re.findall(r"\{\{(\w+)\}\}", text)
    if leftover:
        raise PeerError(f"{src}: no value for {sorted(set(leftover))}")
    dst.write_text(text)
    return dst


class Sipp(ManagedProcess):
    """One sipp run (UAC or UAS) on ``host:port``, kept as a child (no ``-bg``).

    ``scenario`` is a built-in name (``uac``, ``uas``, ...) or one of the XML files in
    peers/sipp (``register``, ``register_auth``, ``register_uas``, ``register_uas_auth``,
    ``uac_invite``, ``uas_answer``) or a path to a scenario file. Scenario files from peers/sipp
    are rendered with ``params`` (``{{name}}`` markers: ``hold_ms``, ``expires``, ``rtp_action``,
    ``media_port``; ``rtp_file`` streams a PCMU file after ACK) and get
    sipp ``-key`` keywords ``user``, ``domain``, ``to_user``, ``contact``, ``secret``.
    """

    def __init__(
        self,
        workdir: str | Path,
        scenario: str | Path,
        *,
        remote: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        transport: Literal["u1", "t1", "un", "tn"] = "u1",
        calls: int = 1,
        rate: float | None = None,
        limit: int | None = None,
        timeout: float = 20.0,
        user: str = "alice",
        to_user: str = "bob",
        domain: str | None = None,
        contact: str | None = None,
        auth: tuple[str, str] | None = None,
        media_port: int | None = None,
        rtp_file: str | Path | None = None,
        params: Mapping[str, str] | None = None,
        keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        netns: str | None = None,
    ) -> None:
        """Build the sipp command line; a free local port is chosen unless ``port`` is given."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.transport = transport
        self.remote = remote
        name = name or f"sipp-{Path(str(scenario)).stem}-{self.port}"
        self.stat_path = self.workdir / f"{name}.stat.csv"
        self.err_path = self.workdir / f"{name}.errors.log"
        self.msg_path = self.workdir / f"{name}.messages.log"
        self.screen_path = self.workdir / f"{name}.screen.log"
        proto_name = "tcp" if transport.startswith("t") else "udp"
        domain = domain or (remote[0] if remote else host)
        contact = contact or f"sip:{user}@{host}:{self.port};transport={proto_name}"
        scen_args: list[str]
        sc = str(scenario)
        builtin = {"uac", "uas", "regexp", "3pcc-C-A", "3pcc-C-B", "3pcc-A", "3pcc-B", "branchc",
                   "branchs", "uac_pcap", "ooc_default"}  # fmt: skip
        if sc in builtin:
            scen_args = ["-sn", sc]
        else:
            src = SCENARIOS / f"{sc}.xml" if (SCENARIOS / f"{sc}.xml").exists() else Path(sc)
            if not src.exists():
                raise PeerError(f"no sipp scenario {scenario!r}")
            values = {
                "hold_ms": "1000",
                "expires": "300",
                "rtp_action": "",
                "media_port": "[media_port]",
            }
            if rtp_file is not None:
                # Play headerless PCMU (gateway.lab.audio.write_ulaw_tone) from the SDP's port.
                values["rtp_action"] = (
                    f'<nop><action><exec rtp_stream="{rtp_file},-1,0"/></action></nop>'
                )
                values["media_port"] = "[rtpstream_audio_port]"
            values.update(params or {})
            dst = _render_scenario(src, self.workdir / f"{name}.xml", values)
            scen_args = ["-sf", str(dst)]
        allkeys = {
            "user": user,
            "to_user": to_user,
            "domain": domain,
            "contact": contact,
            "secret": auth[1] if auth else "secret",
        }
        allkeys.update(keys or {})
        argv = [
            "sipp",
            *scen_args,
            "-i", host,
            "-p", str(self.port),
            "-t", transport,
            "-m", str(calls),
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_path),
            "-trace_err", "-error_file", str(self.err_path),
            "-trace_msg", "-message_file", str(self.msg_path),
            "-trace_screen", "-screen_file", str(self.screen_path),
            "-timeout", f"{timeout:g}s",
            "-timeout_error",
            "-max_recv_loops", "1000",
        ]  # fmt: skip
        if rate is not None:
            argv += ["-r", f"{rate:g}"]
        if limit is not None:
            argv += ["-l", str(limit)]
        if media_port is not None:
            argv += ["-mp", str(media_port)]
        if auth is not None:
            argv += ["-au", auth[0], "-ap", auth[1]]
        for k, v in allkeys.items():
            argv += ["-key", k, v]
        argv += list(extra_args)
        if remote is not None:
            argv.append(f"{remote[0]}:{remote[1]}")
        super().__init__(argv, name=name, logdir=self.workdir, netns=netns)

    def start(self) -> Self:
        """Start; for a UAS (no remote) wait until its port is bound."""
        super().start()
        if self.remote is None:
            proto: Proto = "tcp" if self.transport.startswith("t") else "udp"
            self.wait_ready(port=self.port, host=self.host, proto=proto, timeout=10)
        return self

    def stats(self) -> SippStats:
        """Parse the final statistics (last line of the -trace_stat CSV, else the screen)."""
        try:
            rows = list(csv.reader(self.stat_path.read_text().splitlines(), delimiter=";"))
        except OSError:
            rows = []
        if len(rows) >= 2:
            header, last = rows[0], rows[-1]
            raw = dict(zip(header, last, strict=False))

            def num(key: str) -> int:
                try:
                    return int(raw.get(key, "0") or 0)
                except ValueError:
                    return 0

            return SippStats(
                successful=num("SuccessfulCall(C)"),
                failed=num("FailedCall(C)"),
                created=num("OutgoingCall(C)") + num("IncomingCall(C)"),
                raw=raw,
            )
        text = _tail(self.screen_path, 400) + "\n" + self.stdout()
        succ = re.findall(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", text)
        fail = re.findall(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", text)
        return SippStats(
            successful=int(succ[-1]) if succ else 0,
            failed=int(fail[-1]) if fail else 0,
        )

    def log_tail(self, lines: int = 25) -> str:
        """Process logs plus the tails of sipp's error and message logs."""
        return (
            super().log_tail(lines)
            + f"\n--- sipp errors (last {lines}):\n{_tail(self.err_path, lines)}"
            + f"\n--- sipp messages (last {2 * lines}):\n{_tail(self.msg_path, 2 * lines)}"
        )

    def wait_done(self, timeout: float = 30.0, *, expect_success: int | None = None) -> SippStats:
        """Wait for sipp to exit; if ``expect_success`` is given assert that many successful
        calls and no failed ones (with logs in the message)."""
        rc = self.wait_exit(timeout)
        st = self.stats()
        if expect_success is not None and (st.successful != expect_success or st.failed):
            raise self.fail(
                f"expected {expect_success} successful calls, got {st.successful} "
                f"successful / {st.failed} failed (exit {rc})"
            )
        return st


# ---------------------------------------------------------------------------------------------
# stunnel


@dataclass(frozen=True)
class TunnelService:
    """One stunnel service: ``accept`` -> ``connect``; ``client`` means "speak TLS outward"."""

    name: str
    accept: tuple[str, int]
    connect: tuple[str, int]
    client: bool


class Stunnel(ManagedProcess):
    """stunnel4 in the foreground, to put TLS in front of (or behind) sipp's TCP transport.

    - :meth:`add_client`: plain TCP in on ``accept``, TLS out to ``connect`` verifying the
      server against the test CA (``verifyChain = yes``, ``checkIP``). sipp -t t1 as a TLS UAC.
    - :meth:`add_server`: TLS in on ``accept`` (test server cert), plain TCP out to
      ``connect``. sipp -t t1 as a TLS UAS.
    Add services, then start.
    """

    def __init__(self, workdir: str | Path, pki: TestPki, *, netns: str | None = None) -> None:
        """Prepare an empty configuration in ``workdir``."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.services: list[TunnelService] = []
        self.conf_path = self.workdir / "stunnel.conf"
        super().__init__(
            ["stunnel", str(self.conf_path)], name="stunnel", logdir=self.workdir, netns=netns
        )

    def add_client(
        self, connect: tuple[str, int], *, accept: tuple[str, int] | None = None
    ) -> TunnelService:
        """TCP ``accept`` (free port by default) -> TLS ``connect``; returns the service."""
        svc = TunnelService(
            f"client{len(self.services)}",
            accept or ("127.0.0.1", free_port("127.0.0.1", proto="tcp")),
            connect,
            True,
        )
        self.services.append(svc)
        return svc

    def add_server(
        self, connect: tuple[str, int], *, accept: tuple[str, int] | None = None
    ) -> TunnelService:
        """TLS ``accept`` (free port by default) -> TCP ``connect``; returns the service."""
        svc = TunnelService(
            f"server{len(self.services)}",
            accept or ("127.0.0.1", free_port("127.0.0.1", proto="tcp")),
            connect,
            False,
        )
        self.services.append(svc)
        return svc

    def start(self) -> Self:
        """Write stunnel.conf, start and wait until every accept port listens."""
        lines = ["foreground = yes", "pid =", "syslog = no", "debug = info", ""]
        for s in self.services:
            lines += [
                f"[{s.name}]",
                f"accept = {s.accept[0]}:{s.accept[1]}",
                f"connect = {s.connect[0]}:{s.connect[1]}",
            ]
            if s.client:
                lines += [
                    "client = yes",
                    f"CAfile = {self.pki.ca_cert}",
                    "verifyChain = yes",
                    f"checkIP = {s.connect[0]}",
                    f"cert = {self.pki.client.cert}",
                    f"key = {self.pki.client.key}",
                ]
            else:
                lines += [f"cert = {self.pki.server.cert}", f"key = {self.pki.server.key}"]
            lines += ["sslVersionMin = TLSv1.2", ""]
        self.conf_path.write_text("\n".join(lines))
        super().start()
        for s in self.services:
            self.wait_ready(port=s.accept[1], host=s.accept[0], proto="tcp", timeout=10)
        return self


# ---------------------------------------------------------------------------------------------
# baresip


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class Baresip(ManagedProcess):
    """A headless baresip phone: plays a WAV, records what it hears, auto-answers.

    Run it in a :class:`NetNamespace` (``netns``) so its SDP says 127.0.0.1. Recordings are
    ``record_dir/dump-*-dec.wav`` (what it received) and ``*-enc.wav`` (what it sent).
    ``tls=True`` gives a TLS account (``transport=tls``, TLS listens on ``sip_port + 1``) and
    ``srtp`` sets ``mediaenc`` (e.g. ``"srtp-mand"``); ``outbound`` routes via a proxy.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        user: str,
        audio_file: str | Path,
        netns: str | None,
        host: str = "127.0.0.1",
        sip_port: int | None = None,
        domain: str | None = None,
        tls: bool = False,
        srtp: str | None = None,
        regint: int = 0,
        outbound: str | None = None,
        auth_pass: str | None = None,
        pki: TestPki | None = None,
        rtp_ports: tuple[int, int] | None = None,
        ctrl_port: int | None = None,
        dial: str | None = None,
        quit_after: float | None = None,
        extra_config: Sequence[str] = (),
        extra_account_params: str = "",
        name: str | None = None,
    ) -> None:
        """Write ``workdir/config`` and ``workdir/accounts``; ``dial`` calls that URI at start,
        ``quit_after`` passes ``-t`` (baresip quits, ending calls, after that many seconds)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.host = host
        self.sip_port = sip_port or free_port(host, span=2)
        self.ctrl_port = ctrl_port or free_port(host, proto="tcp")
        self.record_dir = self.workdir / "rec"
        self.record_dir.mkdir(exist_ok=True)
        self.domain = domain or f"{host}:{self.sip_port}"
        rtp_lo, rtp_hi = rtp_ports or (lambda b: (b, b + 19))(free_port(host, span=20))
        cfg = [
            "poll_method epoll",
            f"sip_listen {host}:{self.sip_port}",
            "call_local_timeout 120",
            "call_max_calls 4",
            f"audio_source aufile,{audio_file}",
            "audio_player aufile,/dev/null",
            "audio_alert aufile,/dev/null",
            "audio_level no",
            "ausrc_format s16",
            "auplay_format s16",
            "auenc_format s16",
            "audec_format s16",
            "audio_buffer 20-160",
            f"rtp_ports {rtp_lo}-{rtp_hi}",
            "rtp_timeout 0",
            "module_path /usr/lib/baresip/modules",
            "module g711.so",
            "module aufile.so",
            "module sndfile.so",
            "module srtp.so",
            "module_tmp account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {host}:{self.ctrl_port}",
            f"snd_path {self.record_dir}",
        ]
        if pki is not None:
            cfg += [f"sip_certificate {pki.server.combined}", f"sip_cafile {pki.ca_cert}"]
        cfg += list(extra_config)
        (self.workdir / "config").write_text("\n".join(cfg) + "\n")
        uri = f"sip:{user}@{self.domain}" + (";transport=tls" if tls else "")
        params = [f"regint={regint}", "answermode=auto", "audio_codecs=pcmu"]
        if srtp:
            params.append(f"mediaenc={srtp}")
        if outbound:
            params.append(f'outbound="{outbound}"')
        if auth_pass:
            params.append(f"auth_pass={auth_pass}")
        account = f"<{uri}>;" + ";".join(params) + extra_account_params
        (self.workdir / "accounts").write_text(account + "\n")
        argv = ["baresip", "-f", str(self.workdir)]
        if dial:
            argv += ["-e", f"/dial {dial}"]
        if quit_after is not None:
            argv += ["-t", str(max(1, round(quit_after)))]
        super().__init__(argv, name=name or f"baresip-{user}", logdir=self.workdir, netns=netns)

    @property
    def uri(self) -> str:
        """This phone's direct SIP URI (host:port, UDP)."""
        return f"sip:{self.user}@{self.host}:{self.sip_port}"

    def start(self) -> Self:
        """Start and wait for "baresip is ready" and the SIP UDP port."""
        super().start()
        self.wait_ready(
            log_regex=r"baresip is ready", port=self.sip_port, host=self.host, proto="udp"
        )
        return self

    def recordings(self, kind: Literal["dec", "enc"] = "dec") -> list[Path]:
        """Recorded WAVs: ``dec`` = audio received from the far end, ``enc`` = audio sent."""
        return sorted(self.record_dir.glob(f"dump-*-{kind}.wav"))

    def wait_established(self, timeout: float = 10.0) -> None:
        """Wait until baresip logs an established call."""
        self.wait_log(r"Call established", timeout)

    def wait_terminated(self, timeout: float = 15.0) -> None:
        """Wait until baresip logs a terminated call."""
        self.wait_log(r"terminated \(duration", timeout)

    def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait until baresip logs a successful registration (``200 OK ... binding``)."""
        self.wait_log(r"200 OK.*binding", timeout)

    def dial(self, ns: NetNamespace | None, uri: str) -> None:
        """Dial ``uri`` via ctrl_tcp (``/dial``)."""
        reply = self.command(ns, "dial", uri)
        if not reply.get("ok"):
            raise self.fail(f"dial {uri} refused: {reply}")

    def hangup(self, ns: NetNamespace | None) -> None:
        """Hang up the current call via ctrl_tcp."""
        reply = self.command(ns, "hangup")
        if not reply.get("ok"):
            raise self.fail(f"hangup refused: {reply}")

    def command(
        self, ns: NetNamespace | None, command: str, params: str = "", timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send a ctrl_tcp command (netstring JSON), e.g. ``hangup`` or ``dial``; return the
        JSON response. ``ns`` must be the namespace baresip runs in (or None)."""
        sock = (
            ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            if ns
            else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        )
        token = secrets.token_hex(4)
        with sock:
            sock.settimeout(timeout)
            sock.connect((self.host, self.ctrl_port))
            sock.sendall(
                _netstring(
                    json.dumps({"command": command, "params": params, "token": token}).encode()
                )
            )
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    m = re.match(rb"(\d+):", buf)
                    if not m or len(buf) < m.end() + int(m.group(1)) + 1:
                        break
                    n = int(m.group(1))
                    payload = buf[m.end() : m.end() + n]
                    buf = buf[m.end() + n + 1 :]
                    msg = json.loads(payload)
                    if msg.get("response") and msg.get("token") == token:
                        return dict(msg)
        raise self.fail(f"no ctrl_tcp response to {command!r}")


# ---------------------------------------------------------------------------------------------
# linphone


#: Codecs liblinphone 5.1 enables unless its configuration says otherwise (all but PCMU get
#: ``enabled=0`` so both ends of a test call settle on PCMU).
_LINPHONE_OTHER_CODECS = (
    ("opus", 48000, 2),
    ("speex", 16000, 1),
    ("speex", 8000, 1),
    ("speex", 32000, 1),
    ("PCMA", 8000, 1),
    ("GSM", 8000, 1),
    ("G722", 8000, 1),
    ("G729", 8000, 1),
)


class Linphone(ManagedProcess):
    """A headless ``linphonec`` (linphone-cli 5.1): a different SIP/media stack from baresip.

    Headless recipe (worked out here, see docs/interop.md):

    - Own ``HOME`` and configuration file (``-c``); ``HOME/.local/share/linphone`` must exist
      or liblinphone logs that it cannot open its database (harmless, but noisy).
    - ``[sip] auto_net_state_mon=0``: with only loopback, liblinphone's network monitor says
      "Local loopback network only !" and never opens its SIP listening points.
    - linphonec drives liblinphone's main loop from readline's idle hook, which only runs with
      a terminal on stdin: with a pipe or /dev/null commands are read but the core never
      iterates (no SIP port is bound, every call fails "No listening point"). So stdin is a
      pseudo-terminal (echo off) and commands are written to its master side.
    - No sound card: the console commands ``soundcard use files``, ``play WAV`` (what it sends)
      and ``record WAV`` (what it hears, 48 kHz mono) replace the audio devices.
    - ``[sip] supported=replaces``: with the default ``gruu`` its Contact becomes the
      registrar's pub-gruu (no port, no transport) and in-dialog requests never reach it.
    - ``autoanswer enable`` answers incoming calls; events ("Registration on ... successful",
      "connected", "ended") are printed on stdout; the debug log (``-d 5``) goes to a file.
    - TLS: ``[sip] root_ca`` is the test CA and ``verify_server_certs=1``; SRTP (SDES) with
      ``media_encryption=srtp`` and ``media_encryption_mandatory=1``.

    Run it in a :class:`NetNamespace`: the address it puts in SDP is its default route's.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        user: str,
        audio_file: str | Path,
        proxy: tuple[str, int],
        netns: str | None,
        tls: bool = False,
        srtp: bool = False,
        pki: TestPki | None = None,
        domain: str | None = None,
        sip_port: int | None = None,
        rtp_port: int | None = None,
        regint: int = 60,
        name: str | None = None,
    ) -> None:
        """Write the configuration; the account registers at ``proxy`` (UDP, or TLS with
        ``tls``) as ``sip:user@domain`` (``domain`` defaults to the proxy's host:port)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.audio_file = Path(audio_file)
        self.tls = tls
        self.record_path = self.workdir / "heard.wav"
        self.log_path = self.workdir / "linphone.log"
        self.config_path = self.workdir / "linphonerc"
        home = self.workdir / "home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.sip_port = sip_port or free_port("127.0.0.1", proto="tcp" if tls else "udp")
        self.rtp_port = rtp_port or free_port("127.0.0.1", span=2, proto="udp")
        self.domain = domain or f"{proxy[0]}:{proxy[1]}"
        transport = "tls" if tls else "udp"
        sip = [
            "[sip]",
            "auto_net_state_mon=0",
            f"sip_port={-1 if tls else self.sip_port}",
            "sip_tcp_port=-1",
            f"sip_tls_port={self.sip_port if tls else -1}",
            "default_proxy=0",
            "register_only_when_network_is_up=0",
            "guess_hostname=1",
            "inc_timeout=60",
            # Without gruu: kamailio's registrar hands out a pub-gruu that linphonec then uses
            # as its Contact (no port, no transport), and in-dialog requests (the ACK) that
            # kamailio relays to it are lost.
            "supported=replaces",
            f"media_encryption={'srtp' if srtp else 'none'}",
            f"media_encryption_mandatory={1 if srtp else 0}",
        ]
        if pki is not None:
            sip += [f"root_ca={pki.ca_cert}", "verify_server_certs=1", "verify_server_cn=1"]
        lines = [
            *sip,
            "",
            "[rtp]",
            f"audio_rtp_port={self.rtp_port}",
            "nortp_timeout=30",
            "",
            "[sound]",
            "echocancellation=0",
            "",
            "[video]",
            "capture=0",
            "display=0",
            "automatically_initiate=0",
            "automatically_accept=0",
            "",
            "[proxy_0]",
            f"reg_proxy=<sip:{proxy[0]}:{proxy[1]};transport={transport}>",
            # Calls to another host name than the proxy's would otherwise go out directly
            # (over UDP); the route sends every request of the account through the proxy.
            f"reg_route=<sip:{proxy[0]}:{proxy[1]};transport={transport};lr>",
            f"reg_identity=sip:{user}@{self.domain}",
            f"reg_expires={regint}",
            "reg_sendregister=1",
            "publish=0",
            "avpf=0",
            "",
            "[audio_codec_0]",
            "mime=PCMU",
            "rate=8000",
            "channels=1",
            "enabled=1",
        ]
        for i, (mime, rate, channels) in enumerate(_LINPHONE_OTHER_CODECS, start=1):
            lines += [
                "",
                f"[audio_codec_{i}]",
                f"mime={mime}",
                f"rate={rate}",
                f"channels={channels}",
                "enabled=0",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self._pty_master: int | None = None
        argv = ["linphonec", "-c", str(self.config_path), "-d", "5", "-l", str(self.log_path)]
        super().__init__(
            argv,
            name=name or f"linphone-{user}",
            logdir=self.workdir,
            env={"HOME": str(home)},
            netns=netns,
        )

    def start(self) -> Self:
        """Start on a pseudo-terminal, switch to file audio, auto-answer, wait for the SIP
        port; the caller waits for the registration (:meth:`wait_registered`)."""
        if self.proc is not None:
            raise PeerError(f"{self.name} already started")
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # what we type need not come back on the master side
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        env = {**os.environ, **(self.env or {})}
        try:
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=slave,
                    stdout=out,
                    stderr=err,
                    cwd=self.cwd,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            os.close(master)
            raise PeerError(f"{self.name}: cannot start {self.argv!r}: {exc}") from exc
        finally:
            os.close(slave)
        self._pty_master = master
        proto: Proto = "tcp" if self.tls else "udp"
        self.wait_ready(log_regex=r"linphonec> ", timeout=15)
        self.command("soundcard use files")
        self.command(f"play {self.audio_file}")
        self.command(f"record {self.record_path}")
        self.command("autoanswer enable")
        self.wait_ready(log_regex=r"Auto answer enabled", timeout=10)
        self.wait_ready(port=self.sip_port, host="0.0.0.0", proto=proto, timeout=10)
        return self

    def command(self, line: str) -> None:
        """Type one console command (``call URI``, ``terminate``, ``calls`` ...)."""
        if self._pty_master is None or not self.running():
            raise self.fail(f"not running, cannot send {line!r}")
        os.write(self._pty_master, line.encode() + b"\n")

    def call(self, uri: str) -> None:
        """Dial ``uri`` through the registered account."""
        self.command(f"call {uri}")

    def hangup(self) -> None:
        """End the current call."""
        self.command("terminate")

    def wait_registered(self, timeout: float = 15.0) -> None:
        """Wait until liblinphone logs the account in ``LinphoneRegistrationOk`` (linphonec
        prints nothing on its console for it unless started with ``-S``)."""
        self.wait_ready(lambda: "to [LinphoneRegistrationOk]" in self.debug_log(), timeout=timeout)

    def wait_established(self, timeout: float = 15.0) -> None:
        """Wait until the call's media streams run."""
        self.wait_log(r"Media streams established", timeout)

    def wait_terminated(self, timeout: float = 15.0) -> None:
        """Wait until linphonec reports the call ended."""
        self.wait_log(r"Call \d+ with \S+ ended", timeout)

    def debug_log(self) -> str:
        """liblinphone's debug log so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        """Console output plus the tail of the debug log (without ALSA's complaints)."""
        debug = [ln for ln in self.debug_log().splitlines() if "alsa" not in ln]
        return (
            super().log_tail(lines)
            + f"\n--- debug log (last {lines}):\n"
            + "\n".join(debug[-lines:])
        )

    def stop(self, grace: float = 3.0) -> int | None:
        """``quit`` (linphonec closes the call and its recording), then stop by PID."""
        if self.running() and self._pty_master is not None:
            with contextlib.suppress(OSError):
                os.write(self._pty_master, b"quit\n")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.proc is not None:
                    self.proc.wait(grace)
        try:
            return super().stop(grace)
        finally:
            if self._pty_master is not None:
                os.close(self._pty_master)
                self._pty_master = None


# ---------------------------------------------------------------------------------------------
# rtpengine and bencode


def bencode(value: Any) -> bytes:
    """Encode ints, str/bytes, lists and dicts (keys sorted) as bencode."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes | bytearray):
        return b"%d:%s" % (len(value), bytes(value))
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, Mapping):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode bencode; byte strings become str when valid UTF-8."""

    def parse(i: int) -> tuple[Any, int]:
        c = data[i : i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1 : end]), end + 1
        if c == b"l":
            items: list[Any] = []
            i += 1
            while data[i : i + 1] != b"e":
                v, i = parse(i)
                items.append(v)
            return items, i + 1
        if c == b"d":
            d: dict[str, Any] = {}
            i += 1
            while data[i : i + 1] != b"e":
                k, i = parse(i)
                v, i = parse(i)
                d[k if isinstance(k, str) else k.decode("latin-1")] = v
            return d, i + 1
        if c.isdigit():
            colon = data.index(b":", i)
            n = int(data[i:colon])
            raw = data[colon + 1 : colon + 1 + n]
            if len(raw) != n:
                raise ValueError("truncated bencode string")
            try:
                return raw.decode(), colon + 1 + n
            except UnicodeDecodeError:
                return raw, colon + 1 + n
        raise ValueError(f"bad bencode at {i}: {data[i : i + 10]!r}")

    value, end = parse(0)
    if end != len(data):
        raise ValueError(f"trailing data after bencode at {end}")
    return value


class Rtpengine(ManagedProcess):
    """rtpengine (userspace only) with an ng control socket; see :meth:`ng`."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        interface: str = "127.0.0.1",
        ng_port: int | None = None,
        port_range: tuple[int, int] = (30000, 30999),
        netns: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare the command line (free ng port unless given)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.interface = interface
        self.ng_port = ng_port or free_port(interface, proto="udp")
        argv = [
            "rtpengine",
            "--config-file=none",
            f"--interface={interface}",
            f"--listen-ng={interface}:{self.ng_port}",
            "--foreground",
            "--log-stderr",
            "--table=-1",
            f"--port-min={port_range[0]}",
            f"--port-max={port_range[1]}",
            f"--pidfile={self.workdir / 'rtpengine.pid'}",
            *extra_args,
        ]
        super().__init__(argv, name="rtpengine", logdir=self.workdir, netns=netns)

    def start(self) -> Self:
        """Start and wait until a ``ping`` gets ``pong``."""
        super().start()
        self.wait_ready(port=self.ng_port, host=self.interface, proto="udp", timeout=10)

        def pong() -> bool:
            try:
                return self.ng({"command": "ping"}, timeout=0.5).get("result") == "pong"
            except (OSError, ValueError, PeerError):
                return False

        self.wait_ready(pong, timeout=10)
        return self

    def ng(self, message: Mapping[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        """Send one ng command and return the decoded reply dict (from inside the process's
        network namespace when it runs in one)."""
        cookie = secrets.token_hex(6).encode()
        sock = (
            NetNamespace(self.netns).socket(socket.AF_INET, socket.SOCK_DGRAM)
            if self.netns
            else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        with sock as s:
            s.settimeout(timeout)
            s.sendto(cookie + b" " + bencode(message), (self.interface, self.ng_port))
            while True:
                try:
                    data, _ = s.recvfrom(65536)
                except TimeoutError:
                    raise PeerError(f"rtpengine: no reply to {message.get('command')}") from None
                got, _, body = data.partition(b" ")
                if got == cookie:
                    reply = bdecode(body)
                    if not isinstance(reply, dict):
                        raise PeerError(f"rtpengine: odd reply {reply!r}")
                    return reply


# ---------------------------------------------------------------------------------------------
# capture


@dataclass(frozen=True)
class Packet:
    """One captured IPv4 UDP or TCP packet."""

    time: float
    proto: Proto
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes

    def is_rtp_like(self) -> bool:
        """UDP payload with RTP version 2 and a non-RTCP payload type (RTP or SRTP)."""
        p = self.payload
        return self.proto == "udp" and len(p) >= 12 and p[0] >> 6 == 2 and not 72 <= p[1] <= 76

    def is_rtcp_like(self) -> bool:
        """UDP payload with version 2 and an RTCP packet type (200-204)."""
        p = self.payload
        return self.proto == "udp" and len(p) >= 8 and p[0] >> 6 == 2 and 200 <= p[1] <= 204

    def is_plain_sip(self) -> bool:
        """Payload that starts like a SIP request or response (cleartext signalling)."""
        return bool(re.match(rb"(?:[A-Z]+ sip:|[A-Z]+ sips:|SIP/2\.0 \d{3})", self.payload[:32]))


def read_pcap(path: str | Path) -> list[Packet]:
    """Parse a classic pcap (Ethernet, Linux cooked or raw IP) into UDP/TCP packets."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise PeerError(f"{path}: not a classic pcap (use tshark -F pcap)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out: list[Packet] = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:  # Ethernet
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif linktype == 113:  # Linux cooked (SLL)
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            ip = frame[16:]
        elif linktype in (101, 228):  # raw IPv4
            ip = frame
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        ip = ip[:total]
        src = socket.inet_ntoa(ip[12:16])
        dst = socket.inet_ntoa(ip[16:20])
        l4 = ip[ihl:]
        if ip[9] == 17 and len(l4) >= 8:
            sp, dp = struct.unpack("!HH", l4[:4])
            out.append(Packet(ts, "udp", (src, sp), (dst, dp), l4[8:]))
        elif ip[9] == 6 and len(l4) >= 20:
            sp, dp = struct.unpack("!HH", l4[:4])
            doff = (l4[12] >> 4) * 4
            if len(l4) > doff:
                out.append(Packet(ts, "tcp", (src, sp), (dst, dp), l4[doff:]))
    return out


class Capture(ManagedProcess):
    """tshark writing a classic pcap of ``lo`` (optionally inside a namespace).

    ``ports`` builds a capture filter (``udp port A or tcp port B ...``); ``bpf`` overrides it.
    After :meth:`stop`, :meth:`packets` parses the file in Python and :meth:`tshark_fields`
    runs a tshark read pass (e.g. with ``decode_as={port: "rtp"}``).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        ports: Sequence[int] = (),
        bpf: str | None = None,
        interface: str = "lo",
        netns: str | None = None,
        name: str = "capture",
    ) -> None:
        """Prepare ``tshark -i IFACE -f FILTER -w workdir/NAME.pcap -F pcap``."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pcap_path = self.workdir / f"{name}.pcap"
        self.filter = bpf or " or ".join(f"port {p}" for p in ports)
        argv = ["tshark", "-n", "-i", interface, "-F", "pcap", "-w", str(self.pcap_path)]
        if self.filter:
            argv += ["-f", self.filter]
        # tshark exits cleanly (flushing the file) on SIGINT.
        super().__init__(
            argv, name=name, logdir=self.workdir, netns=netns, stop_signal=signal.SIGINT
        )

    def start(self) -> Self:
        """Start and wait until tshark reports that it is capturing."""
        super().start()
        self.wait_ready(log_regex=r"Capturing on", timeout=15)
        # tshark logs "Capturing on" just before the capture loop starts; a tiny grace period
        # avoids missing the very first packets.
        time.sleep(0.3)
        return self

    def stop(self, grace: float = 5.0) -> int | None:
        """Let the kernel hand over the last packets, then stop tshark (SIGINT)."""
        if self.running():
            time.sleep(0.3)
        return super().stop(grace)

    def packets(self) -> list[Packet]:
        """All UDP/TCP packets in the capture (call after :meth:`stop`)."""
        return read_pcap(self.pcap_path)

    def tshark_fields(
        self,
        fields: Sequence[str],
        *,
        display_filter: str = "",
        decode_as: Mapping[int, str] | None = None,
    ) -> list[list[str]]:
        """Read the pcap with tshark ``-T fields``; e.g. ``decode_as={4000: "rtp"}``."""
        argv = ["tshark", "-n", "-r", str(self.pcap_path), "-T", "fields"]
        for port, proto in (decode_as or {}).items():
            argv += ["-d", f"udp.port=={port},{proto}"]
        if display_filter:
            argv += ["-Y", display_filter]
        for f in fields:
            argv += ["-e", f]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise PeerError(f"{' '.join(argv)}: {res.stderr}")
        return [line.split("\t") for line in res.stdout.splitlines() if line]


def byte_entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte (about 8 for ciphertext, lower for G.711 audio)."""
    import math

    if not data:
        return 0.0
    counts = [0] * 256
    for b in data:
        counts[b] += 1
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in counts if c)


@contextlib.contextmanager
def running(*procs: ManagedProcess) -> Iterator[tuple[ManagedProcess, ...]]:
    """Start processes in order and stop them in reverse order, whatever happens."""
    started: list[ManagedProcess] = []
    try:
        for p in procs:
            p.start()
            started.append(p)
        yield procs
    finally:
        for p in reversed(started):
            p.stop()
