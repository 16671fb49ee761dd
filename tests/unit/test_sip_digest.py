"""SIP Digest (gateway.sip.digest) against the RFCs' own examples, and the gateway's nonces."""

from __future__ import annotations

import pytest

from gateway.sip.digest import (
    DigestError,
    NonceKeeper,
    NonceUses,
    answer,
    nonce_count,
    parse,
    response_value,
)

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc2617_section_3_5_example() -> None:
    assert (
        response_value(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    challenge = parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    value = answer(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    params = parse(value).params
    assert params["response"] == expected
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    assert params["opaque"] == RFC7616_OPAQUE and params["algorithm"] == algorithm
    assert params["uri"] == "/dir/index.html" and params["cnonce"] == RFC7616_CNONCE


def test_parse_keeps_commas_and_escapes_inside_quotes() -> None:
    parsed = parse(r'Digest realm="a, \"b\"", nonce=xyz ,qop="auth,auth-int", stale=TRUE')
    assert parsed.scheme == "Digest"
    assert parsed.params == {
        "realm": 'a, "b"',
        "nonce": "xyz",
        "qop": "auth,auth-int",
        "stale": "TRUE",
    }
    with pytest.raises(DigestError):
        parse('Digest realm="open')
    with pytest.raises(DigestError):
        parse("Digest realm")


def test_no_qop_and_sess_variants() -> None:
    # RFC 2069 form: no qop offered, none answered.
    value = answer(
        parse('Digest realm="r", nonce="n", algorithm=SHA-256-sess'),
        username="u",
        password="p",
        method="REGISTER",
        uri="sip:example.com",
        cnonce="c",
    )
    params = parse(value).params
    assert "qop" not in params and "nc" not in params
    assert params["response"] == response_value(
        algorithm="SHA-256-sess",
        username="u",
        realm="r",
        password="p",
        method="REGISTER",
        uri="sip:example.com",
        nonce="n",
        qop=None,
        cnonce="c",
    )
    with pytest.raises(DigestError):
        answer(
            parse('Digest realm="r", nonce="n", algorithm=SHA-512'),
            username="u",
            password="p",
            method="INVITE",
            uri="sip:x",
        )
    with pytest.raises(DigestError):
        answer(
            parse('Digest realm="r", nonce="n", qop="auth-int"'),
            username="u",
            password="p",
            method="INVITE",
            uri="sip:x",
        )


KEY = b"k" * 32


def phone_answer(keeper: NonceKeeper, challenge: str, password: str, method: str = "REGISTER"):
    return parse(
        answer(parse(challenge), username="1001", password=password, method=method, uri="sip:gw")
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_nonces_verify_right_answers_and_refuse_wrong_ones(algorithm: str) -> None:
    keeper = NonceKeeper(KEY, "gw-realm", lifetime=300)
    challenge = keeper.challenge("127.0.0.10", 1000.0, algorithm)
    assert 'qop="auth"' in challenge and f"algorithm={algorithm}" in challenge
    good = phone_answer(keeper, challenge, "right")
    verdict = keeper.verify(
        good, method="REGISTER", password="right", address="127.0.0.10", now=1100.0
    )
    assert verdict.valid and verdict.fresh and verdict.username == "1001"
    bad = phone_answer(keeper, challenge, "wrong")
    verdict = keeper.verify(
        bad, method="REGISTER", password="right", address="127.0.0.10", now=1100.0
    )
    assert not verdict.valid
    # The method is part of the digest: a REGISTER answer is no INVITE answer.
    assert not keeper.verify(
        good, method="INVITE", password="right", address="127.0.0.10", now=1100.0
    ).valid


def test_nonces_expire_belong_to_one_address_and_one_key() -> None:
    keeper = NonceKeeper(KEY, "gw-realm", lifetime=300)
    good = phone_answer(keeper, keeper.challenge("127.0.0.10", 1000.0), "right")

    def check(k: NonceKeeper, address: str, now: float) -> tuple[bool, bool]:
        v = k.verify(good, method="REGISTER", password="right", address=address, now=now)
        return v.valid, v.fresh

    assert check(keeper, "127.0.0.10", 1300.0) == (True, True)
    assert check(keeper, "127.0.0.10", 1300.5) == (True, False)  # stale: right, but too old
    assert check(keeper, "127.0.0.11", 1001.0) == (True, False)  # another host's nonce
    other = NonceKeeper(b"x" * 32, "gw-realm")
    assert check(other, "127.0.0.10", 1001.0) == (True, False)  # an earlier run's key
    assert not keeper.is_fresh("not base64 !", "127.0.0.10", 1000.0)
    with pytest.raises(ValueError):
        NonceKeeper(b"short", "r")


def test_nonce_counts_must_rise_and_a_full_table_forgets_safely() -> None:
    uses = NonceUses(lifetime=300.0, capacity=3)
    assert uses.accept("a", 10.0, 1, 20.0)
    assert not uses.accept("a", 10.0, 1, 21.0)  # the same count again: a replay
    assert uses.accept("a", 10.0, 3, 22.0)  # counts may skip, never go back
    assert not uses.accept("a", 10.0, 2, 22.0)
    assert uses.accept("b", 11.0, 1, 23.0) and uses.accept("c", 12.0, 1, 24.0)
    # Full: "a" (the oldest) is forgotten, and with it every nonce issued up to its time.
    assert uses.accept("d", 13.0, 1, 25.0) and len(uses) == 3
    assert not uses.accept("a", 10.0, 4, 26.0)
    assert not uses.accept("e", 9.0, 1, 26.0)
    # Expired nonces are the first to go (the keeper refuses them anyway).
    assert uses.accept("f", 400.0, 1, 400.0) and len(uses) == 1
    assert uses.accept("g", 401.0, 1, 401.0) and uses.accept("h", 402.0, 1, 402.0)
    assert len(uses) == 3


def test_nonce_count_reads_hex_and_the_no_qop_form_counts_once() -> None:
    assert nonce_count(parse('Digest nonce="n", qop=auth, nc=0000000a')) == 10
    assert nonce_count(parse('Digest nonce="n"')) == 1
    assert nonce_count(parse('Digest nonce="n", qop=auth, nc=12')) is None
    assert nonce_count(parse('Digest nonce="n", qop=auth, nc=0000000g')) is None
