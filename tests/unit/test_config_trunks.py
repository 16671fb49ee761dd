"""[[trunks]] and [[routes]] in the configuration: decoded, checked, and the single [wan]
provider still a trunk of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, insecure_settings, load_config, parse_config
from gateway.sdp.negotiation import MediaPolicy
from gateway.trunk_links import core_trunks

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

TWO_TRUNKS = """
[[trunks]]
name = "primary"
provider_host = "198.51.100.10"
domain = "primary.example"
number_format = "national"

[[trunks]]
name = "backup"
provider_host = "198.51.100.20"
provider_port = 5071
srtp_suites = ["AEAD_AES_128_GCM"]
answer_timeout = 4.0
insecure_skip_verify = true

[[routes]]
destinations = ["+44"]
trunks = ["backup", "primary"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    return [str(p) for p in info.value.problems]


def test_trunks_and_routes_become_the_cores_trunks() -> None:
    config = parse_config(TWO_TRUNKS, "site.toml")
    media = MediaPolicy(lan_address="127.0.0.1", wan_address="127.0.0.1")
    trunks, routes = core_trunks(config, media)
    assert [(t.name, t.peer.address, t.domain) for t in trunks] == [
        ("primary", ("198.51.100.10", 5061), "primary.example"),
        ("backup", ("198.51.100.20", 5071), "198.51.100.20"),
    ]
    assert trunks[0].number_format == "national" and trunks[1].answer_timeout == 4.0
    assert trunks[1].media is not None
    assert [s.value for s in trunks[1].media.suites] == ["AEAD_AES_128_GCM"]
    assert routes[0].trunks == ("backup", "primary") and routes[0].matches("+442079460000")
    assert insecure_settings(config) == ["trunks.backup.insecure_skip_verify"]


def test_without_trunks_the_wan_provider_is_the_one_trunk() -> None:
    config = load_config(DEPLOY / "gateway.example.toml")
    [trunk] = config.effective_trunks()
    assert (trunk.name, trunk.provider_host, trunk.sip_domain) == (
        "provider",
        "sip.provider.example",
        "provider.example",
    )


def test_a_route_naming_an_unknown_trunk_is_an_error() -> None:
    text = TWO_TRUNKS + '\n[[routes]]\ndestinations = ["*"]\ntrunks = ["primery"]\n'
    [problem] = problems(text)
    assert "routes.1.trunks" in problem and "no trunk 'primery'" in problem


def test_a_provider_left_in_wan_next_to_trunks_says_where_it_goes() -> None:
    [problem] = problems('[wan]\nprovider_host = "sip.old.example"\n' + TWO_TRUNKS)
    assert "wan.provider_host" in problem and "[[trunks]]" in problem


def test_trunk_mistakes_are_named_by_their_place() -> None:
    text = (
        '[[trunks]]\nname = "a b"\nprovider_host = "x"\nsrtp_suites = ["NULL_HMAC_SHA1_80"]\n'
        '\n[[trunks]]\nname = "x"\nprovider_host = "y"\nnumber_format = "international"\n'
    )
    found = problems(text)
    assert any(re.search(r"trunks\.1\.number_format", p) for p in found), found


def test_the_example_trunks_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    """deploy/gateway.example.toml documents [[trunks]] and [[routes]] in comments: what an
    operator gets by uncommenting them (and moving the provider out of [wan]) must load."""
    text = (DEPLOY / "gateway.example.toml").read_text()
    start = text.index("# [[trunks]]\n")
    end = text.index("[sip]")
    lines = []
    for line in text[start:end].splitlines():
        found = re.match(r"# (\[\[\w+\]\]|[a-z_]+ = .*)$", line)
        lines.append(found.group(1).split("  #")[0] if found else "")
    uncommented = text[:start] + "\n".join(lines) + "\n" + text[end:]
    uncommented = uncommented.replace('provider_host = "sip.provider.example"\n', "", 1)
    path = tmp_path / "trunks.toml"
    path.write_text(uncommented)
    config = load_config(path)
    assert [t.name for t in config.trunks] == ["primary", "backup"]
    assert [r.destinations for r in config.routes] == [("+44",), ("*",)]
