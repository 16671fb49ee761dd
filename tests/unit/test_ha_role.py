"""The active/standby role machine (gateway/ha/role.py) and the [ha] table's checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.ha.role import Fence, Promote, Role, RoleMachine
from gateway.ha.settings import check_ha_environment

REDIS = '[state]\nredis_url = "unix:///run/redis/redis.sock"\n'


def standby() -> RoleMachine:
    machine = RoleMachine("gw-a")
    machine.started(100.0)
    return machine


def test_a_started_node_is_standby_and_master_promotes_it_with_a_higher_epoch() -> None:
    machine = RoleMachine("gw-a")
    assert machine.role is Role.STARTING
    machine.started(100.0)
    assert machine.role is Role.STANDBY and machine.changes == 0
    action = machine.notify("MASTER", 101.0, seen_epoch=7)
    assert action == Promote(8)
    assert machine.role is Role.PROMOTING
    machine.promoted(102.0)
    assert (machine.role, machine.since, machine.epoch, machine.changes) == (
        Role.ACTIVE,
        102.0,
        8,
        2,
    )
    assert machine.notify("master", 103.0) is None  # keepalived repeats itself: nothing new
    assert machine.role is Role.ACTIVE


@pytest.mark.parametrize("word", ["backup", "fault", "stop"])
def test_a_standby_told_anything_but_master_stays_standby(word: str) -> None:
    machine = standby()
    assert machine.notify(word, 101.0) is None
    assert machine.role is Role.STANDBY
    assert machine.last_notify == (word, 101.0)


@pytest.mark.parametrize("word", ["backup", "fault", "stop"])
def test_an_active_told_backup_fault_or_stop_is_fenced_at_once(word: str) -> None:
    machine = standby()
    machine.notify("master", 101.0)
    machine.promoted(101.5)
    action = machine.notify(word, 102.0)
    assert isinstance(action, Fence) and action.demoted
    assert word in action.reason
    assert machine.role is Role.FENCED
    # Fenced is final for this process: a later master does not bring it back.
    assert machine.notify("master", 103.0) is None
    assert machine.role is Role.FENCED


def test_a_box_losing_the_addresses_while_promoting_is_fenced() -> None:
    machine = standby()
    machine.notify("master", 101.0)
    action = machine.notify("backup", 101.1)
    assert isinstance(action, Fence) and action.demoted
    machine.promoted(101.2)  # the takeover finishing late changes nothing
    assert machine.role is Role.FENCED


def test_a_newer_active_fences_this_one_but_its_own_marker_does_not() -> None:
    machine = standby()
    machine.notify("master", 101.0, seen_epoch=3)
    machine.promoted(101.5)
    assert machine.newer_active("gw-a", 9, 102.0) is None
    assert machine.newer_active("gw-b", 4, 102.0) is None  # an older writer: not newer
    action = machine.newer_active("gw-b", 5, 102.0)
    assert isinstance(action, Fence) and "gw-b" in action.reason


def test_a_failed_promotion_fences() -> None:
    machine = standby()
    machine.notify("master", 101.0)
    action = machine.fence("cannot bind 192.0.2.1:5060", 101.2)
    assert action == Fence("cannot bind 192.0.2.1:5060", True)
    assert machine.fence("again", 101.3) is None


def test_an_unknown_word_is_refused() -> None:
    with pytest.raises(ValueError, match="master"):
        standby().notify("leader", 101.0)


def test_the_role_machine_reads_no_clock_and_opens_no_socket() -> None:
    path = Path(__file__).resolve().parents[2] / "gateway" / "ha" / "role.py"
    tree = ast.parse(path.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"asyncio", "socket", "time", "logging", "ssl", "redis"}


# --------------------------------------------------------------------------- [ha] table


def test_ha_is_off_by_default_and_needs_nothing() -> None:
    config = parse_config("")
    assert not config.ha.enabled
    assert config.ha.replicate_interval == 0.2
    assert check_ha_environment(config, {}) == []


def test_ha_without_redis_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[ha]\nenabled = true\nnode = "gw-a"\npeer = "gw-b"\n')
    text = str(caught.value)
    assert "ha.enabled" in text and "[state] redis_url" in text


def test_ha_node_and_peer_must_differ_and_be_host_names() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(REDIS + '[ha]\nenabled = true\nnode = "gw a"\npeer = "gw a"\n')
    fields = {p.field for p in caught.value.problems}
    assert fields == {"ha.node", "ha.peer"}


def test_ha_with_redis_needs_the_state_key_in_the_environment() -> None:
    config = parse_config(
        REDIS + '[ha]\nenabled = true\nnode = "gw-a"\npeer = "gw-b"\nreplicate_interval = 0.1\n'
    )
    assert config.ha.node == "gw-a" and config.ha.replicate_interval == 0.1
    (message,) = check_ha_environment(config, {})
    assert "$GATEWAY_STATE_KEY" in message
    assert check_ha_environment(config, {"GATEWAY_STATE_KEY": "ab" * 32}) == []


def test_check_config_names_the_missing_state_key(tmp_path: Path) -> None:
    from gateway.config_files import check_config_file

    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[state]\ndirectory = "{tmp_path}"\nkey_env = "GATEWAY_TEST_HA_NO_SUCH_KEY"\n'
        'redis_url = "unix:///run/redis/redis.sock"\n[ha]\nenabled = true\n'
    )
    report = check_config_file(path)
    assert any(
        p.field == "ha.enabled" and "GATEWAY_TEST_HA_NO_SUCH_KEY" in p.message
        for p in report.errors
    ), report.lines()


# --------------------------------------------------------------------------- what operators see


def test_ha_status_table_names_role_active_lag_and_calls() -> None:
    from gateway.ha.commands import format_ha_status

    text = format_ha_status(
        {
            "role": "standby",
            "since": 1000.0,
            "node": "gw-b",
            "peer": "gw-a",
            "site": "hq",
            "redis": {"reachable": True, "error": None},
            "active": {"node": "gw-a", "epoch": 3, "since": 900.0},
            "last_sync": 1009.5,
            "calls_held": 2,
            "replication_lag_seconds": 0.25,
            "last_notify": {"state": "backup", "at": 1000.0},
            "takeover": None,
            "fence_reason": None,
        },
        1010.0,
    )
    assert "role:         standby" in text
    assert "gw-a (epoch 3" in text
    assert "calls held:   2" in text
    assert "lag:          0.250 s" in text
    assert "reachable yes" in text
    assert "last notify:  backup" in text


async def test_ha_metrics_mark_the_current_role_and_skip_an_unknown_lag() -> None:
    from gateway.admin.metrics import Exposition, _ha

    class View:
        def __init__(self, lag: float | None) -> None:
            self.lag = lag

        def ha_facts(self) -> dict[str, object]:
            return {"role": "active", "changes": 2, "lag": self.lag, "calls_held": 5}

    out = Exposition()
    _ha(out, View(0.5))  # type: ignore[arg-type]
    text = out.render()
    assert 'gateway_ha_role{role="active"} 1' in text
    assert 'gateway_ha_role{role="standby"} 0' in text
    assert "gateway_ha_role_changes_total 2" in text
    assert "gateway_ha_replication_lag_seconds 0.5" in text
    assert "gateway_ha_calls_held 5" in text
    none = Exposition()
    _ha(none, View(None))  # type: ignore[arg-type]
    lines = none.render().splitlines()
    assert not [line for line in lines if line.startswith("gateway_ha_replication_lag_seconds")]
    single = Exposition()
    _ha(single, object())  # type: ignore[arg-type]
    assert single.render() == "\n"


@pytest.mark.parametrize(
    ("role", "word", "expected"),
    [
        ("standby", None, (0, False)),
        ("standby", "backup", (0, False)),
        ("standby", "master", (0, True)),  # a notify the restarted gateway missed: again
        ("promoting", "master", (0, False)),
        ("active", "master", (0, False)),
        ("fenced", "backup", (1, False)),
        ("starting", "master", (1, False)),
        (None, "master", (1, False)),  # no gateway answers: give the addresses up
    ],
)
def test_ha_check_passes_while_the_gateway_can_hold_the_addresses(
    role: str | None, word: str | None, expected: tuple[int, bool]
) -> None:
    from gateway.ha.commands import check_decision

    assert check_decision(role, word) == expected
