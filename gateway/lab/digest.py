"""HTTP Digest for the lab peers (RFC 3261 §22.4, RFC 2617 §3.2, MD5 with qop=auth).

The built-in provider can challenge REGISTER as real providers do, and the built-in phone can
answer; the gateway in between only carries the headers (it never holds SIP credentials). MD5
is what legacy phones speak; this is a lab imitation of a provider, not an authentication
service anyone should rely on.
"""

from __future__ import annotations

import hashlib
import re
import secrets

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)\s*,?')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def parse_params(value: str) -> dict[str, str]:
    """``Digest a="b", c=d`` -> {"a": "b", "c": "d"} (names lowercased, quotes removed)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        raw = match.group(2)
        if raw.startswith('"'):
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[match.group(1).lower()] = raw
    return params


def new_challenge(realm: str) -> tuple[str, str]:
    """A fresh nonce and the WWW-Authenticate value carrying it."""
    nonce = secrets.token_hex(16)
    return nonce, f'Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'


def response_value(
    *,
    user: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    cnonce: str,
    nc: str,
    qop: str | None,
) -> str:
    """The ``response`` parameter (RFC 2617 §3.2.2.1)."""
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: str, *, user: str, password: str, method: str, uri: str) -> str:
    """The Authorization value answering a WWW-Authenticate ``challenge``."""
    params = parse_params(challenge)
    realm = params.get("realm", "")
    nonce = params.get("nonce", "")
    qop = "auth" if "auth" in params.get("qop", "").split(",") else None
    cnonce = secrets.token_hex(8)
    nc = "00000001"
    digest = response_value(
        user=user,
        password=password,
        realm=realm,
        method=method,
        uri=uri,
        nonce=nonce,
        cnonce=cnonce,
        nc=nc,
        qop=qop,
    )
    value = (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{digest}", algorithm=MD5'
    )
    if qop:
        value += f', qop={qop}, cnonce="{cnonce}", nc={nc}'
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


def check(value: str, *, method: str, password: str, realm: str, nonces: set[str]) -> str | None:
    """The authenticated user name if ``value`` answers one of our ``nonces``, else None."""
    params = parse_params(value)
    if params.get("realm") != realm or params.get("nonce") not in nonces:
        return None
    user = params.get("username", "")
    expected = response_value(
        user=user,
        password=password,
        realm=realm,
        method=method,
        uri=params.get("uri", ""),
        nonce=params.get("nonce", ""),
        cnonce=params.get("cnonce", ""),
        nc=params.get("nc", ""),
        qop=params.get("qop"),
    )
    return user if secrets.compare_digest(expected, params.get("response", "")) else None
