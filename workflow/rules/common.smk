# Shared by every rule: the grid (expanded by gbml itself, so both engines run the same cells),
# the per-job resources from params.yaml's `resources` section, and the code each step depends
# on (the same files dvc.yaml lists as deps, so an edit re-runs the same steps in both engines).
import json
import os
from pathlib import Path

from gbml.config import DATASETS, RunSpec, grid, resolved_run_config, section

RUNS = {spec.name: spec for spec in grid(config)}
RUN = "{algorithm}-{dataset}-{ways}w{shots}s-seed{seed}"

wildcard_constraints:
    algorithm="[A-Za-z0-9_]+",
    dataset="|".join(DATASETS),
    ways="[0-9]+",
    shots="[0-9]+",
    seed="[0-9]+",


def code(*paths):
    """The Python files under ``paths`` (files or directories), for a rule's input."""
    files = []
    for path in map(Path, paths):
        files += sorted(map(str, path.rglob("*.py"))) if path.is_dir() else [str(path)]
    return files


def spec_of(wildcards):
    return RunSpec(wildcards.algorithm, wildcards.dataset, int(wildcards.ways), int(wildcards.shots),
                   int(wildcards.seed))


def run_config(wildcards):
    """The run's resolved configuration: Snakemake re-runs the job when it changes (its params trigger)."""
    return json.dumps(resolved_run_config(config, spec_of(wildcards)), sort_keys=True)


def job_threads():
    """training.threads (torch's intra-op threads, the same in both engines); 0 = all cores."""
    return int(section(config, "training", "threads")) or workflow.cores


def job_resources(kind):
    """Scheduler requests for one job kind (params.yaml `resources`); the SLURM executor maps
    mem_mb -> --mem, runtime -> --time, gpu -> --gpus, slurm_partition/_account -> -p/-A."""
    res = dict(section(config, "resources", kind))
    gpus = res.pop("gpus", 0)
    if gpus:
        res["gpu"] = gpus
    slurm = section(config, "resources", "slurm")
    for key in ("partition", "account"):
        value = slurm.get(key) or os.environ.get(f"GBML_SLURM_{key.upper()}")
        if value:
            res[f"slurm_{key}"] = value
    return res


def run_outputs(root):
    return [f"{root}/{name}" for name in RUNS]


def all_targets():
    """The report, and every dataset prepared (as `dvc repro` does, whether or not the grid uses it)."""
    return ["reports/README.md"] + [f"data/prepared/{dataset}" for dataset in DATASETS]
