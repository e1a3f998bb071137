"""``gbml``: one subcommand per pipeline stage. Parses arguments and params.yaml, then calls the
library; no logic lives here. DVC stages (dvc.yaml) and, later, Snakemake rules call these."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from gbml.config import (ALGORITHMS, DATASETS, RunSpec, grid, load_params, resolved_run_config,
                         section)
from gbml.errors import ConfigError, Fix, GbmlError
from gbml.io import write_atomic, write_text_atomic

PROFILES_DIR = "profiles"


def data_paths(root: Path, dataset: str) -> tuple[Path, Path]:
    return root / "data" / "raw" / dataset, root / "data" / "prepared" / dataset


def cmd_fetch(args, params: dict, root: Path) -> None:
    from gbml.data.fetch import OMNIGLOT_ARCHIVES, fetch_archives

    cfg = section(params, "data", args.dataset)
    mirror = os.environ.get("GBML_OMNIGLOT_MIRROR") or cfg.get("mirror")
    mirror_path = (root / mirror).resolve() if mirror else None
    raw, _ = data_paths(root, args.dataset)
    fetch_archives(OMNIGLOT_ARCHIVES, raw, mirror_path, timeout=float(cfg.get("timeout_s", 60)),
                   progress=not args.quiet)


def cmd_prepare(args, params: dict, root: Path) -> None:
    raw, prepared = data_paths(root, args.dataset)
    if args.dataset == "miniimagenet":
        from gbml.data.miniimagenet import (HOW_TO_ADD, NO_SOURCE, configured_source, prepare_miniimagenet,
                                            write_unavailable)

        kind, path = configured_source(params)
        if not kind:
            write_unavailable(prepared, NO_SOURCE, HOW_TO_ADD)
            print(f"Mini-ImageNet not prepared: {NO_SOURCE}; {HOW_TO_ADD}. Its report cells will say "
                  f"'not run'. -> {prepared}")
            return
        cfg = params.get("data", {}).get("miniimagenet") or {}
        source = path if str(path).startswith(("http://", "https://")) else (root / path).resolve()
        splits = {"reference": (root / cfg["splits"]).resolve()} if cfg.get("splits") else {}
        manifest = prepare_miniimagenet(kind, source, prepared, sha256=cfg.get("sha256") or None,
                                        timeout=float(cfg.get("timeout_s", 60)), **splits)
    else:
        from gbml.data.omniglot import prepare_omniglot

        manifest = prepare_omniglot(raw, prepared, **dict(section(params, "prepare", args.dataset)))
    sizes = ", ".join(f"{k}={v}" for k, v in manifest["split_sizes"].items())
    print(f"prepared {args.dataset}: {sizes} -> {prepared}")


def dvc_stage(spec: RunSpec, step: str) -> str:
    """The dvc.yaml stage that runs ``step`` (train/evaluate) for a grid cell, e.g.
    ``train_omniglot@maml-omniglot-5-1-0`` (DVC names matrix entries by their values)."""
    return f"{step}_{spec.dataset}@{spec.algorithm}-{spec.dataset}-{spec.ways}-{spec.shots}-{spec.seed}"


def how_to_run(fix: Fix) -> str:
    """What to run for an error's ``fix``: its DVC stage, and the ``gbml`` command doing the same."""
    force = "--force " if fix.force else ""
    if fix.step in ("train", "evaluate") and fix.unit is not None:
        spec = fix.unit
        flags = f"--algorithm {spec.algorithm} --dataset {spec.dataset} --ways {spec.ways} --shots {spec.shots} --seed {spec.seed}"
        return f"`dvc repro {force}{dvc_stage(spec, fix.step)}` (or `gbml {fix.step} {flags}`)"
    if fix.step in ("train", "evaluate"):
        return f"`dvc repro {force}{fix.step}_<dataset>@<run>` for each run (or `gbml {fix.step}` with its flags)"
    if fix.step in ("fetch", "prepare"):
        stage = fix.step if fix.unit in (None, "omniglot") else f"{fix.step}_{fix.unit}"
        return f"`dvc repro {force}{stage}` (or `gbml {fix.step} --dataset {fix.unit or 'omniglot'}`)"
    if fix.step == "study":
        from gbml.studies.registry import STUDIES
        flags = " ".join(f"--{f.replace('_', '-')} {f.upper()}" for f in STUDIES[fix.unit].UNIT_FLAGS)
        return f"`dvc repro` (or `gbml study {fix.unit} {flags}` for each unit)"
    return f"`dvc repro` (or `gbml {fix.step}`)"


def run_spec(args, params: dict) -> RunSpec:
    """The run the flags name, checked against the data like a grid cell (it need not be one)."""
    from gbml.schema import run_problems

    spec = RunSpec(args.algorithm, args.dataset, args.ways, args.shots, args.seed)
    problems = run_problems(params, spec)
    if problems:
        raise ConfigError(f"{spec.name}: {'; '.join(problems)}")
    return spec


def cmd_train(args, params: dict, root: Path) -> None:
    from gbml.tracking import PARENT_TAG, git_commit, tracker_for
    from gbml.train import train_run

    spec = run_spec(args, params)
    cfg = resolved_run_config(params, spec)
    commit = git_commit(root)
    tags = {"algorithm": spec.algorithm, "base_algorithm": cfg["base_algorithm"], "dataset": spec.dataset,
            "ways": spec.ways, "shots": spec.shots, "seed": spec.seed, "profile": cfg["profile"], "gbml.run_name": spec.name,
            "dvc_stage": dvc_stage(spec, "train"), "mlflow.source.git.commit": commit}
    tracker = None if args.no_mlflow else tracker_for(params, root, spec.dataset)
    if tracker:
        tags[PARENT_TAG] = tracker.sweep_run(params, spec.dataset, {"mlflow.source.git.commit": commit})
    summary = train_run(spec, cfg, data_paths(root, spec.dataset)[1], root / "runs" / spec.name,
                        tracker=tracker, tags=tags, progress=not args.quiet)
    print(f"{spec.name}: {summary['meta_iters']} meta-iterations in {summary['train_seconds']:.0f} s "
          f"({summary['tasks_per_second']:.1f} tasks/s), final {summary['curve_split']} acc "
          f"{summary['final_val_acc']:.3f}")


def cmd_evaluate(args, params: dict, root: Path) -> None:
    from gbml.evaluate import evaluate_run
    from gbml.tracking import tracker_for

    spec = run_spec(args, params)
    cfg = resolved_run_config(params, spec)
    tracker = None if args.no_mlflow else tracker_for(params, root, spec.dataset)
    tags = {"evaluation_modes": ",".join(cfg["evaluate"]["modes"]), "dvc_stage_evaluate": dvc_stage(spec, "evaluate")}
    metrics = evaluate_run(spec, cfg, data_paths(root, spec.dataset)[1], root / "runs" / spec.name,
                           root / "evals" / spec.name, tracker=tracker, tags=tags, progress=not args.quiet)
    scores = ", ".join(f"{m}: {100 * metrics[f'test_acc_{m}']:.2f} ± {100 * metrics[f'test_ci95_{m}']:.2f}%"
                       for m in cfg["evaluate"]["modes"])
    print(f"{spec.name}: {scores} ({metrics['num_tasks']} tasks, 95% CI)")


def cmd_report(args, params: dict, root: Path) -> None:
    from gbml.report.build import build_report

    out = build_report(params, root, root / args.out)
    print(f"report written to {out}")


SINE_OUTPUTS = ("metrics.json", "curves.csv", "per_task.csv", "adaptation.png", "mse_vs_steps.png")


def cmd_sine(args, params: dict, root: Path) -> None:
    from gbml.config import SineStudyConfig
    from gbml.sine import run_sine_study
    import torch

    from gbml.tracking import RUN_KEY_TAG, git_commit, run_key, source_fingerprint, tracker_for

    cfg = SineStudyConfig.from_dict(dict(section(params, "sine")))
    out = root / args.out
    tracker = None if args.no_mlflow else tracker_for(params, root, "sine")
    key = run_key(dict(section(params, "sine")), source_fingerprint(), torch.__version__)
    if tracker and (reused := tracker.reuse(key, out, names=SINE_OUTPUTS)):
        print(f"sine study: reused MLflow run {reused} (same settings and code; GBML_REUSE_RUNS=0 runs it again) -> {out}")
        return
    run_id = tracker.start_run("sine-study", {"dataset": "sine", "profile": params.get("profile", "unnamed"),
                                              "mlflow.source.git.commit": git_commit(root), RUN_KEY_TAG: key},
                               {"sine": dict(section(params, "sine"))}) if tracker else None
    try:
        metrics = run_sine_study(cfg, out, progress=not args.quiet)
    except BaseException:
        if tracker:
            tracker.finish(run_id, status="FAILED")
        raise
    if tracker:
        tracker.log_metrics(run_id, [(f"mse_{name}", v, step) for name, a in metrics["algorithms"].items()
                                     for step, v in enumerate(a["mse_mean"])])
        for name in SINE_OUTPUTS:
            if (out / name).is_file():
                tracker.log_artifact(run_id, out / name)
        tracker.finish(run_id)
        tracker.delete_other_runs(key, keep=run_id)
    finals = ", ".join(f"{a['label']} {a['mse_final']:.3f}" for a in metrics["algorithms"].values())
    print(f"sine study: query MSE after {cfg.eval_steps} steps: {finals} ({metrics['num_test_tasks']} test "
          f"tasks, {metrics['total_seconds']:.0f} s) -> {out}")


UNIT_FLAGS = ("algorithm", "ways", "shots", "seed", "arm", "variant", "sampling", "inner_iters")   # every study's unit flags (gbml study --help)


def cmd_study(args, params: dict, root: Path) -> None:
    """With a run's flags: measure that trained run into studies/<name>/<run>/. Without: gather
    every measured run of the grid into reports/studies/<name>/, recorded as one MLflow run."""
    import math

    from gbml.studies.config import study_config
    from gbml.studies.registry import STUDIES, Workspace, measurements_fingerprint
    from gbml.tracking import RUN_KEY_TAG, flatten, git_commit, run_key, source_fingerprint, tracker_for

    module, cfg = STUDIES[args.name], study_config(params, args.name)
    measured = root / "studies" / args.name
    unit = {flag: getattr(args, flag) for flag in module.UNIT_FLAGS}
    given = {flag for flag in UNIT_FLAGS if getattr(args, flag) is not None}
    if given:
        if not given <= set(unit) or None in unit.values():
            raise ConfigError(f"gbml study {args.name}: give all of {', '.join('--' + f for f in module.UNIT_FLAGS)} "
                              "(one unit to measure), or none (gather)")
        if "algorithm" in unit:   # a trained run of the grid's kind: checked against the data as `gbml train`
            unit = {"spec": run_spec(args, params)}
        done = module.measure_unit(params, cfg, unit, Workspace(root / "data", root / "runs"), measured)
        print(f"study {args.name}: measured -> {done}")
        return
    out = root / (args.out or f"reports/studies/{args.name}")
    tracker = None if args.no_mlflow else tracker_for(params, root, "studies")
    # One MLflow run per summary of the same measurements, config and code, whichever engine asks.
    key = run_key(args.name, dataclasses.asdict(cfg), measurements_fingerprint(measured, module.measured_files(params, cfg)),
                  source_fingerprint())
    outputs = module.summary_outputs(params, cfg)
    if tracker and (reused := tracker.reuse(key, out, names=outputs)):
        print(f"study {args.name}: reused MLflow run {reused} (same measurements, settings and code) -> {out}")
        return
    run_id = tracker.start_run(args.name, {"gbml.study": args.name, "profile": params.get("profile", "unnamed"),
                                           "mlflow.source.git.commit": git_commit(root), RUN_KEY_TAG: key},
                               {"studies": {args.name: dataclasses.asdict(cfg)}}) if tracker else None
    try:
        metrics = module.summarise(params, cfg, measured, out)
    except BaseException:
        if tracker:
            tracker.finish(run_id, status="FAILED")
        raise
    if tracker:
        values = {k: v for k, v in flatten({k: v for k, v in metrics.items() if k != "config"}).items()
                  if isinstance(v, (int, float)) and math.isfinite(v)}
        tracker.log_metrics(run_id, [(k, v, 0) for k, v in values.items()] + module.step_metrics(metrics))
        for name in outputs:
            if (out / name).is_file():
                tracker.log_artifact(run_id, out / name)
        tracker.finish(run_id)
        tracker.delete_other_runs(key, keep=run_id)
    print(f"study {args.name} -> {out}")


def cmd_schema(args, params: dict, root: Path) -> None:
    from gbml.schema import SCHEMA_PATH, render

    target, text = root / SCHEMA_PATH, render()
    if args.check:
        if not target.is_file() or target.read_text() != text:
            raise ConfigError(f"{target} is out of date with src/gbml/schema.py; run `gbml schema`")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    print(f"wrote {target}")


def cmd_check(args, params: dict, root: Path) -> None:
    """Validation itself runs in ``main`` before every command; reaching here means it passed."""
    runs = grid(params)
    print(f"{args.params}: valid ({len(runs)} training runs: "
          f"{', '.join(sorted({s.setting for s in runs}))} x {len({s.algorithm for s in runs})} algorithms)")


def cmd_profile(args, params: dict, root: Path) -> None:
    """Activate a profile by copying profiles/<name>.yaml over params.yaml (atomically)."""
    source = root / PROFILES_DIR / f"{args.name}.yaml"
    if not source.is_file():
        available = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ConfigError(f"no profile {args.name!r}; available: {', '.join(available)}")
    target = root / args.params
    known = {p.read_text() for p in (root / PROFILES_DIR).glob("*.yaml")}
    if target.is_file() and target.read_text() not in known and not args.force:
        raise ConfigError(f"{target} has edits that are in no profile; save it as {PROFILES_DIR}/<name>.yaml "
                          "first, or pass --force to overwrite it")
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    print(f"{target} now holds the {args.name!r} profile; `dvc repro --dry` lists its grid")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algorithm", required=True,
                   help=f"the algorithm ({', '.join(sorted(ALGORITHMS))}) or a variant (a params.yaml section "
                        "with 'variant_of: <algorithm>'); its hyperparameters are the section of that name")
    p.add_argument("--dataset", default="omniglot", choices=DATASETS, help="dataset (default: omniglot)")
    p.add_argument("--ways", type=int, required=True, help="N: classes per task")
    p.add_argument("--shots", type=int, required=True, help="K: labelled support examples per class")
    p.add_argument("--seed", type=int, required=True, help="training seed (initialisation and task stream)")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="gbml", description="Gradient-based meta-learning reproduction pipeline. Each subcommand is "
        "one stage of dvc.yaml; all settings come from params.yaml.")
    top.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    top.add_argument("--root", default=".", help="repository root holding data/, runs/, evals/, reports/")
    top.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download and verify the raw dataset, extract it to data/raw/<dataset>",
                       description="Try the mirror directory (params data.<dataset>.mirror, or the "
                       "GBML_OMNIGLOT_MIRROR environment variable) and then the upstream URL; verify "
                       "checksums before use; extract safely and atomically.")
    p.add_argument("--dataset", default="omniglot", choices=["omniglot"])
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("prepare", help="resize and split the raw images into data/prepared/<dataset>",
                       description="Omniglot: params prepare.omniglot (image_size, resample filter, split "
                       "sizes and seed, splits that get rotated copies as extra classes), from data/raw. "
                       "Mini-ImageNet: the Ravi & Larochelle split at 84x84 RGB from the source in params "
                       "data.miniimagenet (source: ilsvrc_tar | ravi_folder | pickle_cache, path: file, "
                       "folder or URL; or GBML_MINIIMAGENET_SOURCE / GBML_MINIIMAGENET_PATH).")
    p.add_argument("--dataset", default="omniglot", choices=["omniglot", "miniimagenet"])
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="meta-train one grid cell into runs/<name>",
                       description="Meta-train one run; hyperparameters come from the params section named "
                       "after the algorithm (plus its settings.<dataset>-<N>w<K>s overrides). Writes config, "
                       "checkpoint and learning curve to runs/<name>/ and logs them to MLflow.")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained run on meta-test tasks into evals/<name>",
                       description="Transductive and non-transductive accuracy on params evaluate.num_tasks "
                       "fixed meta-test tasks; per-task accuracies, mean and 95%% CI; logged to the run's MLflow run.")
    add_run_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="build reports/ from the metrics MLflow holds",
                       description="Tables (Markdown + CSV) beside the published numbers and a learning-curve "
                       "figure, from the MLflow runs recorded by the evaluations of the current grid.")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sine", help="the sine-wave regression case study into reports/sine",
                       description="Meta-train MAML, FOMAML and Reptile on random sine tasks (params section "
                       "sine), adapt each learned initialisation and a random one to fixed test tasks, and write "
                       "curves.csv, per_task.csv, metrics.json, adaptation.png (Nichol et al. Figure 1 style) and "
                       "mse_vs_steps.png; the study is one MLflow run in experiment gbml-<profile>-sine.")
    p.add_argument("--out", default="reports/sine", help="output directory (default: reports/sine)")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the study in MLflow")
    p.set_defaults(func=cmd_sine)

    p = sub.add_parser("study", help="one of the papers' own analyses into reports/studies/<name>",
                       description="A study (params section studies.<name>): write its CSVs, figures and "
                       "metrics.json to reports/studies/<name>/, and record it as one MLflow run (experiment "
                       "gbml-<profile>-studies, tag gbml.study). Each study is measured in units (one DVC stage "
                       "or Snakemake job each) into studies/<name>/<unit>/: given a unit's flags, the command "
                       "measures that unit only; without them it gathers every unit. Studies: feature_reuse "
                       "(Raghu et al. 2020: CKA/CCA of each layer before vs after the inner loop; accuracy with "
                       "the first k conv layers frozen at test time; a unit is a trained MAML/ANIL run: "
                       "--algorithm --ways --shots --seed), gradient_combinations (Nichol et al. 2018 section "
                       "6.2: meta-train with each combination of the inner-loop gradients g1..gk; a unit is an "
                       "arm and a seed: --arm g1_g2 --seed 0), minibatch_overlap (Nichol et al. section 6.3: first-order "
                       "MAML with a shared or a separate last minibatch, and Reptile, by cycling or with replacement, "
                       "against inner iterations; a unit: --variant foml_shared --sampling cycle --inner-iters 4 --seed 0), "
                       "taylor_terms (Nichol et al. section 5.1: MAML's, first-order MAML's and Reptile's k = 2 "
                       "updates against their Taylor expansion, per task and in expectation, over inner rates; a "
                       "unit is an initialisation: --seed 0), mamlpp_ablation (Antoniou et al. 2019, Figure 1 and "
                       "Table 1's ablation: MAML's and MAML++'s training across seeds, and MAML++'s switches one at a "
                       "time; a unit is an arm, a params section such as maml_msl, and a seed: --arm maml_msl --seed 0).")
    p.add_argument("name", choices=["feature_reuse", "gradient_combinations", "minibatch_overlap", "taylor_terms",
                                    "mamlpp_ablation"],
                   help="the study")
    p.add_argument("--algorithm", help="feature_reuse: measure this trained run (with --ways, --shots, --seed)")
    p.add_argument("--dataset", default="omniglot", choices=DATASETS, help="the run's dataset (default: omniglot)")
    p.add_argument("--ways", type=int, help="the run's N")
    p.add_argument("--shots", type=int, help="the run's K")
    p.add_argument("--seed", type=int, help="the run's training seed, or the unit's seed")
    p.add_argument("--arm", help="gradient_combinations: train this arm (one of studies.gradient_combinations.arms, "
                   "e.g. g1_g2 = the sum of the first two inner gradients) with --seed; mamlpp_ablation: train "
                   "and score this params section (one of studies.mamlpp_ablation.arms) with --seed")
    p.add_argument("--variant", choices=["reptile", "foml_shared", "foml_separate"],
                   help="minibatch_overlap: the unit's update and last minibatch")
    p.add_argument("--sampling", choices=["cycle", "replacement"], help="minibatch_overlap: how inner minibatches are drawn")
    p.add_argument("--inner-iters", type=int, help="minibatch_overlap: inner iterations (one of studies.minibatch_overlap.inner_iters)")
    p.add_argument("--out", help="summary directory (default: reports/studies/<name>)")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the summary in MLflow")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("schema", help="write params.yaml's JSON Schema to workflow/schemas/ (Snakemake validates with it)",
                       description="Renders the schema every command checks params.yaml against (built from the "
                       "algorithms' config dataclasses) to workflow/schemas/params.schema.yaml, the file the "
                       "Snakefile's validate() reads. --check exits 1 if that file is out of date.")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("check", help="validate params.yaml (every command does this first) and count the grid",
                       description="Checks params.yaml against the schema (unknown keys, types, ranges, allowed "
                       "values) and each grid cell's ways and shots against its dataset's classes and examples "
                       "per class; lists every problem with the key, the bad value and what is allowed.")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("profile", help="switch params.yaml to a profile in profiles/ (e.g. paper)",
                       description="Copies profiles/<name>.yaml over params.yaml. `cpu` is the committed "
                       "default; `paper` holds the published hyperparameters and full grid.")
    p.add_argument("name", help="profile name: a file profiles/<name>.yaml")
    p.add_argument("--force", action="store_true", help="overwrite a params.yaml that matches no profile")
    p.set_defaults(func=cmd_profile)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = {}
        if args.command not in ("profile", "schema"):
            from gbml.schema import validate_params
            params = load_params(root / args.params)
            validate_params(params, args.params)
        args.func(args, params, root)
    except GbmlError as err:   # a problem with the input or the environment; anything else is a bug
        fix = f" To fix: {how_to_run(err.fix)}." if err.fix else ""
        print(f"gbml {args.command}: error: {err}{fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
