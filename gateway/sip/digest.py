"""SIP Digest authentication, both ways, without I/O (RFC 3261 §22.2, §22.4; RFC 2617 §3.2;
RFC 7616 §3.3-§3.5, §3.9; RFC 8760 for SHA-256 in SIP).

Two jobs, both pure functions of their inputs:

- As a server toward the phones (the credential shield): ``NonceKeeper`` issues nonces that
  need no table: the issue time and an HMAC over it, the realm and the phone's address, under
  a key that comes in with the settings. A nonce is good for ``lifetime`` seconds of the
  caller's clock (``now`` is an input; nothing here reads a clock); an older one whose digest
  is right earns ``stale=true`` (RFC 2617 §3.2.1), so the phone retries without counting as a
  guess. ``verify`` recomputes the response from the phone's secret and compares in constant
  time. ``NonceUses`` remembers the last nonce count accepted per nonce (RFC 7616 §3.4: nc
  must increase with each use), so a captured Authorization cannot be replayed while its
  nonce is still fresh; it is bounded, and what it had to forget is refused, never replayable.
- As a client toward the provider: ``answer`` builds the Authorization (or
  Proxy-Authorization) value for a challenge, with qop=auth, a fresh cnonce and nc=00000001
  (each challenge is answered once, so each nonce is used once).

MD5 and SHA-256, and their ``-sess`` variants (RFC 7616 §3.4.2), with qop=auth or RFC 2069's
no-qop form; auth-int is not offered (it would hash bodies the B2BUA rewrites).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

#: Nonces ``NonceUses`` remembers at most (each entry comes from a phone that proved its
#: secret, so only the gateway's own phones can fill it; a full table forgets its oldest).
NONCE_USES_CAPACITY = 4096

#: Algorithms understood, by their name in challenges (case-insensitive on input).
ALGORITHMS: dict[str, str] = {
    "MD5": "md5",
    "MD5-SESS": "md5",
    "SHA-256": "sha256",
    "SHA-256-SESS": "sha256",
}

#: Parameters whose value is a quoted-string in what we write (RFC 7616 §3.3, §3.4).
_QUOTED = frozenset({"realm", "nonce", "opaque", "username", "uri", "response", "cnonce"})


class DigestError(ValueError):
    """A challenge or credentials that cannot be used (malformed, unknown algorithm)."""


@dataclass(frozen=True, slots=True)
class DigestParams:
    """One challenge or one set of credentials: its scheme and parameters (names lowercased,
    quotes and quoted-pairs removed)."""

    scheme: str
    params: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    @property
    def algorithm(self) -> str:
        return self.get("algorithm", "MD5").upper()


def parse(value: str) -> DigestParams:
    """Parse ``Digest name=value, name="quoted, value"`` (RFC 7235 §2.1 auth-param list)."""
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme:
        raise DigestError("empty authentication header")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError(f"parameter without a value: {rest[i:]!r}")
        name = rest[i:eq].strip().lower()
        if not name or any(c in name for c in ' \t",'):
            raise DigestError(f"bad parameter name {name!r}")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise DigestError("unterminated quoted string")
                c = rest[i]
                if c == "\\" and i + 1 < n:
                    out.append(rest[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                out.append(c)
                i += 1
            params[name] = "".join(out)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return DigestParams(scheme, params)


def _hash(algorithm: str, text: str) -> str:
    name = ALGORITHMS.get(algorithm.upper())
    if name is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(name, text.encode("utf-8"), usedforsecurity=False).hexdigest()


def response_value(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` parameter (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1-§3.4.3)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(scheme: str, params: dict[str, str]) -> str:
    """A header value from parameters, quoting those RFC 7616 writes quoted."""
    parts = [f"{k}={_quote(v) if k in _QUOTED else v}" for k, v in params.items()]
    return f"{scheme} " + ", ".join(parts)


def answer(
    challenge: DigestParams,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
) -> str:
    """Credentials answering ``challenge`` for a request (§22.2): qop=auth when offered,
    else the RFC 2069 form; ``cnonce`` fixed only by tests."""
    if challenge.scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge: {challenge.scheme}")
    algorithm = challenge.algorithm
    if algorithm not in ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    realm, nonce = challenge.get("realm"), challenge.get("nonce")
    if not nonce:
        raise DigestError("challenge without a nonce")
    offered = [q.strip().lower() for q in challenge.get("qop").split(",") if q.strip()]
    if offered and "auth" not in offered:
        raise DigestError(f"no usable qop in {challenge.get('qop')!r}")
    qop = "auth" if offered else None
    cnonce = cnonce or secrets.token_hex(12)
    nc = "00000001"
    params = {"username": username, "realm": realm, "nonce": nonce, "uri": uri}
    params["response"] = response_value(
        algorithm=algorithm,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    params["algorithm"] = challenge.get("algorithm", "MD5")
    if qop:
        params.update({"cnonce": cnonce, "nc": nc})
    if "opaque" in challenge.params:
        params["opaque"] = challenge.get("opaque")
    # RFC 7616 §3.4: in credentials qop is a bare token, unlike the challenge's list.
    return render("Digest", params) + (f", qop={qop}" if qop else "")


def choose_challenge(values: list[str]) -> DigestParams | None:
    """The challenge to answer among several (RFC 7616 §3.7: the first the client
    supports, in the server's order of preference)."""
    for value in values:
        try:
            parsed = parse(value)
        except DigestError:
            continue
        if parsed.scheme.lower() == "digest" and parsed.algorithm in ALGORITHMS:
            return parsed
    return None


# --------------------------------------------------------------------- the server side


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a phone's credentials proved."""

    #: The digest is right for the secret (whatever the nonce's age).
    valid: bool
    #: The nonce is ours, for this address, and not older than the lifetime.
    fresh: bool
    username: str


class NonceKeeper:
    """Stateless, time-limited nonces: ``base64(issued || HMAC(key, issued|realm|address))``."""

    def __init__(self, key: bytes, realm: str, lifetime: float = 300.0) -> None:
        if len(key) < 16:
            raise ValueError("the nonce key must be at least 16 bytes")
        self._key = key
        self.realm = realm
        self.lifetime = lifetime

    def _mac(self, issued: bytes, address: str) -> bytes:
        message = issued + b"|" + self.realm.encode() + b"|" + address.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:18]

    def issue(self, address: str, now: float) -> str:
        issued = struct.pack(">d", now)
        return base64.urlsafe_b64encode(issued + self._mac(issued, address)).decode()

    def is_fresh(self, nonce: str, address: str, now: float) -> bool:
        try:
            raw = base64.urlsafe_b64decode(nonce.encode())
        except (ValueError, UnicodeEncodeError):
            return False
        if len(raw) != 26:
            return False
        issued, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(issued, address)):
            return False
        (at,) = struct.unpack(">d", issued)
        return at <= now <= at + self.lifetime

    def issued_at(self, nonce: str) -> float | None:
        """When a nonce was issued (its MAC is checked by ``is_fresh``, not here)."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode())
        except (ValueError, UnicodeEncodeError):
            return None
        return struct.unpack(">d", raw[:8])[0] if len(raw) == 26 else None

    def challenge(
        self, address: str, now: float, algorithm: str = "MD5", *, stale: bool = False
    ) -> str:
        """A WWW-Authenticate / Proxy-Authenticate value (qop=auth)."""
        params = {
            "realm": self.realm,
            "nonce": self.issue(address, now),
            "algorithm": algorithm,
        }
        value = render("Digest", params) + ', qop="auth"'
        return value + (", stale=true" if stale else "")

    def verify(
        self, credentials: DigestParams, *, method: str, password: str, address: str, now: float
    ) -> Verdict:
        """Check a phone's answer against its secret; the digest in constant time."""
        username = credentials.get("username")
        algorithm = credentials.algorithm
        if (
            credentials.scheme.lower() != "digest"
            or algorithm not in ALGORITHMS
            or credentials.get("realm") != self.realm
        ):
            return Verdict(False, False, username)
        qop = credentials.get("qop") or None
        if qop is not None and qop.lower() != "auth":
            return Verdict(False, False, username)
        nonce = credentials.get("nonce")
        expected = response_value(
            algorithm=algorithm,
            username=username,
            realm=self.realm,
            password=password,
            method=method,
            uri=credentials.get("uri"),
            nonce=nonce,
            qop=qop,
            nc=credentials.get("nc"),
            cnonce=credentials.get("cnonce"),
        )
        given = credentials.get("response").lower()
        valid = hmac.compare_digest(expected.encode(), given.encode())
        return Verdict(valid, self.is_fresh(nonce, address, now), username)


def nonce_count(credentials: DigestParams) -> int | None:
    """The nc of credentials as a number (RFC 7616 §3.4: 8 hex digits); the RFC 2069 form
    without qop counts as 1, so such a nonce serves once. None when malformed."""
    if not credentials.get("qop"):
        return 1
    nc = credentials.get("nc")
    if len(nc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in nc):
        return None
    return int(nc, 16)


class NonceUses:
    """The last nonce count accepted for each of the gateway's nonces still alive.

    ``accept`` is asked only for credentials already verified with a fresh nonce. A count not
    above the last one accepted for its nonce is a replay (or a reordered request: the phone
    gets ``stale=true`` and retries with a new nonce). When the table is full, expired nonces
    go first, then the oldest entry; ``_floor`` then rises to that nonce's issue time, and any
    nonce issued at or before the floor that the table no longer knows is refused as used."""

    def __init__(self, lifetime: float, capacity: int = NONCE_USES_CAPACITY) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        #: nonce -> (last count accepted, issue time)
        self._last: dict[str, tuple[int, float]] = {}
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._last)

    def accept(self, nonce: str, issued: float, count: int, now: float) -> bool:
        """True (and remembered) when ``count`` is above every count seen for ``nonce``."""
        known = self._last.get(nonce)
        if known is not None:
            if count <= known[0]:
                return False
        elif issued <= self._floor or count < 1:
            return False
        elif len(self._last) >= self.capacity:
            self._make_room(now)
        self._last[nonce] = (count, issued)
        return True

    def _make_room(self, now: float) -> None:
        oldest = now - self.lifetime
        for nonce, (_, issued) in list(self._last.items()):
            if issued < oldest:
                del self._last[nonce]  # expired: the nonce itself is refused from now on
        while len(self._last) >= self.capacity:
            nonce = next(iter(self._last))
            _, issued = self._last.pop(nonce)
            self._floor = max(self._floor, issued)
