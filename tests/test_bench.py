"""The bench runs: `bench/run --smoke` (N = 2, a few seconds of each scenario) against this checkout, so its
copy of nothing can drift from the daemon's launch path again (it calls launch.prepare itself)."""

import math
import os
import re
import subprocess
import sys

import pytest

from conftest import needs_root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.root
@needs_root
def test_bench_smoke_runs_and_reports_every_system():
    out = subprocess.run([os.path.join(REPO, "bench", "run"), "--smoke"], capture_output=True, text=True,
                         timeout=1800, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
                                           "BENCH_PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    assert "### Cold start, N = 2" in table, table
    for system in ("supervisord", "notebookd exec", "notebookd fork", "plain"):
        row = next((line for line in table.splitlines() if line.startswith(f"| {system} |")), None)
        assert row is not None, f"no row for {system}:\n{table}"
        seconds = [float(x) for x in re.findall(r"([\d.]+|inf) s\b", row)]
        assert seconds and all(math.isfinite(x) for x in seconds), row  # inf: a server never became ready
    assert "status, median of 3" in table and "Log capture, 2 MB" in table, table
    assert " 0 | 0 | 0 |" in next(line for line in table.splitlines() if line.startswith("| notebookd |")
                                  and "x |" in line), table  # log capture: nothing split, lost or damaged
    # on demand (bench/ondemand.py): first requests of both spawns answered, restarts of every kind made,
    # the memory rows filled in
    for spawn in ("fork", "exec"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {spawn} | "))
        assert all(math.isfinite(float(x)) for x in re.findall(r"([\d.]+|inf) s\b", row)), row
    for kind in ("restart", "token rotation", "reload", "health check", "kill -9"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {kind} | "))
        refused, failed = (int(x) for x in row.split("|")[2:4])
        assert refused == 0 and (failed == 0 or kind == "kill -9"), row  # notebookd's columns
    assert re.search(r"\| on-demand \| 1 \| \d+ MiB", table) and "| always, fork | 4 |" in table, table
