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
    for layout in ("worked", "fresh"):
        for mode in ("checkpoints inside commits", r"background WAL checkpointer \(\d+"):
            assert re.search(
                rf"^sqlite, {layout} list, {mode}.*: lease 1000 of 2,000: median \d+\.\d ms, "
                r"max \d+\.\d ms \(goal < 50 ms",
                proc.stdout, re.M,
            ), proc.stdout
    assert "postgresql" not in proc.stdout


def test_import_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_contacts.py"), "--contacts", "3000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^raw phonenumbers.parse\+format: [\d,]+ numbers/s", proc.stdout, re.M)
    assert re.search(r"^import into SQLite \(default: .*: 3,000 contacts in .* = [\d,]+ "
                     r"contacts/s, \d\.\d\d of the raw parse rate \(goal >= 0.50\)",
                     proc.stdout, re.M), proc.stdout
    assert "single process" in proc.stdout


def test_ami_throughput_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ami_throughput.py"),
         "--calls", "40", "--replays", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^emulator on loopback: 40 originates acknowledged at [\d,]+/s",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^emulator on loopback: [\d,]+ AMI events parsed and tracked at [\d,]+/s "
                     r"\(40 calls ended\)", proc.stdout, re.M), proc.stdout
    assert re.search(r"^parser alone: .* replayed 20 times: [\d,]+ messages/s",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^ratio: .* = \d+\.\d\d", proc.stdout, re.M), proc.stdout


def test_pacing_quality_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pacing_quality.py"),
         "--sizes", "5", "--seeds", "1", "--hours", "0.25", "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for mode in ("progressive", "vicidial_adaptive", "predictive"):
        assert re.search(rf"^{mode} +5 +\d+\.\d% +\d+\.\d\d% +\d+\.\d\d% +\d+\.\d",
                         proc.stdout, re.M), proc.stdout
    assert re.search(r"^(PASS|FAIL)  predictive abandon <= 3\.0% on every seed", proc.stdout,
                     re.M), proc.stdout
    assert "timing: " in proc.stdout


def test_pacing_speed_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pacing_speed.py"), "--campaigns", "20",
         "--ticks", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^campaigns: 20, each 50 busy agents and 150 ringing calls",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^decide_batch \(NumPy\): [\d.]+ ms per tick", proc.stdout, re.M)
    assert re.search(r"^scalar pure Python: [\d.]+ ms per tick", proc.stdout, re.M)
    assert re.search(r"^outputs equal: yes$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^ratio: scalar / vectorized = [\d.]+x \(goal >= 50x", proc.stdout, re.M)


def test_engine_load_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_load.py"), "--agents", "10",
         "--contacts", "300", "--warmup", "1", "--duration", "2", "--scale", "0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^engine load: 10 simulated agents, one predictive campaign of 300 "
                     r"contacts, backend AMI, database sqlite", out, re.M), out
    assert re.search(r"^emulator: in its own process .*time scale 0\.1", out, re.M), out
    assert re.search(r"^population: human \d+%", out, re.M), out
    assert re.search(r"^originates: [\d,]+ = [\d,.]+/s sustained", out, re.M), out
    assert re.search(r"^pacing tick: [\d,]+ ticks, p50 [\d.]+ ms, p99 [\d.]+ ms", out, re.M), out
    assert re.search(r"^answer to bridge: [\d,]+ bridged, p50 ([\d.]+|nan) ms, p99", out, re.M)
    assert re.search(r"^abandon rate: [\d,]+ of [\d,]+ live answers", out, re.M), out
    assert re.search(r"^CPU: engine process \d+% of one core", out, re.M), out
    assert re.search(r"^(PASS|FAIL)  originates sustained [\d,.]+/s \(goal >= 100/s\)", out, re.M)
    assert re.search(r"^(PASS|FAIL)  answer-to-bridge p99 ([\d.]+|nan) ms with an agent free "
                     r"\(goal < 200 ms\)",
                     out, re.M), out


def test_ivr_sessions_bench_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ivr_sessions.py"), "--sessions", "20",
         "--ramp", "0.5", "--time-scale", "0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^emulator: in its own process.*, time scale 0\.1", out, re.M), out
    assert re.search(r"^sessions: 20 of 20 completed in [\d.]+ s = [\d,.]+ sessions/s .*"
                     r"outcomes: hangup at done 20; payments: approved 20\)", out, re.M), out
    assert re.search(r"^peak concurrent sessions: \d+ of 20", out, re.M), out
    assert re.search(r"^DTMF to command \(SessionRunner\.dtmf_latencies.*: 500 keys of 500 "
                     r"handled \(500 sent\), p50 [\d.]+ ms, p99 [\d.]+ ms", out, re.M), out
    assert re.search(r"^end to end \(emulator clock.*: [\d,]+ keys, p50 [\d.]+ ms, p99 [\d.]+ ms",
                     out, re.M), out
    assert re.search(r"^interpreter alone \(no I/O.*: 500 keys, p50 [\d.]+ ms, p99 [\d.]+ ms",
                     out, re.M), out
    assert re.search(r"^ratio: DTMF-to-command p99 / interpreter-alone p99 = [\d,.]+x", out, re.M)
    assert re.search(r"^CPU: app process \d+% of one core", out, re.M), out
    assert re.search(r"^(PASS|FAIL)  peak concurrent sessions \d+ \(goal >= 1,000\)", out, re.M)
    assert re.search(r"^(PASS|FAIL)  DTMF-to-command p99 [\d.]+ ms \(goal < 20 ms\)", out, re.M)
