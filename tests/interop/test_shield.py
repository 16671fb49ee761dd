"""The credential shield end to end: real phones, the real gateway, a provider that
authenticates (issue 15 item 7; gateway/sip/shield.py).

One network namespace (only ``lo``): kamailio on 127.0.0.1 (the address its test certificate
names) is a TLS provider with its own user table, one trunk account: it challenges REGISTER
with 401, INVITE and any in-dialog BYE from the gateway with 407 (qop=auth), and logs every
credential it is shown (tests/interop/peers/kamailio_auth.cfg.tmpl). The gateway (LAN
127.0.30.20, WAN 127.0.30.21) runs with ``[shield]`` on: the phones' secrets come from the
real ``gateway shield add-phone``, the trunk password from the environment. Phones are sipp on
127.0.30.x answering the gateway's challenges with their LAN secrets (``-au/-ap``).

What the logs show: kamailio sees only the trunk account's user name and the gateway's digests
verify there (REGISTER, INVITE, the gateway's BYE); it never sees a phone's Authorization, a
phone's user name as a digest user, or a LAN secret. The phones see only the gateway's realm.
A call from 1001 to 1002 (registered through the gateway) is answered, carries media and ends.
A phone with a wrong secret is challenged again, never reaches the provider, and is counted.
"""

from __future__ import annotations

import re
import secrets
import socket
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.conftest import ProcessSet, Tones
from tests.interop.gateway_process import GatewayLayout, GatewayProcess
from tests.interop.peers import (
    KAMAILIO_MODULES,
    RESOURCES,
    Kamailio,
    NetNamespace,
    Sipp,
    free_port,
)
from tests.interop.test_media import gateway_events, media_counters
from tests.interop.test_signalling import headers, sipp_messages, wait_until
from tests.pki import TestPki

pytestmark = pytest.mark.interop

Need = Callable[..., dict[str, str]]

GATEWAY_LAN = "127.0.30.20"
GATEWAY_WAN = "127.0.30.21"
PHONE_A = "127.0.30.11"
PHONE_B = "127.0.30.12"
PHONE_C = "127.0.30.13"
PROVIDER_REALM = "provider.test"
GATEWAY_REALM = "sip-media-gateway"
TRUNK_USER = "site-trunk-4711"
TRUNK_PASSWORD_ENV = "GATEWAY_SHIELD_TEST_TRUNK_PASSWORD"
ADMIN_TOKEN_ENV = "GATEWAY_SHIELD_TEST_ADMIN_TOKEN"


class AuthKamailio(Kamailio):
    """kamailio as an authenticating provider: one trunk account, challenges answered by the
    gateway alone (only requests from ``gateway`` get an in-dialog BYE challenge)."""

    def __init__(
        self, workdir: Path, pki: TestPki, *, password: str, gateway: str, netns: str
    ) -> None:
        super().__init__(workdir, pki, netns=netns)
        template = string.Template((RESOURCES / "kamailio_auth.cfg.tmpl").read_text())
        self.cfg_path.write_text(
            template.substitute(
                debug=2,
                listen=f"listen=tls:{self.host}:{self.tls_port}",
                mpath=KAMAILIO_MODULES + "/",
                rundir=str(self.workdir),
                tls_cfg=str(self.tls_cfg_path),
                auth_secret=secrets.token_hex(16),
                realm=PROVIDER_REALM,
                trunk_user=TRUNK_USER,
                trunk_password=password,
                gateway=gateway,
            )
        )

    def verified(self) -> list[tuple[str, str, str]]:
        """(method, digest user, realm) of every request whose credentials verified."""
        return re.findall(r"AUTH ok (\w+) user \[([^\]]*)\] realm \[([^\]]*)\]", self.stderr())

    def challenged(self) -> list[str]:
        return re.findall(r"AUTH challenge (\w+)", self.stderr())

    def credentials_seen(self) -> list[tuple[str, str, str, str]]:
        """(method, To user, Authorization, Proxy-Authorization) of every request."""
        pattern = r"CREDS (\w+) to=(\S*) authorization=\[(.*?)\] proxy-authorization=\[(.*?)\]"
        return re.findall(pattern, self.stderr())


@dataclass
class ShieldSite:
    ns: NetNamespace
    kam: AuthKamailio
    gw: GatewayProcess
    procs: ProcessSet
    tmp: Path
    tones: Tones
    #: Extension -> the LAN secret ``gateway shield add-phone`` printed.
    secrets: dict[str, str]
    trunk_password: str
    metrics_port: int

    def sipp(self, name: str, scenario: str, host: str, user: str, **kw: object) -> Sipp:
        """A phone on ``host`` with the gateway as its outbound proxy and registrar."""
        kw.setdefault("remote", self.gw.lan)
        return self.procs.start(
            Sipp(
                self.tmp / name,
                scenario,
                host=host,
                user=user,
                domain=GATEWAY_LAN,
                name=name,
                netns=self.ns.name,
                **kw,  # type: ignore[arg-type]
            )
        )

    def metric(self, event: str) -> int:
        """``gateway_sip_events_total{event=...}`` from the gateway's /metrics (asked from
        inside the namespace, over a plain socket: no HTTP client needed in it)."""
        sock = self.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(20)
            sock.connect((GATEWAY_LAN, self.metrics_port))
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "replace")
        assert text.split("\r\n", 1)[0].split()[1] == "200", text[:200]
        m = re.search(rf'^gateway_sip_events_total\{{event="{event}"\}} (\d+)', text, re.M)
        return int(m.group(1)) if m else 0


def add_phone(config: Path, user: str) -> str:
    """The real operator command; its stdout is ``USER: SECRET``, shown once."""
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "shield", "add-phone", user, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    name, _, secret = res.stdout.strip().partition(": ")
    assert name == user and len(secret) >= 20, res.stdout
    return secret


@pytest.fixture
def site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
    monkeypatch: pytest.MonkeyPatch,
) -> ShieldSite:
    return start_site(need, netns, pki, procs, tmp_path, tones, monkeypatch)


def start_site(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, object] | None = None,
) -> ShieldSite:
    """kamailio authenticating, the gateway with [shield] on (``extra``: more tables)."""
    need("kamailio", "sipp")
    trunk_password = "Trunk-" + secrets.token_urlsafe(18)
    # The gateway (a child of this process) reads the trunk password from its environment.
    monkeypatch.setenv(TRUNK_PASSWORD_ENV, trunk_password)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, secrets.token_urlsafe(24))
    kam = procs.start(
        AuthKamailio(
            tmp_path / "kam", pki, password=trunk_password, gateway=GATEWAY_WAN, netns=netns.name
        )
    )
    credentials = tmp_path / "shield-credentials.toml"
    credentials.write_text(
        f'[credentials."*"]\nusername = "{TRUNK_USER}"\npassword_env = "{TRUNK_PASSWORD_ENV}"\n'
        f'realm = "{PROVIDER_REALM}"\n'
    )
    credentials.chmod(0o600)
    metrics_port = free_port(GATEWAY_LAN, proto="tcp")
    layout = GatewayLayout(
        lan_address=GATEWAY_LAN,
        wan_address=GATEWAY_WAN,
        provider_port=kam.tls_port,
        config={
            "shield": {
                "enabled": True,
                "phones_file": str(tmp_path / "shield-phones.toml"),
                "credentials_file": str(credentials),
            },
            "admin": {
                "enabled": True,
                "listen": f"{GATEWAY_LAN}:{free_port(GATEWAY_LAN, proto='tcp')}",
                "token_env": ADMIN_TOKEN_ENV,
                "metrics_listen": f"{GATEWAY_LAN}:{metrics_port}",
            },
            **(extra or {}),
        },
    )
    gw = GatewayProcess(tmp_path / "gw", layout, pki, netns=netns.name)
    phone_secrets = {user: add_phone(gw.config_path, user) for user in ("1001", "1002", "1003")}
    procs.start(gw)
    gw.wait_provider_up()
    gw.wait_listening()
    return ShieldSite(
        netns, kam, gw, procs, tmp_path, tones, phone_secrets, trunk_password, metrics_port
    )


def challenges(messages: list[str]) -> list[str]:
    return [
        value
        for m in messages
        for name in ("WWW-Authenticate", "Proxy-Authenticate")
        for value in headers(m, name)
    ]


@pytest.mark.matrix(peer="kamailio-tls", scenario="credential shield")
def test_phones_use_lan_secrets_and_only_the_gateway_answers_the_provider(
    site: ShieldSite,
) -> None:
    """Two phones register and call each other through the gateway and an authenticating
    provider; the provider sees only the trunk account; a wrong LAN secret goes nowhere."""
    s = site.secrets
    phone_b = site.sipp("phone-b", "uas_answer", PHONE_B, "1002", remote=None, timeout=90)
    reg_b = site.sipp(
        "reg-b",
        "register_auth",
        PHONE_B,
        "1002",
        contact=f"sip:1002@{PHONE_B}:{phone_b.port}",
        auth=("1002", s["1002"]),
    )
    reg_b.wait_done(30, expect_success=1)
    reg_a = site.sipp("reg-a", "register_auth", PHONE_A, "1001", auth=("1001", s["1001"]))
    reg_a.wait_done(30, expect_success=1)
    call = site.sipp(
        "phone-a",
        "uac_invite_auth",
        PHONE_A,
        "1001",
        to_user="1002",
        auth=("1001", s["1001"]),
        rtp_file=site.tones.ulaw_440,
        params={"hold_ms": "2000"},
        timeout=60,
    )
    call.wait_done(60, expect_success=1)
    phone_b.wait_done(30, expect_success=1)
    # A phone that has a secret but answers with a wrong one.
    wrong = site.sipp(
        "wrong-c", "register_auth_refused", PHONE_C, "1003", auth=("1003", "x" + s["1003"])
    )
    wrong.wait_done(30, expect_success=1)

    # The call: both legs answered with SRTP, media relayed on the caller's pair.
    wait_until(lambda: len(gateway_events(site.gw, "ended")) >= 2, 15, "2 ended", site.gw)
    answered = gateway_events(site.gw, "answered")
    assert len(answered) == 2 and all(e["suite"] for e in answered), answered
    # Phone A's RTP in on the caller's pair, out as SRTP; in (authenticated) on the callee's
    # pair, out to phone B as RTP.
    counters = [media_counters(site.gw, str(e["pair"])) for e in answered]
    assert any(c["lan_in_packets"] > 20 and c["wan_out_packets"] > 20 for c in counters), counters
    assert any(c["wan_in_packets"] > 20 and c["lan_out_packets"] > 20 for c in counters), counters
    assert all(c["drop_auth"] == 0 for c in counters), counters

    # The provider: every verified digest is the trunk account's, for its own realm: two
    # registrations, the INVITE and the gateway's BYE (a challenge inside the call).
    verified = site.kam.verified()
    assert {(user, realm) for _, user, realm in verified} == {(TRUNK_USER, PROVIDER_REALM)}
    methods = [method for method, _, _ in verified]
    assert methods.count("REGISTER") == 2 and "INVITE" in methods and "BYE" in methods, verified
    assert {"REGISTER", "INVITE", "BYE"} <= set(site.kam.challenged())
    log = site.kam.stderr()
    for secret in (*s.values(), site.trunk_password):
        assert secret not in log
    for method, to_user, authorization, proxy_authorization in site.kam.credentials_seen():
        for value in (authorization, proxy_authorization):
            if value == "<null>":
                continue
            assert f'username="{TRUNK_USER}"' in value and PROVIDER_REALM in value, value
            assert GATEWAY_REALM not in value, (method, value)
        assert to_user != "1003", "a phone with a wrong secret reached the provider"

    # The phones: only the gateway's realm, never the provider's.
    for phone in (reg_a, reg_b, call, wrong):
        seen = challenges(sipp_messages(phone))
        assert seen, phone.name
        assert all(f'realm="{GATEWAY_REALM}"' in c for c in seen), seen
        assert not any(PROVIDER_REALM in m for m in sipp_messages(phone))

    # Counted: the wrong secret, the gateway's answers to the provider.
    assert site.metric("shield_phone_auth_failed") >= 1
    assert site.metric("shield_provider_answered") >= 4
    assert site.metric("shield_provider_refused") == 0


def gateway_command(site: ShieldSite, *argv: str) -> str:
    """``gateway ARGV --config`` of the running gateway (the reload goes over its control
    socket)."""
    res = subprocess.run(
        [sys.executable, "-m", "gateway", *argv, "--config", str(site.gw.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


@pytest.mark.matrix(peer="kamailio-tls", scenario="credential shield")
def test_gateway_reload_applies_added_and_removed_phones(site: ShieldSite) -> None:
    """``gateway shield remove`` then ``gateway reload``: the removed phone is refused at
    once; ``add-phone`` then ``reload``: the new phone registers; no restart."""
    reg = site.sipp(
        "reg-1001", "register_auth", PHONE_A, "1001", auth=("1001", site.secrets["1001"])
    )
    reg.wait_done(30, expect_success=1)
    gateway_command(site, "shield", "remove", "1001")
    new_secret = add_phone(site.gw.config_path, "1004")
    assert "shield phones" in gateway_command(site, "reload")
    removed = site.sipp(
        "removed-1001",
        "register_auth_refused",
        PHONE_A,
        "1001",
        auth=("1001", site.secrets["1001"]),
    )
    removed.wait_done(30, expect_success=1)
    added = site.sipp("added-1004", "register_auth", PHONE_C, "1004", auth=("1004", new_secret))
    added.wait_done(30, expect_success=1)
    registered = [to for method, to, *_ in site.kam.credentials_seen() if method == "REGISTER"]
    assert registered.count("1001") == 2 and "1004" in registered  # 1001: before the removal


@pytest.mark.matrix(peer="kamailio-tls", scenario="credential shield")
def test_the_gateways_own_hang_up_is_answered_with_the_trunk_credentials(
    need: Need,
    netns: NetNamespace,
    pki: TestPki,
    procs: ProcessSet,
    tmp_path: Path,
    tones: Tones,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call with no media is ended by the gateway itself (its media inactivity timeout):
    kamailio challenges the gateway's BYE on each WAN leg with 407, and the gateway answers
    with the trunk account; neither phone sends a BYE."""
    site = start_site(
        need, netns, pki, procs, tmp_path, tones, monkeypatch,
        extra={"media": {"inactivity_timeout": 3.0}},
    )  # fmt: skip
    s = site.secrets
    phone_b = site.sipp("phone-b", "uas_answer", PHONE_B, "1002", remote=None, timeout=90)
    reg_b = site.sipp(
        "reg-b",
        "register_auth",
        PHONE_B,
        "1002",
        contact=f"sip:1002@{PHONE_B}:{phone_b.port}",
        auth=("1002", s["1002"]),
    )
    reg_b.wait_done(30, expect_success=1)
    call = site.sipp(
        "phone-a",
        "uac_invite_auth_gateway_bye",
        PHONE_A,
        "1001",
        to_user="1002",
        auth=("1001", s["1001"]),
        timeout=90,
    )
    call.wait_done(90, expect_success=1)
    phone_b.wait_done(60, expect_success=1)
    wait_until(lambda: len(gateway_events(site.gw, "ended")) >= 2, 15, "2 ended", site.gw)
    # Every BYE kamailio verified came from the gateway's own hang-up (no phone sent one).
    byes = [user for method, user, _ in site.kam.verified() if method == "BYE"]
    assert byes and set(byes) == {TRUNK_USER}, site.kam.verified()
    assert "BYE" in site.kam.challenged()
    assert site.metric("shield_provider_refused") == 0
