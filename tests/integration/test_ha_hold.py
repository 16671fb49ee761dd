"""Hold and un-hold of a call the standby took over (issue 14; RFC 3264 §8, RFC 4568 §7.1.4).

    phone 127.0.68.110 -> LAN 127.0.68.120 | gateway A, then B | WAN 127.0.68.121 -> provider
    127.0.68.130

The pattern of ``test_ha_pair``: two real ``gateway run`` processes of one site on a real
redis-server (UNIX socket in the test's folder, ended by PID). A is active and carries an SDES
call; A is killed with SIGKILL (by PID) and B promoted with ``gateway ha notify master``. Then
the phone puts the call on hold with a re-INVITE (a=sendonly): the provider gets it over B's
TLS link on the call's dialog, with the SRTP key it agreed with A (no re-key, so its context
and rollover counter go on) and an o= version above any A sent; it answers a=recvonly. The
phone takes the call off hold (a=sendrecv, the same key, a higher version again), the tone
authenticates at the provider, and the phone's BYE ends both legs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.certs.lab import make_lab
from gateway.lab.phone import LabPhone
from gateway.sip.message import SipRequest
from gateway.transport.stream import SipStreamConnection
from tests.admin_site import lab_settings, wait_for
from tests.integration.test_ha_pair import (
    KEY_ENV,
    PASSWORD,
    PROVIDER_NAME,
    RecordingProvider,
    _gateway,
    _gone,
    _until,
    redis_server,
)
from tests.integration.test_redis_state import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

__all__ = ["redis_server"]  # the fixture, shared with test_ha_pair

PHONE = "127.0.68.110"
LAN = "127.0.68.120"
WAN = "127.0.68.121"
PROVIDER = "127.0.68.130"
SITE = "site-ha-hold"


class AnsweringProvider(RecordingProvider):
    """The recording lab provider, keeping every re-INVITE too and answering a hold offer
    with a=recvonly (RFC 3264 §6.1) and a higher o= version, with its key of the call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reinvites: list[SipRequest] = []

    def _on_request(self, connection: SipStreamConnection, request: SipRequest) -> None:
        call = self.calls.get(request.call_id)
        if request.method == "INVITE" and request.to.tag and call is not None:
            self.reinvites.append(request)
            direction = "recvonly" if "a=sendonly" in request.body.decode() else "sendrecv"
            origin, version = _origin(call.answer)
            answer = call.answer.decode().replace("a=sendrecv", f"a={direction}")
            bumped = f"{origin} {version + len(self.reinvites)} "
            answer = answer.replace(f"{origin} {version} ", bumped, 1)
            self._reply(
                connection,
                request,
                200,
                to_tag=call.to_tag,
                headers=[("Contact", self._contact())],
                body=answer.encode(),
            )
            return
        super()._on_request(connection, request)


def _origin(body: bytes) -> tuple[str, int]:
    """("o=<user> <session>", version) of an SDP body."""
    [line] = [x for x in body.decode().split("\r\n") if x.startswith("o=")]
    user, session, version = line.split()[:3]
    return f"{user} {session}", int(version)


def _crypto(body: bytes) -> dict[str, str]:
    """tag -> "suite inline:key" of each a=crypto line."""
    found = {}
    for line in body.decode().split("\r\n"):
        if line.startswith("a=crypto:"):
            tag, suite, key = line[len("a=crypto:") :].split()[:3]
            found[tag] = f"{suite} {key}"
    return found


def _phone_sdp(phone: LabPhone, session: int, version: int, direction: str) -> bytes:
    lines = [
        "v=0",
        f"o=phone {session} {version} IN IP4 {phone.address}",
        "s=lab phone",
        f"c=IN IP4 {phone.address}",
        "t=0 0",
        f"m=audio {phone.media_port} RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "a=ptime:20",
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


async def _reinvite(phone: LabPhone, body: bytes) -> int:
    """An in-dialog INVITE from the phone (RFC 3261 §14.1) with ``body``; ACKs a 2xx and
    returns the final status."""
    call = phone.call
    assert call is not None and call.remote_target is not None and call.remote_to is not None
    call.cseq += 1
    invite = phone._request(
        "INVITE",
        call.remote_target,
        to=call.remote_to,
        from_tag=call.local_tag,
        call_id=call.call_id,
        cseq=call.cseq,
    )
    invite.set("Content-Type", "application/sdp")
    invite.body = body
    response = await asyncio.wait_for(phone._transact(invite), 10.0)
    if 200 <= response.status < 300:
        phone._ack(response)
    return response.status


async def test_hold_and_unhold_after_the_takeover_keep_the_srtp_key_then_bye(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(make_lab, tmp_path / "certs")
    certs = tmp_path / "certs"
    provider = AnsweringProvider(
        address=PROVIDER,
        certificate=certs / "provider.pem",
        private_key=certs / "provider.key",
        client_ca=certs / "ca.pem",
        realm=PROVIDER_NAME,
        password=PASSWORD,
    )
    await provider.start()
    env = {**os.environ, KEY_ENV: secrets.token_hex(32)}
    settings = lab_settings(
        lan=LAN,
        wan=WAN,
        provider=PROVIDER,
        provider_name=PROVIDER_NAME,
        provider_port=provider.port,
        lan_allow=["127.0.68.0/24"],
        extra={
            "state": {
                "directory": "state",
                "key_env": KEY_ENV,
                "site": SITE,
                "redis_url": f"unix://{redis_server.socket}",
                "redis_timeout": 1.0,
                "save_interval": 0.2,
            },
        },
    )
    a = _gateway(tmp_path, "gw-a", settings, env)
    b = _gateway(tmp_path, "gw-b", settings, env)
    phone = LabPhone(
        address=PHONE, proxy=(LAN, settings["lan"]["sip_port"]), password=PASSWORD, timeout=5.0
    )
    playing: asyncio.Task[None] | None = None
    try:
        a.start()
        await a.wait_role("standby")
        assert (await asyncio.to_thread(a.cli, "ha", "notify", "master")).returncode == 0
        await a.wait_role("active")
        assert await wait_for(lambda: len(provider.refresh_tls_sessions()) >= 1, 30.0)
        b.start()
        await b.wait_role("standby")
        await phone.start()
        assert (await phone.register()).status == 200
        call = await phone.dial("200")
        assert call.status == 200, call
        (provider_call,) = provider.calls.values()
        first = provider.invites[provider_call.call_id]
        agreed = {
            t: c
            for t, c in _crypto(first.body).items()
            if provider_call.suite and c.startswith(provider_call.suite.value + " ")
        }
        assert len(agreed) >= 1, first.body
        tag, line = next(iter(agreed.items()))
        wan_origin, first_version = _origin(first.body)
        playing = asyncio.get_running_loop().create_task(phone.play(60.0))
        assert await wait_for(lambda: provider.media.srtp_ok > 20, 20.0)

        async def held() -> bool:
            answer = await b.ha()
            return answer is not None and answer["calls_held"] == 1

        assert await _until(held, 20.0), (await b.ha(), b.log())
        workers = [
            p for p in (await asyncio.to_thread(a.ask, "GET", "/status"))["media"]["pids"] if p
        ]
        a.kill()
        assert await wait_for(lambda: all(_gone(p) for p in workers), 30.0)
        assert (await asyncio.to_thread(b.cli, "ha", "notify", "master")).returncode == 0
        active = await b.wait_role("active")
        assert active["takeover"]["restored"] == 1, (active, b.log())
        before = provider.media.srtp_ok
        assert await wait_for(lambda: provider.media.srtp_ok > before + 20, 20.0), b.log()
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        failed = provider.media.auth_failed

        # Hold: the phone's re-offer reaches the provider over B's link, on the call's dialog.
        session = secrets.randbelow(10**9)
        assert await _reinvite(phone, _phone_sdp(phone, session, 2, "sendonly")) == 200, b.log()
        [hold] = provider.reinvites
        assert hold.call_id == provider_call.call_id
        assert hold.to.tag == provider_call.to_tag and hold.from_.tag == first.from_.tag
        assert hold.cseq.seq > first.cseq.seq
        assert "a=sendonly" in hold.body.decode()
        assert _crypto(hold.body)[tag] == line  # the key agreed with A: no re-key
        origin, hold_version = _origin(hold.body)
        assert origin == wan_origin and hold_version > first_version

        # Off hold: the same key again, a higher version again.
        assert await _reinvite(phone, _phone_sdp(phone, session, 3, "sendrecv")) == 200, b.log()
        [_, unhold] = provider.reinvites
        assert "a=sendrecv" in unhold.body.decode() and "a=sendonly" not in unhold.body.decode()
        assert _crypto(unhold.body)[tag] == line
        origin, unhold_version = _origin(unhold.body)
        assert origin == wan_origin and unhold_version > hold_version
        assert unhold.cseq.seq > hold.cseq.seq

        # The tone after the un-hold authenticates with the provider's contexts of the call.
        before = provider.media.srtp_ok
        playing = asyncio.get_running_loop().create_task(phone.play(30.0))
        assert await wait_for(lambda: provider.media.srtp_ok > before + 20, 20.0), b.log()
        assert provider.media.auth_failed == failed and provider.media.plaintext == 0
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing

        # The phone's BYE ends both legs.
        byes = provider.requests.count("BYE")
        bye = await phone.hang_up()
        assert bye is not None and bye.status == 200
        assert await wait_for(lambda: provider.requests.count("BYE") == byes + 1, 10.0)

        async def no_calls() -> bool:
            return not (await asyncio.to_thread(b.ask, "GET", "/calls"))["calls"]

        assert await _until(no_calls, 20.0), b.log()
    finally:
        if playing is not None:
            playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await playing
        await phone.close()
        a.kill()
        b.stop()
        await provider.stop()
