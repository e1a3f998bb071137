"""The fidelity A/B: gbml and the authors' own code, identical settings, the same prepared arrays.

For Reptile (openai/supervised-reptile) it runs, per seed, the reference (``reptile_reference.py``)
and gbml in each variant below, each job on one thread, ``--jobs`` at a time, and then writes
``reports/fidelity/`` (``summarise.py``). Every job leaves one JSON result in ``--work``; a job
whose result exists is not run again, so an interrupted study resumes where it stopped.

gbml runs through its own CLI (``gbml train`` / ``gbml evaluate``) in a study directory with its
own params file: the CPU profile's params with the Reptile settings below, the data prepared as
the reference prepares it (``resample: nearest`` on the 1-bit PNGs gives exactly the reference's
0/1 pixels), and one params section per variant (``variant_of: reptile``).

    bash benchmarks/fidelity/setup.sh                       # once: .venv-fidelity
    .venv-fidelity/bin/python benchmarks/fidelity/run.py --reference ~/src/supervised-reptile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Nichol et al.'s 5-way 1-shot Omniglot command (supervised-reptile README, "1-shot 5-way
# Omniglot"), meta-iterations compressed from 100,000 with the same linear meta-step schedule.
REPTILE = {"meta_batch": 5, "meta_step": 1.0, "meta_step_final": 0.0, "train_shots": 10, "inner_lr": 0.001,
           "inner_batch": 10, "inner_iters": 5, "eval_inner_batch": 5, "eval_inner_iters": 50,
           "eval_adam_state": "carried", "inner_adam_state": "sequential"}
# gbml's variants: the reference's three choices together, and each alone on gbml's defaults.
REFERENCE_MODEL = {"init": "glorot", "padding": "tensorflow"}
VARIANTS = {
    "gbml": ({}, {}),
    "gbml_reference": (REFERENCE_MODEL, {"inner_loss": "sum"}),
    "gbml_glorot": ({"init": "glorot"}, {}),
    "gbml_tfpad": ({"padding": "tensorflow"}, {}),
    "gbml_sum": ({}, {"inner_loss": "sum"}),
}


def section(variant: str) -> str:
    """The params section (algorithm name) of a gbml variant: reptile, reptile_reference, ..."""
    return "reptile" if variant == "gbml" else "reptile_" + variant.removeprefix("gbml_")


def study_params(meta_iters: int, tasks: int, eval_seed: int, ways: int, shots: int, variants) -> dict:
    """The study's params.yaml: the committed CPU profile with the A/B's settings."""
    params = yaml.safe_load((ROOT / "profiles" / "cpu.yaml").read_text())
    params["profile"] = "fidelity"
    params["data"]["omniglot"]["mirror"] = str((ROOT / params["data"]["omniglot"]["mirror"]).resolve())
    params["prepare"]["omniglot"]["resample"] = "nearest"
    params["grid"] = {"algorithms": ["reptile"], "seeds": [0], "omniglot": {"ways": [ways], "shots": [shots]},
                      "miniimagenet": {"ways": [], "shots": []}}
    params["training"].update({"threads": 1, "checkpoint_every": 500, "curve_every": meta_iters, "curve_tasks": 50})
    params["evaluate"].update({"num_tasks": tasks, "seed": eval_seed, "modes": ["transductive", "non_transductive"]})
    params["reptile"].update(REPTILE, meta_iters=meta_iters, settings={})
    for name in variants:
        if name == "gbml":
            continue
        model, algo = VARIANTS[name]
        base = {k: v for k, v in params["reptile"].items() if k != "settings"} | algo
        params[section(name)] = {"variant_of": "reptile", **base, "settings": {},
                                     **({"model": {"omniglot": model}} if model else {})}
    return params


def write_params(path: Path, params: dict) -> None:
    """The study's params.yaml. A study directory keeps the settings it started with, so that a
    resumed or a second invocation (other sides, other seeds) scores like the first: only
    sections it lacks are added, and a section that would now differ is reported, not changed."""
    if path.exists():
        kept = yaml.safe_load(path.read_text())
        changed = sorted(k for k in params if k in kept and kept[k] != params[k])
        if changed:
            print(f"{path}: keeping the study's settings for {', '.join(changed)} (they differ from what "
                  "this invocation would write; use a new --work for a new study)", file=sys.stderr)
        params = {**params, **kept}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    tmp.replace(path)


def run(cmd: list[str], log: Path, env: dict) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")


def gbml_job(work: Path, variant: str, seed: int, args, env: dict) -> dict:
    algorithm = section(variant)
    gbml = [sys.executable, "-m", "gbml.cli", "--quiet", "--params", str(work / "params.yaml"), "--root", str(work)]
    cell = ["--algorithm", algorithm, "--ways", str(args.ways), "--shots", str(args.shots), "--seed", str(seed),
            "--no-mlflow"]
    log = work / "logs" / f"{variant}-seed{seed}.log"
    run(gbml + ["train"] + cell, log, env)
    run(gbml + ["evaluate"] + cell, log, env)
    name = f"{algorithm}-omniglot-{args.ways}w{args.shots}s-seed{seed}"
    metrics = json.loads((work / "evals" / name / "metrics.json").read_text())
    trained = json.loads((work / "runs" / name / "run.json").read_text())
    return {"accuracy": {m: metrics[f"test_acc_{m}"] for m in ("transductive", "non_transductive")},
            "train_seconds": trained["train_seconds"], "eval_seconds": metrics["eval_seconds"]}


def reference_job(work: Path, seed: int, args, env: dict) -> dict:
    out = work / "results" / f"reference-seed{seed}.raw.json"
    cmd = [sys.executable, str(HERE / "reptile_reference.py"), "--reference", str(args.reference),
           "--prepared", str(work / "data" / "prepared" / "omniglot"), "--out", str(out), "--seed", str(seed),
           "--eval-seed", str(args.eval_seed), "--classes", str(args.ways), "--shots", str(args.shots),
           "--meta-iters", str(args.meta_iters), "--eval-samples", str(args.tasks),
           *[f"--{k.replace('_', '-')}={v}" for k, v in {
               "train_shots": REPTILE["train_shots"], "inner_batch": REPTILE["inner_batch"],
               "inner_iters": REPTILE["inner_iters"], "learning_rate": REPTILE["inner_lr"],
               "meta_step": REPTILE["meta_step"], "meta_step_final": REPTILE["meta_step_final"],
               "meta_batch": REPTILE["meta_batch"], "eval_batch": REPTILE["eval_inner_batch"],
               "eval_iters": REPTILE["eval_inner_iters"]}.items()]]
    run(cmd, work / "logs" / f"reference-seed{seed}.log", env)
    raw = json.loads(out.read_text())
    return {"accuracy": raw["accuracy"], "train_seconds": raw["train_seconds"],
            "eval_seconds": sum(raw["eval_seconds"].values())}


def job(work: Path, side: str, seed: int, args, env: dict) -> str:
    result = work / "results" / f"{side}-seed{seed}.json"
    if result.exists():
        return f"{side} seed {seed}: done before"
    start = time.perf_counter()
    out = reference_job(work, seed, args, env) if side == "reference" else gbml_job(work, side, seed, args, env)
    out |= {"side": side, "seed": seed, "wall_seconds": time.perf_counter() - start}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(result)
    return f"{side} seed {seed}: {out['accuracy']} in {out['wall_seconds']:.0f} s"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="checkout of openai/supervised-reptile")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "fidelity" / "work",
                   help="study directory (params, data, runs, results; default: %(default)s)")
    p.add_argument("--sides", nargs="+", default=["reference", "gbml_reference", "gbml"],
                   choices=["reference", *VARIANTS], help="implementations to run (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--meta-iters", type=int, default=3000)
    p.add_argument("--tasks", type=int, default=1000, help="test tasks per evaluation mode")
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="jobs at once, one thread each")
    p.add_argument("--report", type=Path, default=ROOT / "reports" / "fidelity")
    args = p.parse_args(argv)
    args.reference = args.reference.resolve()
    if not (args.reference / "supervised_reptile" / "reptile.py").is_file():
        p.error(f"{args.reference} is not a checkout of openai/supervised-reptile; "
                "clone https://github.com/openai/supervised-reptile and pass its path")
    work = args.work.resolve()
    for d in ("results", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    write_params(work / "params.yaml",
                 study_params(args.meta_iters, args.tasks, args.eval_seed, args.ways, args.shots, VARIANTS))
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    gbml = [sys.executable, "-m", "gbml.cli", "--quiet", "--params", str(work / "params.yaml"), "--root", str(work)]
    if not (work / "data" / "prepared" / "omniglot" / "manifest.json").exists():
        run(gbml + ["fetch", "--dataset", "omniglot"], work / "logs" / "data.log", env)
        run(gbml + ["prepare", "--dataset", "omniglot"], work / "logs" / "data.log", env)
    # Seeds outermost, so an early stop leaves complete seeds of every side.
    jobs = [(side, seed) for seed in args.seeds for side in args.sides]
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda j: job(work, *j, args, env), jobs):
            print(line, flush=True)
    subprocess.run([sys.executable, str(HERE / "summarise.py"), "--work", str(work), "--out", str(args.report)],
                   check=True)


if __name__ == "__main__":
    main()
