"""How each pipeline step is run: its stage in dvc.yaml and the ``gbml`` command doing the same.

The workflow layer's names for the library's steps. The library names a step (``gbml.errors.Fix``:
train this run, prepare that dataset); only the CLI, through this module, knows what DVC calls
it, so renaming a stage touches dvc.yaml, the Snakefile's rules and this file, not the library."""

from __future__ import annotations

from gbml.config import RunSpec
from gbml.errors import Fix


def dvc_stage(spec: RunSpec, step: str) -> str:
    """The dvc.yaml stage that runs ``step`` (train/evaluate) for a grid cell, e.g.
    ``train_omniglot@maml-omniglot-5-1-0`` (DVC names matrix entries by their values)."""
    return f"{step}_{spec.dataset}@{spec.algorithm}-{spec.dataset}-{spec.ways}-{spec.shots}-{spec.seed}"


def how_to_run(fix: Fix) -> str:
    """What to run for an error's ``fix``: its DVC stage, and the ``gbml`` command doing the same."""
    force = "--force " if fix.force else ""
    if fix.step in ("train", "evaluate") and fix.unit is not None:
        spec = fix.unit
        flags = (f"--algorithm {spec.algorithm} --dataset {spec.dataset} --ways {spec.ways} --shots {spec.shots} "
                 f"--seed {spec.seed}")
        return f"`dvc repro {force}{dvc_stage(spec, fix.step)}` (or `gbml {fix.step} {flags}`)"
    if fix.step in ("train", "evaluate"):
        return f"`dvc repro {force}{fix.step}_<dataset>@<run>` for each run (or `gbml {fix.step}` with its flags)"
    if fix.step in ("fetch", "prepare"):
        stage = fix.step if fix.unit in (None, "omniglot") else f"{fix.step}_{fix.unit}"
        return f"`dvc repro {force}{stage}` (or `gbml {fix.step} --dataset {fix.unit or 'omniglot'}`)"
    if fix.step == "study":   # its units' flags: `gbml study --help`
        return f"`dvc repro` (or `gbml study {fix.unit}` with each unit's flags, then without)"
    return f"`dvc repro` (or `gbml {fix.step}`)"
