"""The whole gateway under load: calls set up with SIP, as phones and a provider would.

:class:`SipGatewayTarget` starts ``gateway run`` as a child process (its own signalling
process and one media worker) with a throwaway lab PKI, a provider that takes SIP only over
verified TLS and answers every INVITE with SDES keys (:class:`BenchProvider`), and one UDP
SIP phone per call (:class:`BenchPhone`) that INVITEs through the gateway's LAN side. The
media addresses in the SDP are the load generator's two sockets, so the generator's phone end
talks plain RTP to the gateway's LAN ports and its provider end SRTP to the WAN ports, with
the keys the provider agreed.

The same target measures SIP/TLS call set-ups per second (INVITE → 200 → ACK through the
gateway, with the WAN leg over TLS), for ``gateway bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.bench.loadgen import PHONE_ADDRESS, PROVIDER_ADDRESS, CallLeg
from gateway.bench.targets import (
    DEFAULT_KEEP_CORE_AWAKE,
    GATEWAY_LAN_ADDRESS,
    GATEWAY_WAN_ADDRESS,
    children,
    pin,
)
from gateway.certs.lab import make_lab
from gateway.lab.phone import LabPhone, PhoneError
from gateway.lab.provider import LabProvider, ProviderCall, Refused, answer_offer
from gateway.media.suites import SrtpSuite
from gateway.sip.message import SipRequest, new_tag
from gateway.transport.stream import SipStreamConnection

__all__ = ["BenchPhone", "BenchProvider", "SetupStats", "SipGatewayTarget"]

#: The name on the lab provider certificate, verified by the gateway.
PROVIDER_NAME = "provider.lab"
#: INVITE transactions in flight at once while setting calls up.
SETUP_CONCURRENCY = 32


class BenchProvider(LabProvider):
    """The lab provider, but media goes to the load generator: it answers, never plays.

    Every answer points at ``media`` (the generator's provider socket) and carries a fresh
    key; :attr:`agreed` keeps, per Call-ID, where the gateway wants SRTP and both keys.
    """

    def __init__(self, *, media: tuple[str, int], suite: SrtpSuite, **kwargs: object) -> None:
        super().__init__(suites=(suite,), **kwargs)  # type: ignore[arg-type]
        self.media_target = media
        #: Calling user (the phone's extension, kept in the WAN leg's From) → (gateway WAN
        #: media address, provider's tx key, provider's rx key).
        self.agreed: dict[str, tuple[tuple[str, int], bytes, bytes]] = {}

    async def _on_invite(self, connection: SipStreamConnection, request: SipRequest) -> None:
        call = ProviderCall(request.call_id, new_tag())
        self.calls[request.call_id] = call
        decision = answer_offer(
            request.body,
            address=self.media_target[0],
            port=self.media_target[1],
            suites=self.suites,
        )
        if isinstance(decision, Refused) or decision.tx is None or decision.rx is None:
            reason = decision.reason if isinstance(decision, Refused) else "no keys"
            call.status = 488
            self._reply(
                connection,
                request,
                488,
                to_tag=call.to_tag,
                headers=[("Warning", f'399 provider.lab "{reason}"')],
            )
            return
        call.status, call.suite, call.remote = 200, decision.suite, decision.remote
        call.answer = decision.answer
        self.agreed[getattr(request.from_.uri, "user", None) or ""] = (
            decision.remote,
            decision.tx.master,
            decision.rx.master,
        )
        self._reply(
            connection,
            request,
            200,
            to_tag=call.to_tag,
            headers=[("Contact", self._contact())],
            body=decision.answer,
        )

    async def _play(self, call: ProviderCall) -> None:
        return None  # the generator plays


class BenchPhone(LabPhone):
    """A lab phone whose SDP names the generator's phone socket; it has no media of its own."""

    def __init__(self, *, media_port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._bench_media_port = media_port

    async def start(self) -> None:
        from gateway.lab.rtp import open_endpoint

        self._sip = await open_endpoint(self.address, 0, self._on_sip)

    @property
    def media_port(self) -> int:
        return self._bench_media_port


@dataclass
class SetupStats:
    """How call set-up went for one batch of calls."""

    calls: int
    seconds: float
    failed: int

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


_NO_CAP = (
    "{ concurrent = 0, calls_per_hour = 0, minutes_per_day = 0.0,"
    " international_minutes_per_day = 0.0 }"
)


def _config_text(
    provider_port: int,
    lan_port: int,
    suite: SrtpSuite,
    media_ports: int,
    keep_core_awake: bool,
    realtime_priority: int = 0,
    *,
    lan_address: str = GATEWAY_LAN_ADDRESS,
    wan_address: str = GATEWAY_WAN_ADDRESS,
    phone_address: str = PHONE_ADDRESS,
    provider_address: str = PROVIDER_ADDRESS,
) -> str:
    """A gateway configuration for the benchmark: the lab layout, policy limits lifted.

    Rate limits, caps and the spike lock would (rightly) stop a thousand calls a second from
    one host; they are not what is being measured.
    """
    return f"""\
[lan]
sip_address = "{lan_address}"
sip_port = {lan_port}
transports = ["udp"]
media_address = "{lan_address}"
media_ports = [20000, {20000 + media_ports - 1}]

[wan]
provider_host = "{provider_address}"
provider_port = {provider_port}
domain = "{PROVIDER_NAME}"
sip_address = "{wan_address}"
media_address = "{wan_address}"
media_ports = [20000, {20000 + media_ports - 1}]
srtp_suites = ["{suite.value}"]

[wan.identity]
certificate = "certs/gateway.pem"
private_key = "certs/gateway.key"

[wan.trust]
ca_bundle = "certs/ca.pem"
server_name = "{PROVIDER_NAME}"

[media]
workers = 1
inactivity_timeout = 3600.0
keep_core_awake = {"true" if keep_core_awake else "false"}
realtime_priority = {realtime_priority}

[policy.allowlist]
lan = ["{phone_address}/32"]

[policy.flood]
per_source = {{ rate = 0.0, burst = 0.0 }}
register = {{ rate = 0.0, burst = 0.0 }}
invite = {{ rate = 0.0, burst = 0.0 }}
site = {{ rate = 0.0, burst = 0.0 }}
never_ban = ["127.0.0.0/8"]

[policy.caps]
phone = {_NO_CAP}
site = {_NO_CAP}
spike = {{ enabled = false }}

[log]
level = "warning"
format = "json"

[state]
directory = "state"
"""


def _free_udp_port(address: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


class SipGatewayTarget:
    """The real gateway process; calls set up through it with SIP (UDP LAN, TLS WAN)."""

    name = "gateway"
    direct = False

    def __init__(
        self,
        suite: SrtpSuite,
        phone_port: int,
        provider_port: int,
        *,
        media_cpu: int | None = 0,
        realtime: bool = True,
        other_cpu: int | None = 1,
        max_calls: int = 2000,
        keep_core_awake: bool = DEFAULT_KEEP_CORE_AWAKE,
        realtime_priority: int = 0,
        lan_address: str = GATEWAY_LAN_ADDRESS,
        wan_address: str = GATEWAY_WAN_ADDRESS,
        phone_address: str = PHONE_ADDRESS,
        provider_address: str = PROVIDER_ADDRESS,
    ) -> None:
        # Addresses of the bench's own: another benchmark (bench/flood.py) runs its own range.
        self.lan_address = lan_address
        self.wan_address = wan_address
        self.phone_address = phone_address
        self.provider_address = provider_address
        self._suite = suite
        self._keep_core_awake = keep_core_awake
        self._realtime_priority = realtime_priority
        self._phone_port = phone_port
        self._provider_media = (provider_address, provider_port)
        self._media_cpu = media_cpu
        self._realtime = realtime
        self._other_cpu = other_cpu
        self._max_calls = max_calls
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        self._provider: BenchProvider | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._phones: list[BenchPhone] = []
        self._lan_port = 0
        self.last_setup: SetupStats | None = None

    async def start(self) -> None:
        certs = self._dir / "certs"
        await asyncio.to_thread(make_lab, certs)
        self._provider = BenchProvider(
            media=self._provider_media,
            suite=self._suite,
            address=self.provider_address,
            certificate=certs / "provider.pem",
            private_key=certs / "provider.key",
            client_ca=certs / "ca.pem",
        )
        await self._provider.start()
        self._lan_port = _free_udp_port(self.lan_address)
        config = self._dir / "gateway.toml"
        config.write_text(self.config_text(self._provider.port, self._lan_port))
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._log = open(self._dir / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            "--drain",
            "1",
            cwd=self._dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20.0
        while not self._provider._connections or not self._worker_pids():
            if self._process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not come up; see {self._dir / 'gateway.log'}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let its LAN listener bind after the provider link
        self._pin()

    def config_text(self, provider_port: int, lan_port: int) -> str:
        """The gateway's configuration file (a subclass may add to it)."""
        return _config_text(
            provider_port,
            lan_port,
            self._suite,
            4 * self._max_calls + 8,
            self._keep_core_awake,
            self._realtime_priority,
            lan_address=self.lan_address,
            wan_address=self.wan_address,
            phone_address=self.phone_address,
            provider_address=self.provider_address,
        )

    def _worker_pids(self) -> list[int]:
        if self._process is None:
            return []
        return [
            pid for pid in children(self._process.pid) if b"gateway.media.worker" in _cmdline(pid)
        ]

    def _pin(self) -> None:
        assert self._process is not None
        pin(self._process.pid, self._other_cpu)
        for pid in self._worker_pids():
            pin(pid, self._media_cpu, realtime=self._realtime)

    async def open_calls(self, n: int) -> list[CallLeg]:
        provider = self._provider
        assert provider is not None
        provider.agreed.clear()
        for i in range(len(self._phones), n):
            phone = BenchPhone(
                media_port=self._phone_port,
                address=self.phone_address,
                proxy=(self.lan_address, self._lan_port),
                user=str(1000 + i),
                timeout=10.0,
            )
            await phone.start()
            self._phones.append(phone)
        semaphore = asyncio.Semaphore(SETUP_CONCURRENCY)
        failed = 0

        async def dial(phone: BenchPhone) -> None:
            nonlocal failed
            async with semaphore:
                try:
                    call = await phone.dial("200")
                except (PhoneError, TimeoutError):
                    failed += 1
                    return
                if call.status != 200:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(dial(p) for p in self._phones[:n]))
        self.last_setup = SetupStats(n, time.monotonic() - started, failed)
        legs: list[CallLeg] = []
        for phone in self._phones[:n]:
            call = phone.call
            if call is None or call.status != 200 or call.remote_media is None:
                continue
            agreed = provider.agreed.get(phone.user)
            if agreed is None:
                continue
            wan, provider_tx, provider_rx = agreed
            legs.append(CallLeg(call.remote_media, wan, provider_tx, provider_rx))
        self._pin()  # a restarted worker would have lost its pinning
        return legs

    async def close_calls(self) -> None:
        semaphore = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def hang_up(phone: BenchPhone) -> None:
            async with semaphore:
                with contextlib.suppress(PhoneError, TimeoutError):
                    await phone.hang_up()
                phone.call = None

        await asyncio.gather(*(hang_up(p) for p in self._phones if p.call is not None))

    async def stop(self) -> None:
        for phone in self._phones:
            await phone.close()
        self._phones.clear()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10.0)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._provider is not None:
            await self._provider.stop()
        with contextlib.suppress(Exception):
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def watched(self) -> dict[str, int]:
        assert self._process is not None
        out = {"signalling": self._process.pid}
        for index, pid in enumerate(self._worker_pids()):
            out["media worker" if index == 0 else f"media worker {index}"] = pid
        return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
