"""The GPU check's record (benchmarks/gpu_check.sh): what ran, on what, and what it measured.

    python benchmarks/gpu_report.py env    --out reports/gpu   # environment.csv: GPU, driver, torch
    python benchmarks/gpu_report.py report --out reports/gpu   # tests.csv, throughput.csv, README.md

``report`` reads what the parts left in ``--out`` (parts.csv, the pytest JUnit XML, the throughput
log, slice.csv) and writes the Markdown report; a part that failed or left nothing is reported
as such rather than skipped, so a partial run still says how far it got.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

THROUGHPUT = re.compile(r"^(?P<algorithm>\S+)\s+(?P<iters_per_s>[\d.]+) it/s\s+(?P<tasks_per_s>[\d.]+) tasks/s"
                        r"\s+\((?P<meta_iters>\d+) iters ~\s*(?P<train_min>[\d.]+) min\)\s+adapt\s+"
                        r"(?P<adapt_ms_per_task>[\d.]+) ms/task")


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["none"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "_nothing recorded_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def environment() -> list[dict]:
    import torch
    rows = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    device_count=torch.cuda.device_count())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        rows["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "nvidia-smi failed"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        rows["driver"] = "unknown (nvidia-smi unavailable)"
    return [{"key": k, "value": v} for k, v in rows.items()]


def test_results(xml: Path) -> list[dict]:
    """One row per test of the pytest JUnit XML: outcome, seconds, first line of the message."""
    if not xml.is_file():
        return []
    rows = []
    for case in ET.parse(xml).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0][:200] if message else ""
        rows.append({"test": case.get("name"), "outcome": outcome,
                     "seconds": round(float(case.get("time", 0)), 1), "message": message})
    return rows


def throughput(log: Path) -> list[dict]:
    lines = log.read_text().splitlines() if log.is_file() else []
    return [m.groupdict() for m in map(THROUGHPUT.match, lines) if m]


def report(out: Path, slice_seconds: str) -> None:
    env = {r["key"]: r["value"] for r in read_csv(out / "environment.csv")}
    parts, tests = read_csv(out / "parts.csv"), test_results(out / "tests.xml")
    write_csv(out / "tests.csv", tests)
    write_csv(out / "throughput.csv", throughput(out / "logs" / "throughput.log"))
    speeds, slices = read_csv(out / "throughput.csv"), read_csv(out / "slice.csv")
    if slices:   # the slices slice.csv holds, which an earlier check may have timed (gpu_check.sh --only)
        slice_seconds = f"{float(slices[0]['slice_seconds']):g}"
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
    failed = [p["part"] for p in parts if p["status"] != "ok"]
    text = f"""# GPU check (issue 17)

`bash benchmarks/gpu_check.sh --slice-seconds {slice_seconds}` on {env.get('gpu', 'no GPU')}, \
{env.get('date_utc', 'date unknown')}. **{'Failed parts: ' + ', '.join(failed) if failed else 'Every part passed.'}**
Logs: `logs/`; figures: the CSVs beside this file.

## Environment (`environment.csv`)

{table([{"key": k, "value": v} for k, v in env.items()], ["key", "value"])}
## Parts (`parts.csv`)

{table(parts, ["part", "status", "exit_code", "seconds", "log", "finished_utc"])}
## The `cuda` test tier (`tests.csv`, `tests.xml`)

tests/test_cuda.py under `GBML_REQUIRE_CUDA=1`: per algorithm, a training process SIGKILLed after
a resume checkpoint and resumed, then evaluated in every mode; meta-steps agreeing with the CPU's
(loss within relative 1e-3, TF32 off); bf16 autocast training and evaluation.
{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped.

{table([t for t in tests if t["outcome"] != "passed"], ["test", "outcome", "message"])}
## Throughput, paper profile (`throughput.csv`)

`benchmarks/throughput.py --params profiles/paper.yaml`: 30 timed meta-iterations on random
28x28 inputs after 3 warm-up ones; `train_min` = meta_iters at that rate (no evaluation).

{table(speeds, ["algorithm", "iters_per_s", "tasks_per_s", "meta_iters", "train_min", "adapt_ms_per_task"])}
## Paper-profile slices, Omniglot 5-way 1-shot (`slice.csv`)

`benchmarks/gpu_slice.py`: {slice_seconds} s of the real outer loop per algorithm (the issue asked
for 10 minutes; a lent GPU's 15-minute budget does not hold that, so the default is 120 s each;
`--slice-seconds` sets it). Full cell (hours) = meta_iters / iterations per s + curve points
(meta_iters / curve_every of them) + evaluation of num_tasks tasks in every mode, the last two
timed on a sample and scaled. Memory: `torch.cuda.max_memory_allocated`, training and overall.
Utilisation: share of time a kernel ran, sampled each second; `util_source` says how.

{table(slices, ["algorithm", "engine", "meta_batch", "iterations", "iters_per_s", "tasks_per_s",
                "meta_iters", "train_h", "curves_h", "eval_h", "full_cell_h", "train_peak_memory_mib",
                "peak_memory_mib", "util_mean_pct", "util_max_pct", "util_source", "error"])}"""
    (out / "README.md").write_text(text)
    print(f"gpu_report: wrote {out / 'README.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["env", "report"])
    ap.add_argument("--out", type=Path, default=Path("reports/gpu"))
    ap.add_argument("--slice-seconds", default="120")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "env":
        write_csv(args.out / "environment.csv", environment())
    else:
        report(args.out, args.slice_seconds)


if __name__ == "__main__":
    main()
