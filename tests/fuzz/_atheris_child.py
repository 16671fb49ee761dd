"""One atheris (libFuzzer) campaign of one target, run by ``python -m tests.fuzz`` in a child
process because libFuzzer ends the process itself when its runs are done.

Usage: python -m tests.fuzz._atheris_child TARGET CRASH_DIR REPORT [libFuzzer args] CORPUS...

The gateway's modules are imported under ``atheris.instrument_imports`` so libFuzzer sees the
coverage of their bytecode. A target's failure is saved (crashes/TARGET/crash-<hash>) and
appended to REPORT by the child itself, and fuzzing goes on: one campaign finds every failure,
not only the first. A hang (libFuzzer -timeout) or a crash of the process (a sanitizer, a
signal) is left to libFuzzer, which writes its own artifact (``timeout-``/``crash-`` and the
SHA-1 of the input) into the same directory and ends the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris


def main() -> None:
    name, crash_dir, report = sys.argv[1:4]
    with atheris.instrument_imports(include=["gateway"]):
        from tests.fuzz.engine import CrashLog, load_target, signature

        target = load_target(name)
    if hasattr(target, "setup"):
        target.setup()
    crashes = CrashLog(name, Path(crash_dir))
    check = target.check

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            crashes.record(data, exc)
            with open(report, "a") as out:
                out.write(f"{signature(exc)}\n")

    atheris.Setup([sys.argv[0], *sys.argv[4:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
