"""The phone inventory (gateway/inventory.py): User-Agent parsing per vendor, firmware order,
the bounded table, banned sources, minimum versions, the [inventory] table, the core's events
that feed it, the audit finding and the metrics.

The User-Agent strings are written after each vendor's usual form (product, model, version,
sometimes a MAC address in a comment), not captured from devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.inventory import (
    VENDORS,
    InventorySettings,
    MinimumFirmware,
    PhoneInventory,
    check_inventory,
    compare_firmware,
    outdated_lines,
    parse_user_agent,
)
from gateway.inventory_commands import format_phones
from gateway.policy.audit import AuditView, PhoneFirmwareFacts, audit
from gateway.sip.call_events import CallStarted
from tests.unit.test_architecture import FORBIDDEN, imported_modules
from tests.unit.test_sip_quirks import GW, Site, invite_with_sdp

INVENTORY = Path(__file__).resolve().parents[2] / "gateway" / "inventory.py"

# (User-Agent, vendor, model, firmware): one row per vendor and form the parser knows.
AGENTS = [
    ("Yealink SIP-T46S 66.86.0.15", "Yealink", "T46S", "66.86.0.15"),
    ("Yealink SIP VP-T49G 51.80.0.100", "Yealink", "VP-T49G", "51.80.0.100"),
    ("Yealink W60B 77.85.0.20", "Yealink", "W60B", "77.85.0.20"),
    ("PolycomVVX-VVX_410-UA/5.9.5.0614", "Polycom", "VVX 410", "5.9.5.0614"),
    ("PolycomSoundPointIP-SPIP_335-UA/4.0.15.1009", "Polycom", "SPIP 335", "4.0.15.1009"),
    ("PolycomSoundStationIP-SSIP_6000-UA/4.0.4.2906", "Polycom", "SSIP 6000", "4.0.4.2906"),
    ("Cisco/SPA504G-7.6.2c", "Cisco", "SPA504G", "7.6.2c"),
    ("Cisco/SPA112-1.4.1(SR5)", "Cisco", "SPA112", "1.4.1(SR5)"),
    ("Linksys/SPA942-6.1.5(a)", "Linksys", "SPA942", "6.1.5(a)"),
    ("Cisco-CP8845/12.8.1", "Cisco", "CP-8845", "12.8.1"),
    ("Cisco-CP-8841-3PCC/11.3.7", "Cisco", "CP-8841 3PCC", "11.3.7"),
    ("Grandstream GXP2170 1.0.11.3", "Grandstream", "GXP2170", "1.0.11.3"),
    ("Grandstream HT801 1.0.27.2", "Grandstream", "HT801", "1.0.27.2"),
    ("snom760/8.9.3.80", "Snom", "760", "8.9.3.80"),
    ("snomD385/8.10.4.13", "Snom", "D385", "8.10.4.13"),
    ("snom300-SIP 8.7.3.25", "Snom", "300", "8.7.3.25"),
    ("Panasonic_KX-UT136/01.133 (0080f0a1b2c3)", "Panasonic", "KX-UT136", "01.133"),
    ("Panasonic_KX-HDV130/01.015 (0080f0aabbcc)", "Panasonic", "KX-HDV130", "01.015"),
    ("Fanvil X4U 2.12.1.6 0c383e1a2b3c", "Fanvil", "X4U", "2.12.1.6"),
    ("Gigaset N510 IP PRO/42.250.00.000.000", "Gigaset", "N510 IP PRO", "42.250.00.000.000"),
    ("Aastra 6731i/3.3.1.4305", "Aastra", "6731i", "3.3.1.4305"),
    ("Mitel 6867i/5.1.0.2051", "Mitel", "6867i", "5.1.0.2051"),
    ("Avaya one-X Deskphone/7.1.2.0.14", "Avaya", "one-X Deskphone", "7.1.2.0.14"),
    ("Avaya J179 SIP R4.0.10.1.2", "Avaya", "J179", "4.0.10.1.2"),
    ("OBIHAI/OBi202-3.2.2.5921", "Obihai", "OBi202", "3.2.2.5921"),
    ("Htek UC926 2.0.4.4.46", "Htek", "UC926", "2.0.4.4.46"),
    ("AUDC-IPPhone/3.2.1.372 (430HD; 00908F6A1B2C)", "AudioCodes", "430HD", "3.2.1.372"),
    (
        "AudioCodes-Sip-Gateway-MP-114 FXS/v.6.60A.297.002",
        "AudioCodes",
        "MP-114 FXS",
        "6.60A.297.002",
    ),
    ("Alcatel IP2015 1.1.3.4", "Alcatel", "IP2015", "1.1.3.4"),
    ("ALE H6 1.0.30", "Alcatel", "H6", "1.0.30"),
    ("baresip v1.0.0 (x86_64/linux)", "baresip", None, "1.0.0"),
    ("Linphonec/5.1.65 (belle-sip/5.1.55)", "Linphone", "linphonec", "5.1.65"),
    ("LinphoneAndroid/5.0.14 (Pixel 6) LinphoneSDK/5.2.95", "Linphone", "Android", "5.0.14"),
    ("Linphone Desktop/5.2.4 (Debian) LinphoneCore/5.3.38", "Linphone", "Desktop", "5.2.4"),
    ("MicroSIP/3.21.3", "MicroSIP", None, "3.21.3"),
    ("Z 5.5.14 v2.10.18.7", "Zoiper", None, "5.5.14"),
    ("Zoiper rv2.10.19.6", "Zoiper", None, "2.10.19.6"),
    ("SIPp/v3.6.1", "SIPp", None, "3.6.1"),
]


@pytest.mark.parametrize(("agent", "vendor", "model", "firmware"), AGENTS)
def test_user_agent_of_each_vendor(
    agent: str, vendor: str, model: str | None, firmware: str
) -> None:
    phone = parse_user_agent(agent)
    assert (phone.vendor, phone.model, phone.firmware) == (vendor, model, firmware)
    assert phone.user_agent == agent


def test_every_vendor_has_a_string_here() -> None:
    assert {v for _, v, _, _ in AGENTS} == set(VENDORS)


@pytest.mark.parametrize("agent", ["friendly-scanner", "sipvicious", "PBX", "", None])
def test_unknown_strings_are_kept_whole(agent: str | None) -> None:
    phone = parse_user_agent(agent)
    assert (phone.vendor, phone.model, phone.firmware) == ("unknown", None, None)
    assert phone.user_agent == (agent or "")


def test_a_huge_user_agent_is_cut() -> None:
    assert len(parse_user_agent("x" * 5000).user_agent) == 200


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("7.6.2c", "7.6.2e"),
        ("7.6.2", "7.6.2c"),
        ("7.6.2e", "7.6.3"),
        ("66.86.0.9", "66.86.0.15"),
        ("6.1.5(a)", "6.1.5(b)"),
        ("1.4.1(SR4)", "1.4.1(SR5)"),
        ("01.099", "01.133"),
        ("5.9.5.0614", "5.9.6.0100"),
        ("6.60A.297.002", "6.60A.297.010"),
    ],
)
def test_firmware_order(older: str, newer: str) -> None:
    assert compare_firmware(older, newer) == -1
    assert compare_firmware(newer, older) == 1


@pytest.mark.parametrize(("a", "b"), [("1.0", "1.0.0"), ("6.1.5(a)", "6.1.5a"), ("V2.1", "v2.1")])
def test_firmware_equal(a: str, b: str) -> None:
    assert compare_firmware(a, b) == 0


def test_minimums_most_specific_key_wins_and_case_does_not_matter() -> None:
    minimums = MinimumFirmware({"yealink   t46s": "66.86.0.15", "Yealink": "50", "Cisco": "7.6.2e"})
    assert minimums.minimum_for("Yealink", "T46S") == "66.86.0.15"
    assert minimums.minimum_for("Yealink", "T54W") == "50"
    assert minimums.minimum_for("Grandstream", "HT801") is None
    assert minimums.outdated(parse_user_agent("Cisco/SPA504G-7.6.2c"))
    assert not minimums.outdated(parse_user_agent("Cisco/SPA504G-7.6.2e"))
    assert not minimums.outdated(parse_user_agent("Yealink SIP-T46S 66.86.0.15"))
    assert minimums.outdated(parse_user_agent("Yealink SIP-T46S 66.85.0.5"))
    # A minimum set, firmware not readable: nothing shows it is up to date.
    assert MinimumFirmware({"SIPp": "3.0"}).outdated(parse_user_agent("SIPp"))
    assert not minimums.outdated(parse_user_agent("friendly-scanner"))


def test_inventory_keys_phones_by_user_and_host_and_follows_them() -> None:
    inventory = PhoneInventory(minimums={"Yealink T46S": "66.86.0.15"})
    agent = "Yealink SIP-T46S 66.85.0.5"
    assert inventory.observe("201", "192.0.2.10:5060", "udp", agent, 1000.0, registered_for=300)
    # A call from the same phone on another port is the same phone, seen later.
    assert inventory.observe("201", "192.0.2.10:5062", "tcp", agent, 1100.0)
    inventory.observe("202", "192.0.2.11:5060", "udp", "Grandstream HT801 1.0.27.2", 1050.0)
    first, second = inventory.phones()
    assert first.key == "201@192.0.2.10" and first.address == "192.0.2.10:5062"
    assert (first.transport, first.first_seen, first.last_seen) == ("tcp", 1000.0, 1100.0)
    assert first.registered(1200.0) and not first.registered(1300.0)
    assert (first.minimum, first.outdated) == ("66.86.0.15", True)
    assert second.key == "202@192.0.2.11" and second.registered_until == 0.0
    assert (second.minimum, second.outdated) == (None, False)
    # Unregistering (expires 0) keeps the phone, not registered; a firmware update shows.
    inventory.observe(
        "201", "192.0.2.10:5060", "udp", "Yealink SIP-T46S 66.86.0.20", 1400.0, registered_for=0
    )
    first = inventory.phones()[0]
    assert not first.registered(1400.0)
    assert (first.phone.firmware, first.outdated) == ("66.86.0.20", False)
    inventory.set_minimums({"Yealink": "70"})
    assert inventory.phones()[0].outdated


def test_ipv6_phones_are_keyed_by_address() -> None:
    inventory = PhoneInventory()
    inventory.observe("7", "[2001:db8::7]:5060", "udp", None, 1.0)
    assert inventory.phones()[0].key == "7@2001:db8::7"


def test_inventory_is_bounded_least_recently_seen_goes() -> None:
    inventory = PhoneInventory(capacity=3)
    for n in range(3):
        inventory.observe(str(n), f"192.0.2.{n}:5060", "udp", "x", float(n))
    inventory.observe("0", "192.0.2.0:5060", "udp", "x", 10.0)  # seen again: now the newest
    # A flood of made-up identities with random User-Agents never grows it past the bound.
    for n in range(1000):
        inventory.observe(f"scan{n}", f"198.51.100.{n % 250}:5060", "udp", f"ua-{n}", 20.0 + n)
    assert len(inventory) == 3
    assert inventory.evicted == 1000
    assert [p.user for p in inventory.phones()] == ["scan997", "scan998", "scan999"]


def test_banned_sources_never_enter() -> None:
    banned = {"203.0.113.66"}
    inventory = PhoneInventory(banned=lambda ip: ip in banned)
    assert not inventory.observe("100", "203.0.113.66:5060", "udp", "friendly-scanner", 1.0)
    assert inventory.observe("201", "192.0.2.10:5060", "udp", "MicroSIP/3.21.3", 1.0)
    assert [p.key for p in inventory.phones()] == ["201@192.0.2.10"]
    # Banned after it entered: its entries go at its next appearance.
    banned.add("192.0.2.10")
    assert not inventory.observe("201", "192.0.2.10:5060", "udp", "MicroSIP/3.21.3", 2.0)
    assert inventory.phones() == []


def test_inventory_module_is_pure() -> None:
    assert not imported_modules(INVENTORY) & set(FORBIDDEN)


# -- [inventory] in the configuration ----------------------------------------------------------


def test_inventory_table_is_read() -> None:
    config = parse_config(
        '[inventory]\nminimum_firmware = { "Yealink T46S" = "66.86.0.15", "Cisco" = "7.6.2e" }\n'
    )
    assert config.inventory.minimum_firmware == {"Yealink T46S": "66.86.0.15", "Cisco": "7.6.2e"}
    assert parse_config("").inventory == InventorySettings()


def test_inventory_table_problems_name_line_and_field() -> None:
    text = (
        "[inventory]\n"
        'minimum_firmware = { "Yelink T46S" = "66.86.0.15", "Cisco SPA504G" = "latest" }\n'
        "max_phones = 0\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.toml")
    lines = [str(p) for p in caught.value.problems]
    assert lines[0].startswith(
        "gw.toml:2: inventory.minimum_firmware.Yelink T46S: did you mean 'Yealink'? expected"
    )
    assert lines[1] == (
        "gw.toml:2: inventory.minimum_firmware.Cisco SPA504G: expected a firmware version such "
        "as 66.86.0.15, got 'latest'"
    )
    assert lines[2] == "gw.toml:3: inventory.max_phones: expected 1..1000000, got 0"
    assert check_inventory(InventorySettings(minimum_firmware={"unknown": "1"}))


# -- the core's events carry the phone ---------------------------------------------------------


def test_registration_and_call_events_name_the_phone() -> None:
    site = Site()
    site.register(
        f"""REGISTER sip:{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.40:5062;branch=z9hG4bK.inv1
Max-Forwards: 70
From: <sip:1201@{GW}>;tag=r1
To: <sip:1201@{GW}>
Call-ID: inv-reg@127.0.4.40
CSeq: 1 REGISTER
Contact: <sip:1201@127.0.4.40:5062>
Expires: 600
User-Agent: Yealink SIP-T46S 66.86.0.15
Content-Length: 0

""",
        ("127.0.4.40", 5062),
    )
    (registered,) = site.registered
    assert (registered.phone, registered.transport) == ("127.0.4.40:5062", "udp")
    assert registered.user_agent == "Yealink SIP-T46S 66.86.0.15"
    started: list[CallStarted] = []
    original = site.collect

    def collect() -> None:
        started.extend(a for a in site.core.actions() if isinstance(a, CallStarted))

    site.collect = collect  # type: ignore[method-assign]
    site.from_phone(
        invite_with_sdp(
            f"""INVITE sip:+15551234567@{GW} SIP/2.0
Via: SIP/2.0/UDP 127.0.4.40:5062;branch=z9hG4bK.inv2
Max-Forwards: 70
From: <sip:1201@{GW}>;tag=c1
To: <sip:+15551234567@{GW}>
Call-ID: inv-call@127.0.4.40
CSeq: 1 INVITE
Contact: <sip:1201@127.0.4.40:5062>
User-Agent: Yealink SIP-T46S 66.86.0.15
Content-Type: application/sdp
Content-Length: @LENGTH@
""",
            "127.0.4.40",
        ),
        ("127.0.4.40", 5062),
    )
    site.collect = original  # type: ignore[method-assign]
    (call,) = started
    assert (call.from_side, call.caller, call.phone, call.transport) == (
        "lan",
        "1201",
        "127.0.4.40:5062",
        "udp",
    )
    assert call.user_agent == "Yealink SIP-T46S 66.86.0.15"


# -- the audit finding and the CLI's table -----------------------------------------------------


def _audit_view(facts: PhoneFirmwareFacts | None) -> AuditView:
    view = AuditView(tls_verify=True, wan_transport="tls", srtp_required=True,
                     plaintext_downgrade=False, admin_token=None, phone_firmware=facts)  # fmt: skip
    return view


def _finding(facts: PhoneFirmwareFacts | None) -> tuple[str, str]:
    (found,) = [f for f in audit(_audit_view(facts)) if f.practice == "phone-firmware"]
    assert found.checklist_practice == "keep systems up to date"
    return found.status, found.message


def test_audit_phone_firmware() -> None:
    assert _finding(None) == ("n/a", "no minimum firmware configured")
    assert _finding(PhoneFirmwareFacts(0))[0] == "n/a"
    status, message = _finding(PhoneFirmwareFacts(2, unavailable="no gateway is running"))
    assert status == "n/a" and "no gateway is running" in message
    assert _finding(PhoneFirmwareFacts(2))[0] == "n/a"  # no phones seen yet
    assert _finding(PhoneFirmwareFacts(2, phones=3, checked=0))[0] == "n/a"
    assert _finding(PhoneFirmwareFacts(2, phones=3, checked=2)) == (
        "pass",
        "2 of 3 phone(s) checked, none below its minimum firmware",
    )
    checked, below = outdated_lines(
        [
            ("201@192.0.2.10", "Yealink", "T46S", "66.85.0.5"),
            ("202@192.0.2.11", "Yealink", "T46S", "66.86.0.15"),
            ("203@192.0.2.12", "Grandstream", "HT801", "1.0.27.2"),
        ],
        MinimumFirmware({"Yealink T46S": "66.86.0.15"}),
    )
    assert checked == 2
    assert below == ["201@192.0.2.10 (Yealink T46S 66.85.0.5 < 66.86.0.15)"]
    status, message = _finding(PhoneFirmwareFacts(1, 3, checked, tuple(below)))
    assert status == "warn"
    assert message == (
        "1 phone(s) below the minimum firmware: "
        "201@192.0.2.10 (Yealink T46S 66.85.0.5 < 66.86.0.15)"
    )


def test_phones_table() -> None:
    rows: list[dict[str, Any]] = [
        {
            "phone": "201@192.0.2.10",
            "address": "192.0.2.10:5060",
            "transport": "udp",
            "vendor": "Yealink",
            "model": "T46S",
            "firmware": "66.85.0.5",
            "minimum_firmware": "66.86.0.15",
            "outdated": True,
            "registered": True,
            "last_seen_unix": 940.0,
            "user_agent": "Yealink SIP-T46S 66.85.0.5",
        }
    ]
    header, row, total = format_phones(rows, 1000.0).splitlines()
    assert header.split()[:6] == ["PHONE", "ADDRESS", "TRANSPORT", "VENDOR", "MODEL", "FIRMWARE"]
    assert row.split()[:9] == [
        "201@192.0.2.10", "192.0.2.10:5060", "udp", "Yealink", "T46S", "66.85.0.5", "(below",
        "66.86.0.15)", "yes",
    ]  # fmt: skip
    assert "60s ago" in row and row.endswith("Yealink SIP-T46S 66.85.0.5")
    assert total == "1 phone(s), 1 below the minimum firmware"
    assert format_phones([], 0.0).startswith("no phones seen")
