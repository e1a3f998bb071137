"""benchmarks/gpu_check.sh's own bookkeeping, on a CPU: a GPU lease is short, so what the script
does before and around the GPU work must be right the first time. The GPU parts themselves run
in a temporary copy of the script against a stand-in Python that records its arguments."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def stand_in(tmp_path: Path) -> tuple[Path, dict]:
    """A repository holding the script, an earlier check's report, a Python that logs each call
    and exits 0, and an nvidia-smi that lists one GPU."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks")
    bin_dir, venv = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    (venv / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    for tool in (bin_dir / "nvidia-smi", venv / "python"):
        tool.chmod(0o755)
    report = tmp_path / "reports" / "gpu"
    (report / "logs").mkdir(parents=True)
    (report / "parts.csv").write_text(
        "part,status,exit_code,seconds,log,finished_utc\n"
        "environment,ok,0,4,logs/environment.log,2026-12-04T17:22:31Z\n"
        "tests,timeout,124,210,logs/tests.log,2026-12-04T17:26:01Z\n"
        "slice,ok,0,118,logs/slice.log,2026-12-04T17:28:40Z\n"
        "report,ok,0,1,logs/report.log,2026-12-04T17:28:41Z\n")
    for name in ("environment", "tests", "slice"):
        (report / f"{name}.csv").write_text(f"{name}\n")
        (report / "logs" / f"{name}.log").write_text(f"{name} log\n")
    (report / "slice.csv").write_text("algorithm,slice_seconds\nmaml,45.0\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return tmp_path, env


def gpu_check(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)


def parts(repo: Path) -> list[dict]:
    with open(repo / "reports" / "gpu" / "parts.csv") as f:
        return list(csv.DictReader(f))


def test_only_reruns_the_named_parts_and_keeps_the_others(tmp_path):
    repo, env = stand_in(tmp_path)
    out = gpu_check(repo, env, "--only", "tests,throughput")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = parts(repo)
    assert sorted(r["part"] for r in rows) == ["environment", "report", "slice", "tests", "throughput"]  # one each
    rows = {r["part"]: r for r in rows}
    assert rows["environment"]["finished_utc"] == "2026-12-04T17:22:31Z"          # kept
    assert rows["tests"]["status"] == "ok" and rows["tests"]["finished_utc"] != "2026-12-04T17:26:01Z"
    calls = (repo / "calls.txt").read_text()
    assert "pytest tests/test_cuda.py" in calls and "throughput.py" in calls
    assert "gpu_slice.py" not in calls and "gpu_report.py env" not in calls
    assert "gpu_report.py report --out reports/gpu" in calls
    assert (repo / "reports" / "gpu" / "logs" / "slice.log").read_text() == "slice log\n"


def test_a_whole_check_starts_a_fresh_report(tmp_path):
    repo, env = stand_in(tmp_path)
    out = gpu_check(repo, env, "--slice-seconds", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["part"] for r in parts(repo)] == ["environment", "tests", "throughput", "slice", "report"]
    assert "gpu_slice.py --slice-seconds 30" in (repo / "calls.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["--only", "tests,benchmarks"], "--only takes environment, tests, throughput, slice; got 'benchmarks'"),
    (["--slice-seconds", "2m"], "--slice-seconds takes whole seconds, got '2m'"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, args, message):
    repo, env = stand_in(tmp_path)
    out = gpu_check(repo, env, *args)
    assert out.returncode == 2 and message in out.stderr
    assert not (repo / "calls.txt").exists()


def test_the_report_describes_the_slices_it_holds_not_the_last_checks_setting(tmp_path):
    """After `--only tests`, slice.csv still holds an earlier check's 45-s slices."""
    spec = importlib.util.spec_from_file_location("gpu_report", REPO / "benchmarks" / "gpu_report.py")
    gpu_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_report)
    (tmp_path / "slice.csv").write_text("algorithm,slice_seconds,iters_per_s\nmaml,45.0,27.86\n")
    gpu_report.report(tmp_path, slice_seconds="120")
    text = (tmp_path / "README.md").read_text()
    assert "45 s of the real outer loop" in text and "120 s of the real outer loop" not in text
