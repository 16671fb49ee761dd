"""Per-trunk media keying in the configuration ([wan] keying, [[trunks]] keying): decoded,
checked with one clear line each, and handed to each trunk's media policy."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.sdp.negotiation import MediaPolicy
from gateway.trunk_links import core_trunks


def fingerprint() -> tuple[str, str]:
    return "sha-256", "AB:CD"


SITE = MediaPolicy(lan_address="127.0.0.1", wan_address="127.0.0.1", dtls_fingerprint=fingerprint)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    return [str(p) for p in info.value.problems]


def test_the_default_is_sdes_only() -> None:
    config = parse_config("", "site.toml")
    assert config.wan.keying == ("sdes",)
    [trunk], _ = core_trunks(config, SITE)
    assert trunk.media is not None and trunk.media.keying == ("sdes",)


def test_wan_keying_is_the_implicit_trunks_and_the_certificate_is_passed_on() -> None:
    config = parse_config('[wan]\nkeying = ["dtls", "sdes"]\n', "site.toml")
    [trunk], _ = core_trunks(config, SITE)
    assert trunk.media is not None and trunk.media.keying == ("dtls", "sdes")
    assert trunk.media.dtls_fingerprint is fingerprint


def test_each_trunk_has_its_own_keying_else_the_wans() -> None:
    config = parse_config(
        '[wan]\nkeying = ["sdes", "dtls"]\n'
        '[[trunks]]\nname = "dtls-only"\nprovider_host = "198.51.100.10"\nkeying = ["dtls"]\n'
        '[[trunks]]\nname = "inherits"\nprovider_host = "198.51.100.20"\n',
        "site.toml",
    )
    trunks, _ = core_trunks(config, SITE)
    assert [t.media.keying for t in trunks if t.media is not None] == [
        ("dtls",),
        ("sdes", "dtls"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[wan]\nkeying = []\n", "wan.keying: expected at least one keying method"),
        ('[wan]\nkeying = ["zrtp"]\n', "wan.keying: unknown keying method 'zrtp'"),
        ('[wan]\nkeying = ["sdes", "sdes"]\n', "wan.keying: a keying method is named twice"),
        (
            '[[trunks]]\nname = "a"\nprovider_host = "198.51.100.10"\nkeying = ["DTLS"]\n',
            "trunks.0.keying: unknown keying method 'DTLS'",
        ),
    ],
)
def test_bad_keying_is_named_with_file_and_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p and "site.toml" in p for p in found), found
