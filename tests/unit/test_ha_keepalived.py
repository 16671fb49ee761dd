"""keepalived's notify FIFO lines (gateway/ha/keepalived.py): parsed, filtered, in order."""

from __future__ import annotations

from gateway.ha.keepalived import MAX_LINE, NotifyLine, NotifyLines, parse_line


def test_parse_group_and_instance_lines() -> None:
    assert parse_line('GROUP "GATEWAY" MASTER 0') == NotifyLine("GROUP", "GATEWAY", "MASTER")
    assert parse_line('INSTANCE "VI_LAN" BACKUP 100') == NotifyLine("INSTANCE", "VI_LAN", "BACKUP")
    assert parse_line("GROUP GATEWAY MASTER 0") is None  # keepalived quotes its names
    assert parse_line('VS "192.0.2.1:80" UP') is None
    assert parse_line("") is None


def test_group_words_in_keepalived_order_across_partial_reads() -> None:
    lines = NotifyLines("GATEWAY")
    data = (
        b'INSTANCE "VI_LAN" MASTER 100\nGROUP "GATEWAY" MASTER 0\n'
        b'GROUP "GATEWAY" BACKUP 0\nGROUP "GATEWAY" FAULT 0\nGROUP "GATEWAY" MASTER 0\n'
    )
    words: list[str] = []
    for i in range(0, len(data), 7):  # a pipe may hand over any slice
        words += lines.feed(data[i : i + 7])
    assert words == ["master", "backup", "fault", "master"]
    assert lines.facts() == {
        "lines": 5, "acted": 4, "instances": 1, "unknown": 0, "last": "master"
    }  # fmt: skip


def test_other_groups_unknown_states_and_noise_are_counted_and_ignored() -> None:
    lines = NotifyLines("GATEWAY")
    words = lines.feed(
        b'GROUP "OTHER" MASTER 0\nGROUP "GATEWAY" MASTER_RX_LOWER_PRI 0\nrandom text\n\n'
        b'GROUP "GATEWAY" STOP 0\n'
    )
    assert words == ["stop"]
    assert lines.unknown == 3 and lines.acted == 1


def test_any_group_when_none_named() -> None:
    assert NotifyLines().feed(b'GROUP "VG_SITE" MASTER 100\n') == ["master"]


def test_overlong_line_is_dropped_whole() -> None:
    lines = NotifyLines()
    assert lines.feed(b"x" * (MAX_LINE + 1)) == []
    # Its tail (even one that looks like a line) is part of the dropped line.
    assert lines.feed(b'GROUP "G" MASTER 0\nGROUP "G" BACKUP 0\n') == ["backup"]
    assert lines.unknown == 1


def test_settle_keeps_only_keepalived_current_word() -> None:
    lines = NotifyLines("GATEWAY")
    waited = b'GROUP "GATEWAY" BACKUP 0\nGROUP "GATEWAY" MASTER 0\nGROUP "GATEWAY" FAULT 0\n'
    assert lines.settle(waited) == ["fault"]
    assert lines.settle(b'INSTANCE "VI_LAN" BACKUP 100\n') == []
    # After settling, each word counts again, in order.
    assert lines.feed(b'GROUP "GATEWAY" BACKUP 0\nGROUP "GATEWAY" MASTER 0\n') == [
        "backup",
        "master",
    ]


def test_ha_status_names_what_the_fifo_gave() -> None:
    from gateway.ha.commands import format_ha_status

    fifo = {"path": "/run/x.fifo", "reopened": 1, **NotifyLines().facts()}
    fifo.update(last="master", acted=3, unknown=2)
    text = format_ha_status({"role": "active", "keepalived_fifo": fifo}, 0.0)
    assert (
        "keepalived:   /run/x.fifo: last master, 3 word(s) acted on, 2 unknown line(s), "
        "reopened 1" in text
    )
