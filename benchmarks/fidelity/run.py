"""The fidelity A/B: gbml and the authors' own code, identical settings, the same prepared arrays.

One study per reference implementation (``--study``):
* ``reptile``: openai/supervised-reptile (``reptile_reference.py``; TF1 through compat.v1);
* ``mamlpp``: AntreasAntoniou/HowToTrainYourMAMLPytorch (``mamlpp_reference.py``; PyTorch);
* ``maml``, ``fomaml``, ``anil``: learn2learn 0.2.0 as its examples use it (``l2l_reference.py``;
  the installed package is the reference: run these with ``.venv-bench``, no ``--reference``).

Per seed it runs the reference and gbml in each variant below, each job on one thread,
``--jobs`` at a time, and then writes ``reports/fidelity/`` (``summarise.py``, every study in
``--work``). Every job leaves one JSON result in ``--work/<study>``; a job whose result exists is
not run again, so an interrupted study resumes where it stopped.

gbml runs through its own CLI (``gbml train`` / ``gbml evaluate``) in the study's directory with
its own params file: the CPU profile's params with the study's settings, the data prepared as the
references prepare it (``resample: nearest`` on the 1-bit PNGs gives exactly their 0/1 pixels),
and one params section per variant (``variant_of: <algorithm>``).

    bash benchmarks/fidelity/setup.sh                       # once: .venv-fidelity
    .venv-fidelity/bin/python benchmarks/fidelity/run.py --study reptile --reference ~/src/supervised-reptile
    .venv-fidelity/bin/python benchmarks/fidelity/run.py --study mamlpp --reference ~/src/HowToTrainYourMAMLPytorch
    bash benchmarks/setup_anchors.sh                        # once: .venv-bench (learn2learn 0.2.0)
    .venv-bench/bin/python benchmarks/fidelity/run.py --study maml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Study:
    """One reference implementation against gbml: the gbml algorithm, its shared settings, the
    gbml variants (side -> (Omniglot model overrides, algorithm overrides)) and the reference."""
    algorithm: str
    repository: str
    marker: str                 # a file every checkout of the repository has
    driver: str                 # the script that trains and scores the reference
    settings: dict
    variants: dict
    meta_iters: int
    sides: tuple = ("reference", "gbml_reference", "gbml")
    training: dict = field(default_factory=dict)

    def section(self, variant: str) -> str:
        """The params section of a gbml variant: reptile, reptile_reference, ..."""
        return self.algorithm if variant == "gbml" else f"{self.algorithm}_{variant.removeprefix('gbml_')}"


# Nichol et al.'s 5-way 1-shot Omniglot command (supervised-reptile README, "1-shot 5-way
# Omniglot"), meta-iterations compressed from 100,000 with the same linear meta-step schedule.
# gbml's variants: the reference's three choices together, and each alone on gbml's defaults.
REPTILE = Study(
    algorithm="reptile", repository="openai/supervised-reptile", marker="supervised_reptile/reptile.py",
    driver="reptile_reference.py", meta_iters=3000,
    settings={"meta_batch": 5, "meta_step": 1.0, "meta_step_final": 0.0, "train_shots": 10, "inner_lr": 0.001,
              "inner_batch": 10, "inner_iters": 5, "eval_inner_batch": 5, "eval_inner_iters": 50,
              "eval_adam_state": "carried", "inner_adam_state": "sequential"},
    variants={"gbml": ({}, {}),
              "gbml_reference": ({"init": "glorot", "padding": "tensorflow"}, {"inner_loss": "sum"}),
              "gbml_glorot": ({"init": "glorot"}, {}),
              "gbml_tfpad": ({"padding": "tensorflow"}, {}),
              "gbml_sum": ({}, {"inner_loss": "sum"})})

# The released MAML++ Omniglot 5-way 1-shot config (experiment_config/omniglot_maml++-omniglot_
# 1_8_0.1_64_5_0.json): its 100 epochs kept, each of meta_iters / 100 iterations, so MSL (first
# 10 epochs) and cosine annealing keep their shape; second order throughout (its
# first_order_to_second_order_epoch is -1); the final model scored (no top-5 ensemble).
MAMLPP = Study(
    algorithm="mamlpp", repository="AntreasAntoniou/HowToTrainYourMAMLPytorch",
    marker="few_shot_learning_system.py", driver="mamlpp_reference.py", meta_iters=1000,
    settings={"meta_batch": 8, "meta_lr": 0.001, "min_meta_lr": 0.00001, "inner_steps": 5, "inner_lr": 0.1,
              "train_queries": 1, "eval_inner_steps": 5, "msl": True, "msl_epochs": 10, "lslr": True,
              "per_step_bn": True, "inner_loop_bn_params": False, "da": True, "first_order_epochs": 0,
              "ca": True, "ensemble_top_n": 0, "meta_grad_clip": 0.0},
    variants={"gbml": ({}, {}),
              "gbml_reference": ({"downsample": "maxpool", "init": "glorot", "bn_eps": 1e-5,
                                  "activation": "leaky_relu"}, {})},
    sides=("reference", "gbml_reference"),
    # Its validation each epoch is not part of the matched training budget: a token 10 tasks.
    training={"curve_tasks": 10})



def l2l_study(algorithm: str, meta_iters: int = 1000) -> Study:
    """learn2learn's examples/vision/maml_omniglot.py settings (5-way 1-shot, meta-batch 32, one
    inner step at 0.5, Adam at 0.003, queries = shots) on its OmniglotCNN: stride-2 convolutions
    with padding 1, batch norm (eps 1e-5, U(0, 1) weights) adapted in the inner loop, mean-pooled
    N(0, 1) head. ANIL (the anil_fc100.py example's structure) adapts the head alone."""
    settings = {"meta_batch": 32, "meta_lr": 0.003, "inner_steps": 1, "inner_lr": 0.5, "train_queries": 1,
                "eval_inner_steps": 1}
    if algorithm != "fomaml":
        settings["first_order"] = False
    if algorithm == "maml":
        settings["inner_bn"] = True
    return Study(algorithm=algorithm, repository="learnables/learn2learn (0.2.0, installed)", marker=None,
                 driver="l2l_reference.py", meta_iters=meta_iters, settings=settings,
                 variants={"gbml": ({}, {}),
                           "gbml_reference": ({"downsample": "stride", "padding": "symmetric", "head": "mean",
                                               "init": "learn2learn", "bn_eps": 1e-5}, {})},
                 sides=("reference", "gbml_reference"))


# ANIL adapts only the head, so its body learns from one step's signal: at 1,000 iterations it
# was far from converged (75% transductive, seed spread 2.6 points, an interval of +-5 on the
# difference); 3,000, inside the 2,000-5,000 the A/B calls for, lets both sides settle.
STUDIES = {"reptile": REPTILE, "mamlpp": MAMLPP, "maml": l2l_study("maml"), "fomaml": l2l_study("fomaml"),
           "anil": l2l_study("anil", meta_iters=3000)}


def study_params(study: Study, meta_iters: int, tasks: int, eval_seed: int, ways: int, shots: int) -> dict:
    """The study's params.yaml: the committed CPU profile with the A/B's settings."""
    params = yaml.safe_load((ROOT / "profiles" / "cpu.yaml").read_text())
    params["profile"] = "fidelity"
    params.pop("studies", None)     # the A/B trains and scores; the papers' analyses are not part of it
    params["data"]["omniglot"]["mirror"] = str((ROOT / params["data"]["omniglot"]["mirror"]).resolve())
    params["prepare"]["omniglot"]["resample"] = "nearest"
    params["grid"] = {"algorithms": [study.algorithm], "seeds": [0], "omniglot": {"ways": [ways], "shots": [shots]},
                      "miniimagenet": {"ways": [], "shots": []}}
    params["training"].update({"threads": 1, "checkpoint_every": 500, "curve_every": meta_iters, "curve_tasks": 50},
                              **study.training)
    params["evaluate"].update({"num_tasks": tasks, "seed": eval_seed, "modes": ["transductive", "non_transductive"],
                               "queries": 1})
    algorithm = params[study.algorithm]
    algorithm.update(study.settings, meta_iters=meta_iters, settings={})
    if study.algorithm == "mamlpp":
        algorithm["iters_per_epoch"] = meta_iters // 100
    algorithm.pop("model", None)
    for name, (model, overrides) in study.variants.items():
        if name == "gbml":
            continue
        base = {k: v for k, v in algorithm.items() if k != "settings"} | overrides
        params[study.section(name)] = {"variant_of": study.algorithm, **base, "settings": {},
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


def gbml_job(study: Study, work: Path, variant: str, seed: int, args, env: dict) -> dict:
    algorithm = study.section(variant)
    gbml = [sys.executable, "-m", "gbml.cli", "--quiet", "--params", str(work / "params.yaml"), "--root", str(work)]
    cell = ["--algorithm", algorithm, "--ways", str(args.ways), "--shots", str(args.shots), "--seed", str(seed),
            "--no-mlflow"]
    log = work / "logs" / f"{variant}-seed{seed}.log"
    name = f"{algorithm}-omniglot-{args.ways}w{args.shots}s-seed{seed}"
    if not (work / "runs" / name / "run.json").is_file():   # a finished training is not redone (resume)
        run(gbml + ["train"] + cell, log, env)
    run(gbml + ["evaluate"] + cell, log, env)
    metrics = json.loads((work / "evals" / name / "metrics.json").read_text())
    trained = json.loads((work / "runs" / name / "run.json").read_text())
    return {"accuracy": {m: metrics[f"test_acc_{m}"] for m in ("transductive", "non_transductive")},
            "train_seconds": trained["train_seconds"], "eval_seconds": metrics["eval_seconds"]}


def reference_options(study: Study, args) -> list[str]:
    """The reference driver's options beyond the common ones: Reptile's settings by name."""
    s = study.settings
    if study.driver == "l2l_reference.py":
        return [f"--algorithm={study.algorithm}", f"--meta-batch={s['meta_batch']}", f"--meta-lr={s['meta_lr']}",
                f"--fast-lr={s['inner_lr']}", f"--steps={s['inner_steps']}", f"--eval-steps={s['eval_inner_steps']}",
                f"--train-queries={s['train_queries']}"]
    if study is not REPTILE:
        return []
    return [f"--{k.replace('_', '-')}={v}" for k, v in {
        "train_shots": s["train_shots"], "inner_batch": s["inner_batch"], "inner_iters": s["inner_iters"],
        "learning_rate": s["inner_lr"], "meta_step": s["meta_step"], "meta_step_final": s["meta_step_final"],
        "meta_batch": s["meta_batch"], "eval_batch": s["eval_inner_batch"],
        "eval_iters": s["eval_inner_iters"]}.items()]


def reference_job(study: Study, work: Path, seed: int, args, env: dict) -> dict:
    out = work / "results" / f"reference-seed{seed}.raw.json"
    cmd = [sys.executable, str(HERE / study.driver), *(["--reference", str(args.reference)] if args.reference else []),
           "--prepared", str(work / "data" / "prepared" / "omniglot"), "--out", str(out), "--seed", str(seed),
           "--eval-seed", str(args.eval_seed), "--classes", str(args.ways), "--shots", str(args.shots),
           "--meta-iters", str(args.meta_iters), "--eval-samples", str(args.tasks), *reference_options(study, args)]
    run(cmd, work / "logs" / f"reference-seed{seed}.log", env)
    raw = json.loads(out.read_text())
    return {"accuracy": raw["accuracy"], "train_seconds": raw["train_seconds"],
            "eval_seconds": sum(raw["eval_seconds"].values())}


def job(study: Study, work: Path, side: str, seed: int, args, env: dict) -> str:
    result = work / "results" / f"{side}-seed{seed}.json"
    if result.exists():
        return f"{side} seed {seed}: done before"
    start = time.perf_counter()
    out = (reference_job(study, work, seed, args, env) if side == "reference"
           else gbml_job(study, work, side, seed, args, env))
    out |= {"side": side, "seed": seed, "wall_seconds": time.perf_counter() - start}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(result)
    return f"{side} seed {seed}: {out['accuracy']} in {out['wall_seconds']:.0f} s"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=STUDIES, default="reptile", help="reference implementation (default: %(default)s)")
    p.add_argument("--reference", type=Path, help="checkout of the study's repository (reptile, mamlpp)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "fidelity" / "work",
                   help="studies' directory: <work>/<study> holds params, data, runs, results (default: %(default)s)")
    p.add_argument("--sides", nargs="+", help="implementations to run: reference and the study's gbml variants "
                   "(default: " + "; ".join(f"{k}: " + " ".join(v.sides) for k, v in STUDIES.items()) + ")")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--meta-iters", type=int, help="meta-iterations per run (default: the study's: "
                   + ", ".join(f"{k} {v.meta_iters}" for k, v in STUDIES.items()) + ")")
    p.add_argument("--tasks", type=int, default=1000, help="test tasks per evaluation mode")
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="jobs at once, one thread each")
    p.add_argument("--report", type=Path, default=ROOT / "reports" / "fidelity")
    args = p.parse_args(argv)
    study = STUDIES[args.study]
    args.sides = args.sides or list(study.sides)
    unknown = set(args.sides) - {"reference", *study.variants}
    if unknown:
        p.error(f"--sides: {', '.join(sorted(unknown))} not in the {args.study} study "
                f"(reference, {', '.join(study.variants)})")
    args.meta_iters = args.meta_iters or study.meta_iters
    if study.marker and not args.reference:
        p.error(f"--study {args.study} needs --reference: a checkout of https://github.com/{study.repository}")
    if study.marker:
        args.reference = args.reference.resolve()
        if not (args.reference / study.marker).is_file():
            p.error(f"{args.reference} is not a checkout of {study.repository} (no {study.marker}); "
                    f"clone https://github.com/{study.repository} and pass its path")
    work = args.work.resolve() / args.study
    for d in ("results", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    write_params(work / "params.yaml",
                 study_params(study, args.meta_iters, args.tasks, args.eval_seed, args.ways, args.shots))
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    gbml = [sys.executable, "-m", "gbml.cli", "--quiet", "--params", str(work / "params.yaml"), "--root", str(work)]
    if not (work / "data" / "prepared" / "omniglot" / "manifest.json").exists():
        run(gbml + ["fetch", "--dataset", "omniglot"], work / "logs" / "data.log", env)
        run(gbml + ["prepare", "--dataset", "omniglot"], work / "logs" / "data.log", env)
    # Seeds outermost, so an early stop leaves complete seeds of every side.
    jobs = [(side, seed) for seed in args.seeds for side in args.sides]
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda j: job(study, work, *j, args, env), jobs):
            print(line, flush=True)
    subprocess.run([sys.executable, str(HERE / "summarise.py"), "--work", str(args.work.resolve()),
                    "--out", str(args.report)], check=True)


if __name__ == "__main__":
    main()
