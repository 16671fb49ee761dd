"""What grew between two tracemalloc snapshots of one gateway process (the soak's memory hunt,
``python -m bench.soak --tracemalloc DIR``).

Usage::

    .venv/bin/python -m bench.tracemalloc_diff DIR/<pid>-001.snap DIR/<pid>-004.snap [--top 20]

Prints the traced total of each snapshot and the allocation sites (file and line, or whole
tracebacks with ``--traceback`` when the run kept more than one frame) that grew most. Line
numbers are those of the source the process loaded: read them against that commit.
"""

from __future__ import annotations

import argparse
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracemalloc_diff")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--traceback", action="store_true")
    args = parser.parse_args(argv)
    before = tracemalloc.Snapshot.load(args.before)
    after = tracemalloc.Snapshot.load(args.after)
    total = [sum(t.size for t in s.traces) / (1 << 20) for s in (before, after)]
    print(f"traced {total[0]:.2f} MiB -> {total[1]:.2f} MiB")
    key = "traceback" if args.traceback else "lineno"
    for stat in after.compare_to(before, key)[: args.top]:
        print(
            f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks"
            f"  (now {stat.size / 1024:.1f} KiB)"
        )
        for line in stat.traceback.format() if args.traceback else [str(stat.traceback)]:
            print("    " + line.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
