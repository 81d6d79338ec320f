"""The benchmarks run end to end on a small data set (their figures are not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_lease_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lease.py"),
         "--contacts", "2000", "--runs", "2", "--sqlite-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"^sqlite: lease 1000 of 2,000: median \d+\.\d ms, max \d+\.\d ms \(goal < 50 ms",
        proc.stdout, re.M,
    ), proc.stdout
    assert "postgresql" not in proc.stdout
