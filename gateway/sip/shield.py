"""The credential shield: phones prove a LAN-only secret to the gateway, and the gateway
answers the provider's challenges with the trunk credentials it keeps (RFC 3261 §22.1-§22.4;
RFC 2617 §3.2.1 for stale nonces; digests in ``gateway.sip.digest``).

Without the shield, credentials pass through untouched (``gateway.sip.registrar``). With it:

- A request from the LAN that reaches the provider (REGISTER, and INVITE or any other request
  outside a dialog) must carry credentials for the gateway's realm: REGISTER is challenged with
  401/WWW-Authenticate, the rest with 407/Proxy-Authenticate (§22.1, §22.3), using nonces that
  need no table (``NonceKeeper``). The digest user must be the phone's own extension (To of a
  REGISTER, From of anything else), so one phone's secret never speaks for another. A wrong
  answer gets a fresh challenge and is reported to brute-force detection exactly as a failed
  401 from the provider was; a right answer with an expired nonce, or with a nonce count
  already used for its nonce (RFC 7616 §3.4: a replayed Authorization), gets ``stale=true``
  and counts as nothing against the phone. A right answer loses every Authorization and
  Proxy-Authorization header before anything is relayed, so nothing a phone knows goes
  upstream or is kept for re-registration.
- A 401/407 from the provider to such a request is answered here (§22.2: the same request
  with a new CSeq, same Call-ID and From tag, a new branch) with the credentials of the
  phone's extension, else the trunk's (``*``). One answer per request: a second challenge
  (unless it says ``stale=true``, which earns one more) means the provider refused the
  gateway's credentials; the phone then gets the provider's status without the provider's
  challenge (it has nothing it could answer with), a Warning saying why, and the refusal is
  counted (``shield_provider_refused``), not held against the phone.
- Inside a call the same holds (§22.2, §12.2.1.1): a provider challenging a re-INVITE, UPDATE,
  INFO or BYE on the WAN leg, the one a phone asked for or the gateway's own BYE, gets that
  request again with the leg's next CSeq and the trunk credentials; nothing reaches the phone
  but the final answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.sip.admission import Admission
from gateway.sip.digest import (
    DigestError,
    DigestParams,
    NonceKeeper,
    NonceUses,
    answer,
    choose_challenge,
    nonce_count,
    parse,
)
from gateway.sip.edge import gateway_warning, user_of
from gateway.sip.events import RequestReceived
from gateway.sip.message import SipRequest, SipResponse, new_branch
from gateway.sip.outgoing import Outgoing, Relay
from gateway.sip.pair import RINGING
from gateway.sip.peer import Peer, Side

#: Credentials header names: the phone's (which the gateway strips), the provider's asks.
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization")
#: Name of the provider credential that serves every extension without its own.
TRUNK_WIDE = "*"


@dataclass(frozen=True, slots=True)
class ProviderCredential:
    """What the gateway answers the provider's challenges with, for one extension or all."""

    username: str
    password: str = field(repr=False)
    #: Answer only challenges of this realm (None: any realm the trunk sends).
    realm: str | None = None


@dataclass(frozen=True)
class ShieldSettings:
    """The shield's inputs (built from ``[shield]`` and its two files by the glue)."""

    #: Extension -> its LAN-only secret.
    phone_secrets: Mapping[str, str] = field(repr=False)
    #: Extension (or ``*``) -> provider credentials.
    provider_credentials: Mapping[str, ProviderCredential] = field(repr=False)
    #: HMAC key of the nonces (random per start unless the glue keeps one).
    nonce_key: bytes = field(repr=False)
    realm: str = "sip-media-gateway"
    #: Algorithm of the challenges sent to phones (legacy phones speak MD5 only).
    algorithm: str = "MD5"
    nonce_lifetime: float = 300.0


class Shield:
    def __init__(self, settings: ShieldSettings, out: Outgoing, admission: Admission) -> None:
        self.settings = settings
        self._nonces = NonceKeeper(settings.nonce_key, settings.realm, settings.nonce_lifetime)
        #: The last nc accepted per live nonce: a captured Authorization is not replayable.
        self._uses = NonceUses(settings.nonce_lifetime)
        self._out = out
        self._admission = admission
        #: Extension -> when it last authenticated (the core's clock), for ``shield list``.
        self.last_used: dict[str, float] = {}
        # Requests the provider challenged must be re-sent: the WAN side keeps what it sent.
        out.keep_sent = True

    def set_phone_secrets(self, phone_secrets: Mapping[str, str]) -> None:
        """The phones file as it is now (``gateway reload``): a removed phone's next request
        is challenged and refused, a new one's accepted; nonces already given out stay
        good, since they prove an address and a time, not a phone."""
        self.settings = replace(self.settings, phone_secrets=dict(phone_secrets))

    # ---------------------------------------------------------------- the phones

    def admit(self, event: RequestReceived, now: float) -> bool:
        """A LAN request outside any dialog bound for the provider: True when its credentials
        are right (and now removed); else it was answered here."""
        request = event.request
        source = event.source
        assert isinstance(source, Peer)
        register = request.method == "REGISTER"
        status = 401 if register else 407
        asks = "WWW-Authenticate" if register else "Proxy-Authenticate"
        user = user_of(request.to if register else request.from_) or ""
        address = source.address[0]
        stale = False
        offered = self._ours(request, "Authorization" if register else "Proxy-Authorization")
        if offered is not None:
            secret = self.settings.phone_secrets.get(user)
            verdict = (
                self._nonces.verify(
                    offered, method=request.method, password=secret, address=address, now=now
                )
                if secret is not None and offered.get("username") == user
                else None
            )
            fresh = verdict is not None and verdict.valid and verdict.fresh
            if fresh and self._first_use(offered, now):
                for name in CREDENTIAL_HEADERS:
                    request.remove(name)
                self.last_used[user] = now
                return True
            if fresh:
                # Right digest, fresh nonce, but a count already used: a replay (or a phone's
                # requests reordered); a new nonce costs a real phone one round trip.
                stale = True
                self._out.count("shield_nonce_replayed")
            elif verdict is not None and verdict.valid:
                stale = True
                self._out.count("shield_stale_nonce")
            else:
                self._out.count("shield_phone_auth_failed")
        challenge = self._nonces.challenge(address, now, self.settings.algorithm, stale=stale)
        self._out.reply(Side.LAN, event.key, request, status, now, headers=[(asks, challenge)])
        if not stale:
            # A wrong answer is a failed guess, as a 401 from the provider was before.
            self._admission.auth_result(request, source, status, now)
        return False

    def _first_use(self, credentials: DigestParams, now: float) -> bool:
        """The nonce count of verified credentials is above any seen for their nonce."""
        nonce = credentials.get("nonce")
        issued = self._nonces.issued_at(nonce)
        count = nonce_count(credentials)
        if issued is None or count is None:
            return False
        return self._uses.accept(nonce, issued, count, now)

    def _ours(self, request: SipRequest, name: str) -> DigestParams | None:
        for value in request.get_all(name):
            try:
                parsed = parse(value)
            except DigestError:
                continue
            if parsed.get("realm") == self.settings.realm:
                return parsed
        # Credentials for another realm are still an answer (a wrong one).
        return DigestParams("Digest", {}) if request.get_all(name) else None

    # -------------------------------------------------------------- the provider

    def answer_provider(self, key: str, relay: Relay, response: SipResponse, now: float) -> bool:
        """A provider's 401/407 to a request relayed from the LAN, or sent on a call's WAN
        leg: True when the gateway answered it itself (the response goes no further)."""
        if response.status not in (401, 407):
            return False
        pair = relay.pair
        in_dialog = pair is not None and relay.request is not None
        sent, sent_to = relay.sent, relay.sent_to
        if in_dialog and sent is None and relay.internal:
            assert pair is not None and relay.request is not None
            sent, sent_to = relay.request, pair.leg(Side.WAN).peer  # the gateway's own BYE
        if sent is None or sent_to is None:
            return False
        if (
            pair is not None
            and not in_dialog
            and (pair.client_key != key or pair.state not in RINGING)
        ):
            return False  # attempts already given up pass as before
        asks = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = choose_challenge(response.get_all(asks))
        stale = challenge is not None and challenge.get("stale").lower() == "true"
        if relay.shield_answers >= (2 if stale else 1):
            self._refused(response, "the provider refused the gateway's credentials")
            return False
        user = self._user_of(relay, sent)
        credential = self.settings.provider_credentials.get(
            user
        ) or self.settings.provider_credentials.get(TRUNK_WIDE)
        if (
            challenge is None
            or credential is None
            or (credential.realm is not None and credential.realm != challenge.get("realm"))
        ):
            self._refused(response, f"no provider credentials for {user or 'this request'}")
            return False
        retry = sent.copy()
        retry.set("Via", _with_new_branch(sent.get("Via") or ""))
        if in_dialog:
            assert pair is not None
            seq = pair.leg(Side.WAN).next_cseq()  # §12.2.1.1: the leg's next, whoever asked
        elif pair is not None:
            seq = pair.callee.next_cseq()
        elif relay.binding is not None:
            relay.binding.upstream_cseq += 1
            seq = relay.binding.upstream_cseq
        else:
            seq = sent.cseq.seq + 1
        retry.set("CSeq", f"{seq} {sent.method}")
        for name in CREDENTIAL_HEADERS:
            retry.remove(name)
        try:
            value = answer(
                challenge,
                username=credential.username,
                password=credential.password,
                method=sent.method,
                uri=str(sent.uri),
            )
        except DigestError:
            self._refused(response, "the provider's challenge cannot be answered")
            return False
        retry.add("Authorization" if response.status == 401 else "Proxy-Authorization", value)
        relay.shield_answers += 1
        self._out.count("shield_provider_answered")
        self._out.relays.pop((Side.WAN, key), None)
        new_key = self._out.relay_request(Side.WAN, retry, sent_to, now, relay)
        relay.sent, relay.sent_to = retry, sent_to
        if in_dialog:
            assert pair is not None
            if (Side.WAN, key) in pair.reinvites:
                # The re-INVITE still unanswered is now the retry (given up with the call).
                pair.reinvites.discard((Side.WAN, key))
                pair.reinvites.add((Side.WAN, new_key))
        elif pair is not None:
            pair.client_key = new_key
            pair.outgoing = retry
            pair.outgoing_cseq = seq
        return True

    def _refused(self, response: SipResponse, why: str) -> None:
        """The phone gets the provider's status, never its challenge (a phone holds nothing
        that answers it); counted here, not as the phone's failed guess."""
        self._out.count("shield_provider_refused")
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            response.remove(name)
        response.add("Warning", gateway_warning(why))

    @staticmethod
    def _user_of(relay: Relay, sent: SipRequest) -> str:
        if relay.binding is not None:
            return relay.binding.user
        if relay.pair is not None and relay.request is not None:
            # In a call: the phone's extension is the remote party of the LAN leg, whichever
            # side called (its own From on a call out, the AOR it registered on a call in).
            return user_of(relay.pair.leg(Side.LAN).remote) or ""
        if relay.pair is not None and relay.pair.request is not None:
            return user_of(relay.pair.request.from_) or ""
        if relay.request is not None:
            return user_of(relay.request.from_) or ""
        return user_of(sent.from_) or ""


def _with_new_branch(via: str) -> str:
    """The top Via of a re-sent request: a new transaction needs a new branch (§8.1.1.7)."""
    head, sep, rest = via.partition(";branch=")
    if not sep:
        return f"{via};branch={new_branch()}"
    _, semi, params = rest.partition(";")
    return f"{head};branch={new_branch()}{semi}{params}"
