#!/usr/bin/env bash
# The one-command GPU check (issue 17): nothing in gbml had run on CUDA until this.
#
#   bash benchmarks/gpu_check.sh [--slice-seconds N] [--only PART,...]   (N: per algorithm, default 120)
#
# --only re-runs the named parts (environment, tests, throughput, slice) and keeps the others'
# results from the last check, so a short GPU lease can finish what an earlier one did not;
# parts.csv says when each part finished.
#
# On a CUDA machine, in this order, each part logged to reports/gpu/logs/ and timed out on its own:
#   1. the environment: GPU, driver, torch, CUDA, cuDNN                      (environment.csv)
#   2. the `cuda` test tier, GBML_REQUIRE_CUDA=1: kill/resume/evaluate per algorithm, CPU-vs-CUDA
#      agreement, bf16 autocast                                  (tests.xml, tests.csv; <= 210 s)
#   3. benchmarks/throughput.py with the paper profile, on the GPU          (throughput.csv; <= 75 s)
#   4. benchmarks/gpu_slice.py: N seconds each of the paper profile's MAML and Reptile Omniglot
#      5-way 1-shot cells, extrapolated to the full cells                 (slice.csv; <= 2N + 150 s)
#   5. benchmarks/gpu_report.py: reports/gpu/README.md, the report
# At most 30 + 210 + 75 + (2N + 150) + 30 s = 12.25 minutes with the default N = 120, by the
# parts' time limits (the issue's 10-minute slices do not fit a 15-minute GPU lease). A failing
# part does not stop the next; the exit status is non-zero if any failed. Without a CUDA device
# it stops within seconds. Installs nothing from the network: a missing .venv is created offline
# (pip --no-index, seeing the system's packages), and the torch there must be a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SLICE_SECONDS=120
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --slice-seconds) SLICE_SECONDS=${2:?--slice-seconds needs a value}; shift 2 ;;
    --slice-seconds=*) SLICE_SECONDS=${1#*=}; shift ;;
    --only) ONLY=${2:?--only needs parts, e.g. tests,throughput}; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (usage: bash benchmarks/gpu_check.sh [--slice-seconds N] [--only PART,...])" >&2; exit 2 ;;
  esac
done
[[ "$SLICE_SECONDS" =~ ^[0-9]+$ ]] || { echo "gpu_check: --slice-seconds takes whole seconds, got '$SLICE_SECONDS'" >&2; exit 2; }
for name in ${ONLY//,/ }; do
  case "$name" in environment|tests|throughput|slice) ;;
    *) echo "gpu_check: --only takes environment, tests, throughput, slice; got '$name'" >&2; exit 2 ;; esac
done
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# Before anything slow: is there a GPU at all? (the driver's device node, or nvidia-smi seeing one)
if [ ! -e /dev/nvidia0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device found (no /dev/nvidia0, no GPU from nvidia-smi); this check is meant for a GPU machine" >&2
  exit 2
fi

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "gpu_check: no .venv; creating one offline (system site-packages visible, pip --no-index)"
  python3 -m venv --system-site-packages .venv
  if ! .venv/bin/pip install --quiet --no-index --no-build-isolation -e '.[test]'; then
    rm -rf .venv   # ours, half-made: the next run tries again
    echo "gpu_check: could not install gbml offline; install torch (a CUDA build) and gbml's dependencies for python3, or bring a .venv" >&2
    exit 3
  fi
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  "$PY" -c 'import torch; print(f"gpu_check: torch {torch.__version__} in .venv cannot use the GPU (CUDA build: {torch.version.cuda}); install a CUDA build of torch there")' >&2 \
    || echo "gpu_check: torch does not import with $PY" >&2
  exit 3
fi

REPORT=reports/gpu
LOGS=$REPORT/logs
HEADER="part,status,exit_code,seconds,log,finished_utc"
if [ -z "$ONLY" ] || [ ! -f "$REPORT/parts.csv" ]; then
  rm -rf "$LOGS" "$REPORT"/{parts,environment,tests,throughput,slice}.csv "$REPORT/tests.xml"
  echo "$HEADER" > "$REPORT/parts.csv"
else   # keep the other parts' rows and files; drop the re-run ones'
  for name in ${ONLY//,/ }; do rm -f "$REPORT/$name.csv" "$LOGS/$name.log"; done
  wanted tests && rm -f "$REPORT/tests.xml"
  { echo "$HEADER"; tail -n +2 "$REPORT/parts.csv" | grep -Ev "^(${ONLY//,/|}|report)," || true; } > "$REPORT/parts.csv.tmp"
  mv "$REPORT/parts.csv.tmp" "$REPORT/parts.csv"
fi
mkdir -p "$LOGS"
FAILED=0

# part NAME LIMIT_SECONDS COMMAND...: run it with its output in logs/NAME.log, record the outcome.
part() {
  local name=$1 limit=$2 start=$SECONDS rc=0 status=ok
  shift 2
  [ "$name" = report ] || wanted "$name" || return 0
  echo "gpu_check: $name (at most ${limit} s) ..."
  timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    status=failed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    tail -n 5 "$LOGS/$name.log" | sed 's/^/    /'
  fi
  echo "$name,$status,$rc,$((SECONDS - start)),logs/$name.log,$(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$REPORT/parts.csv"
  echo "gpu_check: $name: $status (exit $rc, $((SECONDS - start)) s, $LOGS/$name.log)"
}

part environment 30 "$PY" benchmarks/gpu_report.py env --out "$REPORT"
# The tier's own file: collecting all of tests/ would let an unrelated import error stop it.
# Spread over 8 processes sharing the GPU (one took ~25 s a test on an H200, 2026-12-04: 7 of the
# tier's tests in the 210 s); pytest-xdist comes with gbml's test extra.
part tests 210 env GBML_REQUIRE_CUDA=1 GBML_TEST_DEVICE=cuda "$PY" -m pytest tests/test_cuda.py -m cuda -q \
  -n 8 --dist load -p no:cacheprovider --junitxml="$REPORT/tests.xml"
part throughput 75 "$PY" benchmarks/throughput.py --params profiles/paper.yaml
part slice $((2 * SLICE_SECONDS + 150)) "$PY" benchmarks/gpu_slice.py --slice-seconds "$SLICE_SECONDS" --out "$REPORT"
part report 30 "$PY" benchmarks/gpu_report.py report --out "$REPORT" --slice-seconds "$SLICE_SECONDS"

if [ "$FAILED" -ne 0 ]; then
  echo "gpu_check: FAILED parts (see $REPORT/README.md and $LOGS/)" >&2
  exit 1
fi
echo "gpu_check: every part passed; report: $REPORT/README.md"
