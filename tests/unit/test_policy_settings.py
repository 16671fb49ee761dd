"""The ``[policy]`` table decodes from TOML with precise errors."""

from __future__ import annotations

import msgspec
import pytest

from gateway.policy.engine import PolicyEngine
from gateway.policy.settings import PolicySettings

EXAMPLE = b"""
[allowlist]
lan = ["198.51.100.0/24", "2001:db8:10::/64"]
wan = ["203.0.113.0/24"]
on_deny = "reject"

[flood]
scanner_ban_seconds = 3600
invite = { rate = 1, burst = 5 }

[dialplan]
country_code = "44"
national_prefix = "0"
international_prefix = "00"
national_min_length = 9
national_max_length = 10
national_prefix_optional = false
templates = ["no-international", "no-premium"]

[[dialplan.rules]]
name = "out-of-hours"
action = "deny"
pattern = ".*"

[dialplan.rules.window]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "18:00"
when = "outside"

[dialplan.groups.sales]
phones = ["300", "301"]
templates = ["no-premium"]

[dialplan.phones."201".caps]
concurrent = 1
calls_per_hour = 5
minutes_per_day = 60
international_minutes_per_day = 0

[caps.site]
concurrent = 4
calls_per_hour = 30
minutes_per_day = 600
international_minutes_per_day = 60
"""


def test_example_decodes_and_builds_an_engine() -> None:
    settings = msgspec.toml.decode(EXAMPLE, type=PolicySettings)
    assert settings.dialplan.groups["sales"].phones == ("300", "301")
    assert settings.flood.invite.burst == 5
    engine = PolicyEngine(settings)
    assert engine.is_emergency("999") and engine.is_emergency("911")
    assert engine.limits_for("201").concurrent == 1


def test_defaults_are_a_working_engine() -> None:
    assert PolicyEngine().settings == PolicySettings()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (b'[allowlist]\nlan = ["192.0.2.300/24"]', "not an IPv4 or IPv6"),
        (b'[allowlist]\non_deny = "maybe"', "on_deny"),
        (b"[flood]\nban_seconds = 0", "ban_seconds"),
        (b'[dialplan]\ncountry_code = "+44"', "digits only"),
        (b'[dialplan]\ntimezone = "Mars/Base"', "unknown timezone"),
        (b'[[dialplan.rules]]\nname = "x"\naction = "deny"', "needs prefixes or a pattern"),
        (
            b'[[dialplan.rules]]\nname = "x"\naction = "deny"\npattern = "1"\n'
            b'window.start = "25:00"',
            "HH:MM",
        ),
        (b"[caps.spike]\nfactor = 0.5", "factor"),
        (b"[events]\nunknown = 1", "unknown field"),
    ],
)
def test_errors_name_the_field(toml: bytes, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.toml.decode(toml, type=PolicySettings)
