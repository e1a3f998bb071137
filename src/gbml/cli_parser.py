"""The ``gbml`` command line's arguments: one subcommand per pipeline stage, each with the help
that explains it. ``gbml.cli`` runs the subcommand ``cmd_<name>`` for ``args.command``."""

from __future__ import annotations

import argparse

from gbml.config import ALGORITHMS, DATASETS


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

    p = sub.add_parser("prepare", help="resize and split the raw images into data/prepared/<dataset>",
                       description="Omniglot: params prepare.omniglot (image_size, resample filter, split "
                       "sizes and seed, splits that get rotated copies as extra classes), from data/raw. "
                       "Mini-ImageNet: the Ravi & Larochelle split at 84x84 RGB from the source in params "
                       "data.miniimagenet (source: ilsvrc_tar | ravi_folder | pickle_cache, path: file, "
                       "folder or URL; or GBML_MINIIMAGENET_SOURCE / GBML_MINIIMAGENET_PATH).")
    p.add_argument("--dataset", default="omniglot", choices=["omniglot", "miniimagenet"])

    p = sub.add_parser("train", help="meta-train one grid cell into runs/<name>",
                       description="Meta-train one run; hyperparameters come from the params section named "
                       "after the algorithm (plus its settings.<dataset>-<N>w<K>s overrides). Writes config, "
                       "checkpoint and learning curve to runs/<name>/ and logs them to MLflow.")
    add_run_arguments(p)

    p = sub.add_parser("evaluate", help="score a trained run on meta-test tasks into evals/<name>",
                       description="Transductive and non-transductive accuracy on params evaluate.num_tasks "
                       "fixed meta-test tasks; per-task accuracies, mean and 95%% CI; logged to the run's MLflow run.")
    add_run_arguments(p)

    p = sub.add_parser("report", help="build reports/ from the metrics MLflow holds",
                       description="Tables (Markdown + CSV) beside the published numbers and a learning-curve "
                       "figure, from the MLflow runs recorded by the evaluations of the current grid.")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.add_argument("--snakemake-benchmarks", metavar="DIR",
                   help="Snakemake's benchmark files (DIR/train/<run>.tsv, DIR/evaluate/<run>.tsv; the Snakefile "
                        "passes logs/benchmarks): each run's job wall time and max RSS beside gbml's own figures")

    p = sub.add_parser("sine", help="the sine-wave regression case study into reports/sine",
                       description="Meta-train MAML, FOMAML and Reptile on random sine tasks (params section "
                       "sine), adapt each learned initialisation and a random one to fixed test tasks, and write "
                       "curves.csv, per_task.csv, metrics.json, adaptation.png (Nichol et al. Figure 1 style) and "
                       "mse_vs_steps.png; the study is one MLflow run in experiment gbml-<profile>-sine.")
    p.add_argument("--out", default="reports/sine", help="output directory (default: reports/sine)")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the study in MLflow")

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

    p = sub.add_parser("schema", help="write params.yaml's JSON Schema to workflow/schemas/ (Snakemake validates with it)",
                       description="Renders the schema every command checks params.yaml against (built from the "
                       "algorithms' config dataclasses) to workflow/schemas/params.schema.yaml, the file the "
                       "Snakefile's validate() reads. --check exits 1 if that file is out of date.")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")

    p = sub.add_parser("check", help="validate params.yaml (every command does this first) and count the grid",
                       description="Checks params.yaml against the schema (unknown keys, types, ranges, allowed "
                       "values) and each grid cell's ways and shots against its dataset's classes and examples "
                       "per class; lists every problem with the key, the bad value and what is allowed.")

    p = sub.add_parser("profile", help="switch params.yaml to a profile in profiles/ (e.g. paper)",
                       description="Copies profiles/<name>.yaml over params.yaml. `cpu` is the committed "
                       "default; `paper` holds the published hyperparameters and full grid.")
    p.add_argument("name", help="profile name: a file profiles/<name>.yaml")
    p.add_argument("--force", action="store_true", help="overwrite a params.yaml that matches no profile")
    return top
