"""Media worker and controller end to end on loopback: a phone socket, a provider socket keyed
with pylibsrtp, a real worker process between them (docs/design.md §3.1–3.3, RFC 3711).

Addresses are distinct loopback addresses (all of 127.0.0.0/8 answers on ``lo``); ports are
picked by the OS. Waits are bounded socket timeouts or controller round trips, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pylibsrtp
import pytest
import uvloop

from gateway.media import worker as worker_module
from gateway.media.control import (
    ENCODER,
    REPORT_DECODER,
    QueryStats,
    Shutdown,
    SrtpKeying,
    StreamSpec,
    WorkerStats,
)
from gateway.media.controller import MediaController, MediaError
from gateway.media.suites import SrtpSuite
from gateway.media.worker import media_socket, run_worker

LAN = "127.0.0.20"
WAN = "127.0.0.21"
PHONE_IP = "127.0.0.10"
PROVIDER_IP = "127.0.0.30"
INTRUDER_IP = "127.0.0.2"
TIMEOUT = 5.0
SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80


def rtp(seq: int, payload: bytes = b"\xd5" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xCAFEBABE) + payload


def udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(TIMEOUT)
    return sock


def port_pair(address: str, held: list[socket.socket]) -> int:
    """An OS-picked port P with P+1 also free; both stay held (in ``held``) until released."""
    for _ in range(100):
        first = udp(address)
        port = first.getsockname()[1]
        if port < 65535:
            try:
                second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                second.bind((address, port + 1))
            except OSError:
                second.close()
            else:
                held += [first, second]
                return port
        first.close()
    raise RuntimeError("no free port pair")


@contextlib.contextmanager
def free_ports() -> Iterator[tuple[int, int]]:
    held: list[socket.socket] = []
    try:
        ports = port_pair(LAN, held), port_pair(WAN, held)
    finally:
        for sock in held:
            sock.close()
    yield ports


def session(k: SrtpKeying, ssrc_type: int) -> pylibsrtp.Session:
    profile = SrtpSuite.from_name(k.suite).libsrtp_profile
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=k.master, ssrc_type=ssrc_type, srtp_profile=profile)
    )


async def recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    # A blocking read with a timeout, off the event loop so the controller keeps running.
    return await asyncio.to_thread(sock.recvfrom, 2048)


def bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


async def relay_scenario() -> None:
    """Phone → SRTP at the provider, SRTP back → plain at the phone, RTP bleed refused."""
    async with MediaController(lan_address=LAN, wan_address=WAN, workers=1) as controller:
        phone, provider, intruder = udp(PHONE_IP), udp(PROVIDER_IP), udp(INTRUDER_IP)
        to_provider = SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))
        from_provider = SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))
        with free_ports() as (lan_port, wan_port):
            spec = StreamSpec(
                lan_port=lan_port,
                wan_port=wan_port,
                phone_addr=phone.getsockname(),
                provider_addr=provider.getsockname(),
                wan_tx=to_provider,
                wan_rx=from_provider,
            )
            await controller.open_stream("call-1@phone", 0, spec)
        provider_rx = session(to_provider, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        provider_tx = session(from_provider, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        try:
            # Phone → gateway LAN → SRTP from the gateway's WAN port to the provider. The
            # phone's first packet is on probation (RFC 3550 A.1), dropped; the second goes.
            phone.sendto(rtp(0), (LAN, lan_port))
            phone.sendto(rtp(1), (LAN, lan_port))
            data, source = await recv(provider)
            assert source == (WAN, wan_port)
            assert data != rtp(1)
            assert provider_rx.unprotect(data) == rtp(1)

            # Provider → gateway WAN → plain RTP from the gateway's LAN port to the phone.
            provider.sendto(provider_tx.protect(rtp(500)), (WAN, wan_port))
            data, source = await recv(phone)
            assert (data, source) == (rtp(500), (LAN, lan_port))

            # RTP bleed: another host's packet is not relayed; the next packet out is the
            # phone's, which also proves the injected one was processed first (same socket).
            intruder.sendto(rtp(2, b"\x00" * 160), (LAN, lan_port))
            phone.sendto(rtp(3), (LAN, lan_port))
            data, _ = await recv(provider)
            assert provider_rx.unprotect(data) == rtp(3)

            # A tampered WAN packet is not relayed either.
            forged = bytearray(provider_tx.protect(rtp(501)))
            forged[-1] ^= 0x55
            provider.sendto(bytes(forged), (WAN, wan_port))
            provider.sendto(provider_tx.protect(rtp(502)), (WAN, wan_port))
            data, _ = await recv(phone)
            assert data == rtp(502)

            stats = await controller.stats()
            counters = stats["call-1@phone/0"]
            assert counters.drop_wrong_source == 1
            assert counters.drop_auth == 1
            assert counters.drop_ssrc == 1
            assert counters.lan_in_packets == 4
            assert counters.wan_out_packets == 2
            assert counters.wan_in_packets == 3
            assert counters.lan_out_packets == 2

            await controller.close_call("call-1@phone")
            await controller.stats()  # a round trip: CloseCall was handled before the reply
            assert await controller.stats() == {}
            for address, port in ((LAN, lan_port), (LAN, lan_port + 1), (WAN, wan_port)):
                assert bindable(address, port)
            assert bindable(WAN, wan_port + 1)
        finally:
            for sock in (phone, provider, intruder):
                sock.close()


async def test_end_to_end_relay() -> None:
    await relay_scenario()


def test_end_to_end_relay_under_uvloop() -> None:
    uvloop.run(relay_scenario())


@pytest.mark.parametrize("fastpath", ["0", "1"], ids=["python-loop", "c-fast-path"])
async def test_end_to_end_relay_on_both_packet_loops(
    fastpath: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scenario (bleed, tamper, replay, counters) through the pure-Python loop and
    through the optional C fast path; the worker process inherits the switch."""
    if fastpath == "1" and worker_module._fastpath is None:
        if os.environ.get("CI"):
            pytest.fail("the C fast path was not built (pip install -e . compiles it with gcc)")
        pytest.skip("the C fast path is not built here")
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", fastpath)
    await relay_scenario()


async def test_bind_failure_is_reported() -> None:
    async with MediaController(lan_address=LAN, wan_address=WAN, workers=1) as controller:
        with free_ports() as (lan_port, wan_port):
            pass
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((WAN, wan_port + 1))
        try:
            spec = StreamSpec(lan_port=lan_port, wan_port=wan_port)
            with pytest.raises(MediaError, match=rf"cannot bind {WAN}:{wan_port + 1}"):
                await controller.open_stream("busy", 0, spec)
            # The sockets bound before the failure were released again.
            assert bindable(LAN, lan_port) and bindable(WAN, wan_port)
            assert await controller.stats() == {}
        finally:
            blocker.close()


async def test_idle_call_reported_once() -> None:
    idle: asyncio.Queue[str] = asyncio.Queue()
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, inactivity_timeout=0.2, on_idle=idle.put_nowait
    ) as controller:
        with free_ports() as (lan_port, wan_port):
            await controller.open_stream(
                "quiet", 0, StreamSpec(lan_port=lan_port, wan_port=wan_port)
            )
        assert await asyncio.wait_for(idle.get(), TIMEOUT) == "quiet"
        # Reported once: several more idle checks (every 0.1 s here) report nothing new.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(idle.get(), 0.5)


def require_fastpath() -> None:
    if worker_module._fastpath is None:
        if os.environ.get("CI"):
            pytest.fail("the C fast path was not built (pip install -e . compiles it with gcc)")
        pytest.skip("the C fast path is not built here")


async def test_idle_check_sees_media_relayed_by_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The idle check reads the fast path's last-packet stamps without folding its counters
    (that fold, for every stream at once, was a pause of milliseconds at 1000 calls): a call
    whose media only the C loop relays is not idle, a silent one beside it is."""
    require_fastpath()
    monkeypatch.setenv("GATEWAY_MEDIA_FASTPATH", "1")
    idle: list[str] = []
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, inactivity_timeout=0.3, on_idle=idle.append
    ) as controller:
        phone, provider = udp(PHONE_IP), udp(PROVIDER_IP)
        try:
            keying = SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))
            lan_ports = {}
            for call_id in ("talking", "quiet"):
                with free_ports() as (lan_port, wan_port):
                    spec = StreamSpec(
                        lan_port=lan_port,
                        wan_port=wan_port,
                        phone_addr=phone.getsockname(),
                        provider_addr=provider.getsockname(),
                        wan_tx=keying,
                        wan_rx=keying,
                    )
                    await controller.open_stream(call_id, 0, spec)
                lan_ports[call_id] = lan_port
            talking_port = lan_ports["talking"]
            phone.sendto(rtp(0), (LAN, talking_port))  # on probation (RFC 3550 A.1): dropped
            sent = 0
            # Media every 50 ms (the pace of the test, not a wait for readiness) for about
            # four inactivity timeouts, or until the silent call has been reported.
            while sent < 25 and "quiet" not in idle:
                sent += 1
                phone.sendto(rtp(sent), (LAN, talking_port))
                provider.recvfrom(2048)  # relayed (the first by Python, the rest in C)
                await asyncio.sleep(0.05)
            for _ in range(20):  # a few more packets, then the report must be there
                if "quiet" in idle:
                    break
                sent += 1
                phone.sendto(rtp(sent), (LAN, talking_port))
                provider.recvfrom(2048)
                await asyncio.sleep(0.05)
            assert "quiet" in idle
            assert "talking" not in idle
            counters = (await controller.stats())["talking/0"]
            assert counters.lan_in_packets - 1 == counters.wan_out_packets == sent
        finally:
            phone.close()
            provider.close()


def test_fast_path_poll_returns_at_its_timeout_and_keeper_thread_lives_with_the_engine() -> None:
    """``Engine.poll`` stays in C between packets but still comes back to Python when its
    timeout passes; the core keeper is a SCHED_IDLE thread that ends with its engine."""
    require_fastpath()
    fastpath = worker_module._fastpath
    assert fastpath is not None

    def keepers() -> list[int]:
        found = []
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().strip() == "core-keeper":
                    found.append(int(tid))
        return found

    before = keepers()
    epoll = select.epoll()
    try:
        plain = fastpath.Engine(epoll.fileno())
        assert plain.keeps_core_awake is False
        start = time.monotonic()
        now, events, packets = plain.poll(30)
        assert (events, packets) == ([], [])
        assert now - start >= 0.03
        del plain

        engine = fastpath.Engine(epoll.fileno(), keep_core_awake=True)
        assert engine.keeps_core_awake is True
        (keeper,) = set(keepers()) - set(before)
        assert os.sched_getscheduler(keeper) == os.SCHED_IDLE
        del engine  # joins the thread
        assert keeper not in keepers()
    finally:
        epoll.close()


async def test_workers_are_pinned_to_their_own_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to pin to")
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, pin_workers=True
    ) as controller:
        await controller.wait_running(TIMEOUT)
        (pid,) = controller.worker_pids()
        assert pid is not None
        await controller.stats()  # a round trip: the worker is past its start-up
        # The first allowed core stays with the signalling process.
        assert os.sched_getaffinity(pid) == {cores[1]}


async def test_realtime_priority_is_for_the_packet_loop_only() -> None:
    """SCHED_FIFO for the loop's thread; the core keeper beside it stays SCHED_IDLE (a FIFO
    spinner would take the core from everything, kernel threads included)."""
    require_fastpath()
    if os.geteuid() != 0:
        pytest.skip("SCHED_FIFO needs root (or CAP_SYS_NICE / RLIMIT_RTPRIO)")
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, keep_core_awake=True, realtime_priority=3
    ) as controller:
        await controller.wait_running(TIMEOUT)
        await controller.stats()  # a round trip: the worker is past its start-up
        (pid,) = controller.worker_pids()
        assert pid is not None
        policies = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                policies[comm.read().strip()] = (
                    os.sched_getscheduler(int(tid)),
                    os.sched_getparam(int(tid)).sched_priority,
                )
        assert policies.pop("core-keeper") == (os.SCHED_IDLE, 0)
        assert list(policies.values()) == [(os.SCHED_FIFO, 3)]


async def test_dead_worker_is_restarted_and_its_calls_restored() -> None:
    lost: asyncio.Queue[list[str]] = asyncio.Queue()
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, on_worker_lost=lost.put_nowait
    ) as controller:
        with free_ports() as (lan_port, wan_port):
            await controller.open_stream(
                "survivor", 0, StreamSpec(lan_port=lan_port, wan_port=wan_port)
            )
        (pid,) = controller.worker_pids()
        assert pid is not None
        os.kill(pid, 9)
        # tests/integration/test_worker_recovery.py checks the media; here: the call is back.
        async with asyncio.timeout(TIMEOUT):
            while controller.worker_states()[0]["restarts"] != 1:
                await asyncio.sleep(0.02)
        (new_pid,) = controller.worker_pids()
        assert new_pid not in (None, pid)
        assert lost.empty()
        assert set(await controller.stats()) == {"survivor/0"}
        await controller.close_call("survivor")
        # The new worker serves calls; the closed call's ports are free again.
        await controller.open_stream("next", 0, StreamSpec(lan_port=lan_port, wan_port=wan_port))
        assert set(await controller.stats()) == {"next/0"}


async def test_sigterm_to_the_process_group_leaves_the_workers_running() -> None:
    """A service manager stops the gateway with SIGTERM to its whole process group: the
    workers must keep the calls' media while the signalling process drains them (they ended
    at once and were restarted mid-drain, "MEDIA WORKER 0 DIED (exit status -15)")."""
    lost: asyncio.Queue[list[str]] = asyncio.Queue()
    async with MediaController(
        lan_address=LAN, wan_address=WAN, workers=1, on_worker_lost=lost.put_nowait
    ) as controller:
        with free_ports() as (lan_port, wan_port):
            await controller.open_stream(
                "kept", 0, StreamSpec(lan_port=lan_port, wan_port=wan_port)
            )
        (pid,) = controller.worker_pids()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        # A stats round trip after the signal: the same worker answers, with the call.
        assert set(await controller.stats()) == {"kept/0"}
        assert controller.worker_pids() == [pid]
        assert lost.empty()


def test_media_socket_marks_dscp_ef_and_reports_bind_errors() -> None:
    sock = media_socket("127.0.0.1", 0, 46)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 46 << 2
        assert sock.getblocking() is False
        with pytest.raises(OSError):
            media_socket("127.0.0.1", sock.getsockname()[1], 46)
    finally:
        sock.close()


def test_worker_ignores_invalid_control_messages() -> None:
    ours, theirs = socket.socketpair()
    worker = threading.Thread(
        target=run_worker,
        args=(theirs,),
        kwargs={"lan_address": LAN, "wan_address": WAN, "inactivity_timeout": 60.0},
    )
    worker.start()
    try:
        ours.settimeout(TIMEOUT)
        for payload in (
            b"\xc1garbage",
            ENCODER.encode({"type": "Nope"}),
            ENCODER.encode(QueryStats(7)),
        ):
            ours.sendall(len(payload).to_bytes(4, "big") + payload)
        header = ours.recv(4, socket.MSG_WAITALL)
        body = ours.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
        reply = REPORT_DECODER.decode(body)
        assert isinstance(reply, WorkerStats)
        assert reply.request_id == 7 and reply.streams == {}
        shutdown = ENCODER.encode(Shutdown())
        ours.sendall(len(shutdown).to_bytes(4, "big") + shutdown)
        worker.join(TIMEOUT)
        assert not worker.is_alive()
    finally:
        ours.close()
        worker.join(TIMEOUT)


def test_fast_path_refused_with_another_libsrtp_major_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The C lanes call srtp_protect/srtp_unprotect with libsrtp 2's arguments: the worker
    reads the version of the libsrtp pylibsrtp loaded and, with another major version, runs
    the Python loop and says so once on stderr."""
    require_fastpath()
    assert worker_module.fastpath_refusal() is None  # the libsrtp 2 that is installed
    found = worker_module._libsrtp_version()
    assert isinstance(found, tuple)
    version, text = found
    assert version >> 24 == 2 and text.startswith("libsrtp2 2.")
    monkeypatch.setattr(worker_module, "LIBSRTP_MAJOR", 3)
    ours, theirs = socket.socketpair()
    phone, provider = udp(PHONE_IP), udp(PROVIDER_IP)
    worker = worker_module._Worker(
        theirs, lan_address=LAN, wan_address=WAN, inactivity_timeout=60.0, dscp=0, fast_path=True
    )
    try:
        assert worker._engine is None
        keys = SrtpKeying(suite=SUITE.value, master=os.urandom(SUITE.master_length))
        with free_ports() as (lan_port, wan_port):
            spec = StreamSpec(
                lan_port=lan_port,
                wan_port=wan_port,
                phone_addr=phone.getsockname(),
                provider_addr=provider.getsockname(),
                wan_tx=keys,
                wan_rx=keys,
            )
            assert worker._open("refused", 0, spec, 0.0) is None
        assert worker._calls["refused"].streams[0].lanes is None
        phone.sendto(rtp(0), (LAN, lan_port))  # on probation (RFC 3550 A.1): dropped
        worker._python_round(TIMEOUT, -1)
        for seq in (1, 2):
            phone.sendto(rtp(seq), (LAN, lan_port))
            worker._python_round(TIMEOUT, -1)
            data, _ = provider.recvfrom(2048)
            assert session(keys, pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(data) == rtp(seq)
    finally:
        worker._close_call("refused")
        worker._epoll.close()
        for sock in (ours, theirs, phone, provider):
            sock.close()
    err = capsys.readouterr().err
    assert err.count("C fast path off") == 1
    assert "libsrtp2 2." in err and "libsrtp 3" in err


def test_fast_path_wait_lets_other_python_threads_run() -> None:
    """Engine.poll releases the GIL while epoll waits: a thread in a long poll no longer holds
    up the interpreter's other threads (nor with them the main thread's signal handlers)."""
    require_fastpath()
    fastpath = worker_module._fastpath
    assert fastpath is not None
    epoll = select.epoll()
    waker = udp("127.0.6.1")
    target = udp("127.0.6.2")
    epoll.register(target.fileno(), select.EPOLLIN)
    engine = fastpath.Engine(epoll.fileno())
    entered = threading.Event()
    result: list[list[tuple[int, int]]] = []

    def wait() -> None:
        entered.set()
        _, events, _ = engine.poll(int(TIMEOUT * 1000))
        result.append(events)

    thread = threading.Thread(target=wait)
    try:
        thread.start()
        entered.wait(TIMEOUT)
        # Runs only if the waiting thread let go of the GIL; its datagram then ends the wait
        # (with the GIL held, this ran after the poll had timed out, with no event).
        waker.sendto(b"wake", target.getsockname())
        thread.join(2 * TIMEOUT)
        assert result == [[(target.fileno(), select.EPOLLIN)]]
    finally:
        thread.join(2 * TIMEOUT)
        epoll.close()
        waker.close()
        target.close()


def test_core_keeper_blocks_every_signal() -> None:
    """A process-directed signal must reach the packet loop's thread (its epoll_wait returns
    EINTR and Python's handler runs at once), never the keeper, where it waited for the loop's
    next return."""
    require_fastpath()
    fastpath = worker_module._fastpath
    assert fastpath is not None
    epoll = select.epoll()
    try:
        engine = fastpath.Engine(epoll.fileno(), keep_core_awake=True)
        assert engine.keeps_core_awake
        keepers = []
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().strip() == "core-keeper":
                    keepers.append(tid)
        (keeper,) = keepers
        with open(f"/proc/self/task/{keeper}/status") as status:
            fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
        blocked = int(fields["SigBlk"], 16)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM):
            assert blocked & (1 << (number - 1)), signal.Signals(number).name
        del engine
    finally:
        epoll.close()
