"""``gbml``: one subcommand per pipeline stage. Parses arguments and params.yaml, then calls the
library; no logic lives here. DVC stages (dvc.yaml) and, later, Snakemake rules call these."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

from gbml.cli_parser import parser
from gbml.config import RunSpec, grid, home_root, load_params, resolved_run_config, section
from gbml.errors import ConfigError, GbmlError
from gbml.steps import dvc_stage, how_to_run
from gbml.summaries import recorded
from gbml.io import write_atomic, write_text_atomic

PROFILES_DIR = "profiles"


def data_paths(root: Path, dataset: str) -> tuple[Path, Path]:
    return root / "data" / "raw" / dataset, root / "data" / "prepared" / dataset


def cmd_fetch(args, params: dict, root: Path) -> None:
    from gbml.data.fetch import OMNIGLOT_ARCHIVES, fetch_archives

    cfg = section(params, "data", args.dataset)
    mirror = os.environ.get("GBML_OMNIGLOT_MIRROR") or cfg.get("mirror")
    mirror_path = (home_root(root) / mirror).resolve() if mirror else None
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
        source = path if str(path).startswith(("http://", "https://")) else (home_root(root) / path).resolve()
        splits = {"reference": (root / cfg["splits"]).resolve()} if cfg.get("splits") else {}
        manifest = prepare_miniimagenet(kind, source, prepared, sha256=cfg.get("sha256") or None,
                                        timeout=float(cfg.get("timeout_s", 60)), **splits)
    else:
        from gbml.data.omniglot import prepare_omniglot

        manifest = prepare_omniglot(raw, prepared, **dict(section(params, "prepare", args.dataset)))
    sizes = ", ".join(f"{k}={v}" for k, v in manifest["split_sizes"].items())
    print(f"prepared {args.dataset}: {sizes} -> {prepared}")


def run_spec(args, params: dict) -> RunSpec:
    """The run the flags name, checked against the data like a grid cell (it need not be one)."""
    from gbml.validation import run_problems

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

    benchmarks = root / args.snakemake_benchmarks if args.snakemake_benchmarks else None
    out = build_report(params, root, root / args.out, benchmarks)
    print(f"report written to {out}")


SINE_OUTPUTS = ("metrics.json", "curves.csv", "per_task.csv", "adaptation.png", "mse_vs_steps.png")


def cmd_sine(args, params: dict, root: Path) -> None:
    from gbml.sine_config import SineStudyConfig
    from gbml.sine import run_sine_study
    import torch

    from gbml.run_keys import RUN_KEY_TAG, run_key, source_fingerprint
    from gbml.tracking import git_commit, tracker_for

    cfg = SineStudyConfig.from_dict(dict(section(params, "sine")))
    out = root / args.out
    tracker = None if args.no_mlflow else tracker_for(params, root, "sine")
    key = run_key(dict(section(params, "sine")), source_fingerprint(), torch.__version__)
    tags = {"dataset": "sine", "profile": params.get("profile", "unnamed"),
            "mlflow.source.git.commit": git_commit(root), RUN_KEY_TAG: key}
    logged = {"sine": dict(section(params, "sine"))}
    reused, metrics = recorded(tracker, key, out, SINE_OUTPUTS, "sine-study", tags, logged,
                               lambda: run_sine_study(cfg, out, progress=not args.quiet),
                               lambda m: [(f"mse_{name}", v, step) for name, a in m["algorithms"].items()
                                          for step, v in enumerate(a["mse_mean"])])
    if reused:
        print(f"sine study: reused MLflow run {reused} (same settings and code; GBML_REUSE_RUNS=0 runs it again)"
              f" -> {out}")
        return
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
    from gbml.run_keys import RUN_KEY_TAG, run_key, source_fingerprint
    from gbml.tracking import flatten, git_commit, tracker_for

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
    tags = {"gbml.study": args.name, "profile": params.get("profile", "unnamed"),
            "mlflow.source.git.commit": git_commit(root), RUN_KEY_TAG: key}

    def metric_rows(metrics: dict) -> list:
        values = {k: v for k, v in flatten({k: v for k, v in metrics.items() if k != "config"}).items()
                  if isinstance(v, (int, float)) and math.isfinite(v)}
        return [(k, v, 0) for k, v in values.items()] + module.step_metrics(metrics)
    reused, _ = recorded(tracker, key, out, outputs, args.name, tags, {"studies": {args.name: dataclasses.asdict(cfg)}},
                         lambda: module.summarise(params, cfg, measured, out), metric_rows)
    if reused:
        print(f"study {args.name}: reused MLflow run {reused} (same measurements, settings and code) -> {out}")
        return
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = {}
        if args.command not in ("profile", "schema"):
            from gbml.validation import validate_params
            params = load_params(root / args.params)
            validate_params(params, args.params)
        globals()[f"cmd_{args.command}"](args, params, root)   # one cmd_<name> per subcommand
    except GbmlError as err:   # a problem with the input or the environment; anything else is a bug
        fix = f" To fix: {how_to_run(err.fix)}." if err.fix else ""
        print(f"gbml {args.command}: error: {err}{fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
