"""A gateway whose start fails exits non-zero with the reason (issue 14, a bench run's hang).

``gateway run`` on 127.0.69.50/51 with its media workers' stats round trip failing at start
("media worker 0 did not answer QueryStats") while a background task swallows its
cancellation, as a client library caught in a ``while True`` can: the process used to stay
up for ever. Now what started is stopped, the reason is printed, the exit status is 1 and no
media worker is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.certs.lab import make_lab
from tests.admin_site import lab_settings
from tests.gateway_config import write_gateway_config

ROOT = Path(__file__).resolve().parents[2]

RUNNER = '''
import asyncio, sys
from pathlib import Path
from gateway.media import controller

async def stubborn() -> None:
    while True:  # swallows every cancellation, as a misbehaving client library's loop
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue

async def stats(self):
    asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
    pids = [str(p) for p in self.worker_pids() if p]
    Path(sys.argv[2]).write_text(" ".join(pids))
    raise controller.MediaError("media worker 0 did not answer QueryStats")

controller.MediaController.stats = stats
from gateway.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:  # a zombie waits for its parent (gone) to be reaped by init: it is not running
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return False


def test_failed_start_exits_nonzero_with_reason_and_no_worker_left(tmp_path: Path) -> None:
    make_lab(tmp_path / "certs")
    settings = lab_settings(
        lan="127.0.69.50",
        wan="127.0.69.51",
        provider="127.0.69.52",
        provider_name="provider.lab",
        provider_port=5061,
        lan_allow=["127.0.69.0/24"],
    )
    config = write_gateway_config(tmp_path / "gateway.toml", settings)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    pids = tmp_path / "workers"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, str(runner), str(config), str(pids)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:  # the hang this test is about
        raise AssertionError(f"a gateway whose start failed did not exit: {exc.stderr!r}") from exc
    assert done.returncode == 1, done.stderr
    assert "cannot start: MediaError: media worker 0 did not answer QueryStats" in done.stderr
    workers = [int(p) for p in pids.read_text().split()]
    assert workers
    assert not any(_alive(p) for p in workers), done.stderr
