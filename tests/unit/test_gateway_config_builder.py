"""tests/gateway_config.py, the one builder of the tests' gateway configurations: what it writes
is TOML the gateway's own loader takes, with the values asked for."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config
from tests.gateway_config import gateway_settings, gateway_toml, merge, write_gateway_config

REQUIRED = {
    "lan_port": 5070,
    "lan_media": (30000, 30099),
    "wan_media": (30100, 30199),
    "provider_port": 5061,
    "certificate": "certs/gateway.pem",
    "private_key": "certs/gateway.key",
    "ca_bundle": "certs/ca.pem",
}


def test_merge_is_recursive_replaces_lists_and_removes_on_none() -> None:
    base = {"a": {"b": 1, "c": [1, 2], "d": 4}, "e": 5}
    merged = merge(base, {"a": {"b": 2, "c": [3], "d": None}}, None, {"f": {"g": True}})
    assert merged == {"a": {"b": 2, "c": [3]}, "e": 5, "f": {"g": True}}
    assert base == {"a": {"b": 1, "c": [1, 2], "d": 4}, "e": 5}  # not changed in place


def test_defaults_and_extra_reach_the_gateways_loader(tmp_path: Path) -> None:
    settings = gateway_settings(
        **REQUIRED,  # type: ignore[arg-type]
        server_name="provider.test",
        srtp_suites=["AEAD_AES_128_GCM"],
        extra={
            "policy": {"flood": {"register": {"rate": 5.0, "burst": 60.0}}},
            "log": {"level": "debug"},
        },
    )
    config = load_config(write_gateway_config(tmp_path / "gateway.toml", settings))
    assert (config.lan.sip_address, config.lan.sip_port) == ("127.0.0.20", 5070)
    assert tuple(config.lan.media_ports) == (30000, 30099)
    assert (config.wan.sip_address, config.wan.provider_host) == ("127.0.0.21", "127.0.0.1")
    assert (config.wan.reconnect_min, config.wan.reconnect_max) == (0.2, 2.0)
    assert config.wan.trust.server_name == "provider.test"
    assert tuple(config.wan.srtp_suites) == ("AEAD_AES_128_GCM",)
    assert config.media.workers == 1
    assert tuple(config.policy.allowlist.lan) == ("127.0.0.0/8",)
    assert (config.policy.flood.register.rate, config.policy.flood.register.burst) == (5.0, 60.0)
    assert config.log.level == "debug"


def test_unset_options_are_left_to_the_gateways_defaults() -> None:
    text = gateway_toml(gateway_settings(**REQUIRED))  # type: ignore[arg-type]
    loaded = tomllib.loads(text)
    assert "transports" not in loaded["lan"]
    assert "listen_port" not in loaded["wan"] and "srtp_suites" not in loaded["wan"]
    assert loaded["wan"]["trust"] == {"ca_bundle": "certs/ca.pem"}
    assert "log" not in loaded


def test_toml_values_round_trip() -> None:
    table = {
        "s": 'quote " backslash \\ newline \n é',
        "n": -3,
        "x": 0.5,
        "t": False,
        "l": ["a", 1],
        "inline": [{"rate": 1.0}],
        "needs quotes": 1,
        "sub": {"deeper": {"k": "v"}},
    }
    assert tomllib.loads(gateway_toml(table)) == table
    with pytest.raises(ValueError, match="inf"):
        gateway_toml({"x": float("inf")})
    with pytest.raises(TypeError, match="set"):
        gateway_toml({"x": {1}})
