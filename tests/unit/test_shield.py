"""The credential shield in the B2BUA core (gateway.sip.shield): phones answer the gateway's
challenges with their LAN secrets; the provider's challenges are answered by the gateway with
the trunk credentials; no phone credential goes upstream or is kept."""

from __future__ import annotations

from gateway.policy import PolicyEngine, PolicySettings
from gateway.policy.settings import AllowlistSettings
from gateway.sip.b2bua import B2bua
from gateway.sip.digest import answer, parse, response_value
from gateway.sip.message import SipRequest, SipResponse, make_response
from gateway.sip.shield import ProviderCredential, ShieldSettings
from tests.unit.test_b2bua import (
    Harness,
    only,
    phone_request,
    phone_sdp,
    provider_answer,
    respond,
    settings,
)

SECRET = "Lan-Only-Secret-4711-xyz"
TRUNK_USER, TRUNK_PASSWORD = "trunk-account-77", "Provider-Password-9!"
PROVIDER_CHALLENGE = 'Digest realm="provider.example", nonce="pn1", algorithm=MD5, qop="auth"'


class ShieldHarness(Harness):
    def __init__(self, policy: PolicyEngine | None = None, **credentials: ProviderCredential):
        super().__init__(policy)
        creds = credentials or {"*": ProviderCredential(TRUNK_USER, TRUNK_PASSWORD)}
        self.core = B2bua(
            settings(),
            policy=policy,
            shield=ShieldSettings(
                phone_secrets={"1001": SECRET},
                provider_credentials=creds,
                nonce_key=b"n" * 32,
                realm="gw.lan",
            ),
        )
        self.core.wan_connection_state(True, "TLSv1.3 verified", self.now, self.wall)
        self.collect()
        self.lan.clear()
        self.wan.clear()


def register(h: Harness, cseq: int, auth: str = "") -> None:
    extra = f"Authorization: {auth}\r\n" if auth else ""
    h.from_phone(
        "REGISTER sip:127.0.0.20 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.10:5062;branch=z9hG4bKsh{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@127.0.0.20>;tag=r1\r\nTo: <sip:1001@127.0.0.20>\r\n"
        f"Call-ID: reg-1@phone\r\nCSeq: {cseq} REGISTER\r\n"
        "Contact: <sip:1001@127.0.0.10:5062>\r\nExpires: 120\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    )


def phone_credentials(challenge: SipResponse, password: str, method: str, uri: str) -> str:
    name = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
    value = challenge.get(name)
    assert value is not None
    return answer(parse(value), username="1001", password=password, method=method, uri=uri)


def assert_trunk_credentials(request: SipRequest, header: str) -> None:
    value = request.get(header)
    assert value is not None
    params = parse(value).params
    assert params["username"] == TRUNK_USER and params["realm"] == "provider.example"
    assert params["response"] == response_value(
        algorithm="MD5",
        username=TRUNK_USER,
        realm="provider.example",
        password=TRUNK_PASSWORD,
        method=request.method,
        uri=str(request.uri),
        nonce="pn1",
        qop="auth",
        nc=params["nc"],
        cnonce=params["cnonce"],
    )


def registered_phone(h: ShieldHarness) -> SipRequest:
    """The phone registers with its LAN secret; returns the REGISTER the gateway authorised
    upstream."""
    register(h, 1)
    [challenge] = only(h.take_lan(), SipResponse)
    assert challenge.status == 401 and not h.take_wan()
    register(h, 2, phone_credentials(challenge, SECRET, "REGISTER", "sip:127.0.0.20"))
    [upstream] = only(h.take_wan(), SipRequest)
    assert not upstream.has("Authorization") and SECRET.encode() not in bytes(upstream)
    provider_401 = make_response(upstream, 401, to_tag="p")
    provider_401.add("WWW-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(provider_401)
    assert not h.take_lan()  # the phone never sees the provider's challenge
    [authorised] = only(h.take_wan(), SipRequest)
    assert authorised.call_id == upstream.call_id and authorised.from_.tag == upstream.from_.tag
    assert authorised.cseq.seq == upstream.cseq.seq + 1
    assert authorised.top_via.branch != upstream.top_via.branch
    assert_trunk_credentials(authorised, "Authorization")
    ok = make_response(authorised, 200, to_tag="p")
    ok.add("Contact", f"{authorised.get('Contact')}")
    h.from_provider(ok)
    [done] = only(h.take_lan(), SipResponse)
    assert done.status == 200 and done.call_id == "reg-1@phone"
    return authorised


def test_register_challenged_by_the_gateway_answered_upstream_with_trunk_credentials() -> None:
    h = ShieldHarness()
    registered_phone(h)
    assert h.core.counters["shield_provider_answered"] == 1
    assert "1001" in h.core.shield.last_used  # type: ignore[union-attr]
    [binding] = h.core.registrations.all()
    assert binding.last_authorization == []


def test_wrong_secret_is_challenged_again_counted_and_banned_like_failed_401s() -> None:
    policy = PolicyEngine(
        PolicySettings(allowlist=AllowlistSettings(lan=("127.0.0.0/8",), wan=("127.0.0.0/8",)))
    )
    h = ShieldHarness(policy)
    limit = policy.settings.flood.auth_failures
    register(h, 1)
    for cseq in range(2, 2 + limit):
        [challenge] = [m for m in only(h.take_lan(), SipResponse) if m.status == 401]
        register(h, cseq, phone_credentials(challenge, "guess", "REGISTER", "sip:127.0.0.20"))
    assert not h.take_wan()  # no guess ever reached the provider
    assert h.core.counters["shield_phone_auth_failed"] == limit
    assert [b.rule for b in policy.bans(h.now)] == ["auth.failures"]


def test_stale_nonce_with_the_right_secret_earns_stale_true_and_is_not_a_failure() -> None:
    h = ShieldHarness()
    register(h, 1)
    [challenge] = only(h.take_lan(), SipResponse)
    credentials = phone_credentials(challenge, SECRET, "REGISTER", "sip:127.0.0.20")
    h.now += 301
    register(h, 2, credentials)
    [again] = only(h.take_lan(), SipResponse)
    assert again.status == 401 and "stale=true" in (again.get("WWW-Authenticate") or "")
    assert h.core.counters["shield_stale_nonce"] == 1
    assert "shield_phone_auth_failed" not in h.core.counters
    assert not h.take_wan()


def test_another_extensions_secret_does_not_register_this_one() -> None:
    h = ShieldHarness()
    register(h, 1)
    [challenge] = only(h.take_lan(), SipResponse)
    value = challenge.get("WWW-Authenticate") or ""
    # Digest user 1002 for the AOR of 1001: refused even with 1001's secret.
    forged = answer(
        parse(value), username="1002", password=SECRET, method="REGISTER", uri="sip:127.0.0.20"
    )
    register(h, 2, forged)
    [refused] = only(h.take_lan(), SipResponse)
    assert refused.status == 401 and not h.take_wan()


def test_invite_challenged_with_407_and_the_providers_407_answered_by_the_gateway() -> None:
    h = ShieldHarness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [challenge] = [m for m in only(h.take_lan(), SipResponse) if m.status == 407]
    assert not h.take_wan()
    credentials = phone_credentials(challenge, SECRET, "INVITE", "sip:+15551234567@127.0.0.20")
    h.from_phone(
        phone_request(
            "INVITE", cseq=2, body=phone_sdp(), extra=f"Proxy-Authorization: {credentials}\r\n"
        )
    )
    [invite] = only(h.take_wan(), SipRequest)
    assert not invite.has("Proxy-Authorization")
    provider_407 = respond(invite, 407)
    provider_407.add("Proxy-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(provider_407)
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [100]  # only our Trying
    wan = only(h.take_wan(), SipRequest)
    assert [m.method for m in wan] == ["ACK", "INVITE"]
    retry = wan[1]
    assert retry.call_id == invite.call_id and retry.from_.tag == invite.from_.tag
    assert retry.cseq.seq == invite.cseq.seq + 1
    assert_trunk_credentials(retry, "Proxy-Authorization")
    h.from_provider(respond(retry, 200, body=provider_answer(retry.body)))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [200]
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK" and ack.cseq.seq == retry.cseq.seq


def test_a_second_provider_challenge_fails_the_call_without_blaming_the_phone() -> None:
    h = ShieldHarness()
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [challenge] = [m for m in only(h.take_lan(), SipResponse) if m.status == 407]
    credentials = phone_credentials(challenge, SECRET, "INVITE", "sip:+15551234567@127.0.0.20")
    h.from_phone(
        phone_request(
            "INVITE", cseq=2, body=phone_sdp(), extra=f"Proxy-Authorization: {credentials}\r\n"
        )
    )
    for _ in range(2):
        [invite] = [m for m in only(h.take_wan(), SipRequest) if m.method == "INVITE"]
        provider_407 = respond(invite, 407)
        provider_407.add("Proxy-Authenticate", PROVIDER_CHALLENGE)
        h.from_provider(provider_407)
    [failed] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 400]
    assert failed.status == 407 and not failed.has("Proxy-Authenticate")
    assert "refused the gateway's credentials" in (failed.get("Warning") or "")
    assert h.core.counters["shield_provider_refused"] == 1
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["ACK"]


def test_reconnect_re_registers_without_phone_credentials_and_answers_the_challenge() -> None:
    h = ShieldHarness()
    authorised = registered_phone(h)
    h.core.wan_connection_state(False, "connection lost", h.now, h.wall)
    h.core.wan_connection_state(True, "TLSv1.3 verified", h.now, h.wall)
    h.collect()
    [refresh] = only(h.take_wan(), SipRequest)
    assert refresh.method == "REGISTER" and not refresh.has("Authorization")
    assert refresh.cseq.seq == authorised.cseq.seq + 1
    challenge = make_response(refresh, 401, to_tag="p")
    challenge.add("WWW-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(challenge)
    [again] = only(h.take_wan(), SipRequest)
    assert again.cseq.seq == refresh.cseq.seq + 1
    assert_trunk_credentials(again, "Authorization")
    assert not h.take_lan()


def test_per_extension_credentials_win_over_the_trunk_wide_ones() -> None:
    h = ShieldHarness(
        **{
            "*": ProviderCredential("someone-else", "x" * 20),
            "1001": ProviderCredential(TRUNK_USER, TRUNK_PASSWORD, realm="provider.example"),
        }
    )
    registered_phone(h)


# ------------------------------------------------------- nonce counts (RFC 7616 §3.4)


def test_a_replayed_authorization_is_refused_while_its_nonce_is_fresh() -> None:
    h = ShieldHarness()
    register(h, 1)
    [challenge] = only(h.take_lan(), SipResponse)
    credentials = phone_credentials(challenge, SECRET, "REGISTER", "sip:127.0.0.20")
    register(h, 2, credentials)
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["REGISTER"]
    h.take_lan()
    # The same Authorization again (a capture replayed, nc 00000001 once more).
    register(h, 3, credentials)
    [refused] = only(h.take_lan(), SipResponse)
    assert refused.status == 401 and "stale=true" in (refused.get("WWW-Authenticate") or "")
    assert not h.take_wan()
    assert h.core.counters["shield_nonce_replayed"] == 1
    assert "shield_phone_auth_failed" not in h.core.counters  # not a guess: a phone retries
    # The phone itself reuses the nonce with the next count: accepted.
    params = parse(credentials).params
    following = response_value(
        algorithm="MD5",
        username="1001",
        realm="gw.lan",
        password=SECRET,
        method="REGISTER",
        uri="sip:127.0.0.20",
        nonce=params["nonce"],
        qop="auth",
        nc="00000002",
        cnonce=params["cnonce"],
    )
    second = credentials.replace(params["response"], following).replace("00000001", "00000002")
    register(h, 4, second)
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["REGISTER"]


# ------------------------------------------------ the provider's challenges inside a call


def shielded_call(h: ShieldHarness) -> tuple[SipRequest, SipResponse]:
    """A call out the provider answers without a challenge; returns its WAN INVITE and the
    phone's 200."""
    h.from_phone(phone_request("INVITE", body=phone_sdp()))
    [challenge] = [m for m in only(h.take_lan(), SipResponse) if m.status == 407]
    credentials = phone_credentials(challenge, SECRET, "INVITE", "sip:+15551234567@127.0.0.20")
    h.from_phone(
        phone_request(
            "INVITE", cseq=2, body=phone_sdp(), extra=f"Proxy-Authorization: {credentials}\r\n"
        )
    )
    [invite] = only(h.take_wan(), SipRequest)
    h.take_lan()
    h.from_provider(respond(invite, 200, body=provider_answer(invite.body)))
    ok = only(h.take_lan(), SipResponse)[-1]
    assert ok.status == 200
    h.from_phone(phone_request("ACK", cseq=2, to_tag=ok.to.tag))
    h.take_wan()
    return invite, ok


def test_a_challenged_reinvite_is_answered_with_the_trunk_credentials() -> None:
    h = ShieldHarness()
    invite, ok = shielded_call(h)
    hold = phone_sdp().replace("a=sendrecv", "a=sendonly")
    # In-dialog requests are the phone's own dialog: no LAN challenge for them.
    h.from_phone(phone_request("INVITE", cseq=3, body=hold, to_tag=ok.to.tag))
    [reinvite] = only(h.take_wan(), SipRequest)
    assert reinvite.cseq.seq == invite.cseq.seq + 1 and not reinvite.has("Proxy-Authorization")
    provider_407 = respond(reinvite, 407)
    provider_407.add("Proxy-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(provider_407)
    assert all(m.status == 100 for m in only(h.take_lan(), SipResponse))
    wan = only(h.take_wan(), SipRequest)
    assert [m.method for m in wan] == ["ACK", "INVITE"]
    retry = wan[1]
    assert retry.call_id == invite.call_id and retry.to.tag == "provtag"
    assert retry.cseq.seq == reinvite.cseq.seq + 1 and retry.body == reinvite.body
    assert retry.top_via.branch != reinvite.top_via.branch
    assert_trunk_credentials(retry, "Proxy-Authorization")
    [pair] = h.core.active_calls
    assert len(pair.reinvites) == 1  # the retry, not the challenged one, is awaited
    h.from_provider(respond(retry, 200, body=provider_answer(retry.body)))
    [to_phone] = [m for m in only(h.take_lan(), SipResponse) if m.status >= 200]
    assert to_phone.status == 200 and to_phone.cseq.seq == 3
    assert not to_phone.has("Proxy-Authenticate")
    [ack] = only(h.take_wan(), SipRequest)
    assert ack.method == "ACK" and ack.cseq.seq == retry.cseq.seq
    assert h.core.counters["shield_provider_answered"] == 1


def test_the_gateways_bye_challenged_by_the_provider_is_sent_again_with_credentials() -> None:
    h = ShieldHarness()
    invite, ok = shielded_call(h)
    h.from_phone(phone_request("BYE", cseq=3, to_tag=ok.to.tag))
    assert [m.status for m in only(h.take_lan(), SipResponse)] == [200]
    [bye] = only(h.take_wan(), SipRequest)
    challenge = make_response(bye, 401)
    challenge.add("WWW-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(challenge)
    [retry] = only(h.take_wan(), SipRequest)
    assert retry.method == "BYE" and retry.call_id == invite.call_id
    assert retry.cseq.seq == bye.cseq.seq + 1
    assert_trunk_credentials(retry, "Authorization")
    # Refused again: given up (one answer per request), counted, nothing more sent.
    again = make_response(retry, 401)
    again.add("WWW-Authenticate", PROVIDER_CHALLENGE)
    h.from_provider(again)
    assert not h.take_wan() and not h.take_lan()
    assert h.core.counters["shield_provider_refused"] == 1


def test_the_gateways_own_hang_up_challenged_by_the_provider_is_answered_once() -> None:
    """Media lost, a cap, the maximum duration, a drain: the gateway ends the call itself with
    a BYE on both legs; the provider's challenge to its WAN BYE is answered like any other."""
    for end in ("media", "drain"):
        h = ShieldHarness()
        invite, _ = shielded_call(h)
        [pair] = h.core.active_calls
        if end == "media":
            h.core.media_problem(pair.key, "media stopped", h.now, h.wall)
        else:
            h.core.hang_up_all(h.now, h.wall, "gateway shutting down")
        h.collect()
        [lan_bye] = only(h.take_lan(), SipRequest)
        [bye] = only(h.take_wan(), SipRequest)
        assert lan_bye.method == bye.method == "BYE" and bye.call_id == invite.call_id
        challenge = make_response(bye, 407)
        challenge.add("Proxy-Authenticate", PROVIDER_CHALLENGE)
        h.from_provider(challenge)
        [retry] = only(h.take_wan(), SipRequest)
        assert retry.method == "BYE" and retry.call_id == invite.call_id, end
        assert retry.cseq.seq == bye.cseq.seq + 1 and retry.get("Reason") == bye.get("Reason")
        assert retry.top_via.branch != bye.top_via.branch
        assert_trunk_credentials(retry, "Proxy-Authorization")
        assert h.core.counters["shield_provider_answered"] == 1
        # Challenged again: one answer per request, so it is given up and counted.
        again = make_response(retry, 407)
        again.add("Proxy-Authenticate", PROVIDER_CHALLENGE)
        h.from_provider(again)
        assert not h.take_wan() and not h.take_lan()
        assert h.core.counters["shield_provider_refused"] == 1
        # The phone's own BYE answer ends nothing twice: the call is already over.
        h.from_phone(bytes(respond(lan_bye, 200)))
        assert not h.take_wan() and not h.core.active_calls


def test_phone_secrets_replaced_at_reload_refuse_a_removed_phone_and_admit_a_new_one() -> None:
    h = ShieldHarness()
    shield = h.core.shield
    assert shield is not None
    shield.set_phone_secrets({"1002": "Another-Lan-Secret-0815-ab"})
    register(h, 1)
    [challenge] = only(h.take_lan(), SipResponse)
    register(h, 2, phone_credentials(challenge, SECRET, "REGISTER", "sip:127.0.0.20"))
    [refused] = only(h.take_lan(), SipResponse)
    assert refused.status == 401 and not h.take_wan()
    shield.set_phone_secrets({"1001": SECRET})
    register(h, 3, phone_credentials(refused, SECRET, "REGISTER", "sip:127.0.0.20"))
    assert [m.method for m in only(h.take_wan(), SipRequest)] == ["REGISTER"]
