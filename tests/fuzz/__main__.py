"""Run one fuzzing campaign: ``python -m tests.fuzz TARGET --inputs N [--seed S] [--corpus DIR]``.

Prints inputs, inputs/s and the crashes found (each crashing input saved under
tests/fuzz/crashes/TARGET/ with a name from its hash) and exits 1 when there is any.
``--engine atheris`` (the default when the atheris package is installed) is coverage-guided
by libFuzzer; ``--engine builtin`` is the mutation fuzzer of tests/fuzz/engine.py with line
coverage from sys.settrace (``--no-coverage``: blind, several times faster). ``--results
FILE`` adds the campaign to a JSON file such as bench/results/fuzz-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.engine import CRASH_DIR, ROOT, TARGETS, Result, load_target, run_builtin


def _atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def run_atheris(
    name: str, inputs: int, seed: int, corpus: Path | None, timeout: float, crash_dir: Path
) -> tuple[Result, int]:
    """The campaign in a child process (libFuzzer exits when done); (result, child's status)."""
    target = load_target(name)
    crash_dir.mkdir(parents=True, exist_ok=True)
    before = set(crash_dir.iterdir())
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        seed_dir = Path(tmp) / "seeds"
        seed_dir.mkdir()
        seeds = target.seeds()
        for index, data in enumerate(seeds):
            (seed_dir / f"seed-{index:04d}").write_bytes(data)
        work = corpus if corpus is not None else Path(tmp) / "corpus"
        work.mkdir(parents=True, exist_ok=True)
        report = Path(tmp) / "report"
        report.touch()
        log = Path(tmp) / "libfuzzer.log"
        max_len = max([4096, *(len(s) for s in seeds)])
        command = [
            sys.executable,
            "-m",
            "tests.fuzz._atheris_child",
            name,
            str(crash_dir),
            str(report),
            f"-runs={inputs}",
            f"-seed={seed}",
            f"-timeout={int(max(1, timeout))}",
            f"-max_len={max_len}",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={crash_dir}/",
            "-print_final_stats=1",
            str(work),
            str(seed_dir),
        ]
        started = time.perf_counter()
        with log.open("wb") as out:
            status = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        text = log.read_text(errors="replace")
        found = [line for line in report.read_text().splitlines() if line]
        corpus_size = sum(1 for _ in work.iterdir())
    done = re.search(r"Done (\d+) runs", text)
    runs = int(done.group(1)) if done else 0
    if not done:
        stat = re.findall(r"stat::number_of_executed_units: (\d+)", text)
        runs = int(stat[-1]) if stat else 0
    cov = re.findall(r"\bcov: (\d+)", text)
    signatures: dict[str, int] = {}
    for sig in found:
        signatures[sig] = signatures.get(sig, 0) + 1
    new_files = sorted(set(crash_dir.iterdir()) - before)
    artifacts = [p for p in new_files if not p.name.endswith(".txt")]
    hangs = sum(1 for p in artifacts if p.name.startswith("timeout-"))
    if status != 0:
        # libFuzzer stopped on a crash of the process or a hang: keep what it said.
        tail = text[-4000:]
        (crash_dir / f"libfuzzer-exit-{status}.log").write_text(tail)
        signatures[f"process ended by libFuzzer (status {status})"] = 1
        print(tail, file=sys.stderr)
    result = Result(
        target=name,
        engine="atheris",
        inputs=runs,
        seconds=seconds,
        crashes=len(found) + (1 if status != 0 else 0),
        signatures=signatures,
        saved=[str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in artifacts],
        corpus=corpus_size,
        coverage=int(cov[-1]) if cov else None,
        hangs=hangs,
    )
    return result, status


def _add_results(path: Path, result: Result, seed: int) -> None:
    data: dict[str, object] = {}
    if path.exists():
        data = json.loads(path.read_text())
    data.setdefault("machine", f"{platform.machine()} {os.cpu_count()} cpus")
    data.setdefault("python", platform.python_version())
    campaigns = data.setdefault("campaigns", [])
    assert isinstance(campaigns, list)
    entry = result.as_dict()
    entry["seed"] = seed
    entry["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    campaigns.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to run")
    parser.add_argument("--seed", type=int, default=1, help="random seed (>= 1)")
    parser.add_argument("--corpus", type=Path, help="corpus directory, read and grown")
    parser.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    parser.add_argument("--no-coverage", action="store_true", help="builtin engine: blind")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--results", type=Path, help="JSON file to add the result to")
    args = parser.parse_args(argv)

    target = load_target(args.target)
    reexec = getattr(target, "reexec_environment", None)
    if reexec is not None:
        env = reexec()
        if env is not None:
            # The target needs the process started differently (a sanitizer runtime preloaded).
            os.execve(sys.executable, [sys.executable, "-m", "tests.fuzz", *sys.argv[1:]], env)
    engine = args.engine
    if engine == "auto":
        wants_builtin = getattr(target, "ENGINE", None) == "builtin"
        engine = "atheris" if _atheris_available() and not wants_builtin else "builtin"
    crash_dir = CRASH_DIR / args.target
    if engine == "atheris":
        result, _ = run_atheris(
            args.target, args.inputs, args.seed, args.corpus, args.timeout, crash_dir
        )
    else:
        result = run_builtin(
            args.target,
            args.inputs,
            seed=args.seed,
            corpus_dir=args.corpus,
            crash_dir=crash_dir,
            coverage=not args.no_coverage,
            timeout=args.timeout,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    print(
        f"{result.target}: {result.inputs} inputs in {result.seconds:.1f} s"
        f" ({result.per_second:.0f} inputs/s, engine {result.engine}), corpus {result.corpus},"
        f" coverage {result.coverage}, crashes {result.crashes}, hangs {result.hangs}"
    )
    for sig, count in result.signatures.items():
        print(f"  {count} x {sig}")
    for path in result.saved:
        print(f"  saved {path}")
    if args.results is not None:
        _add_results(args.results, result, args.seed)
    return 1 if result.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
