# Shared by every rule: the grid (expanded by gbml itself, so both engines run the same cells),
# the per-job resources from params.yaml's `resources` section, and the code each step depends
# on (the same files dvc.yaml lists as deps, so an edit re-runs the same steps in both engines).
import json
import os
from pathlib import Path

from gbml.config import DATASETS, grid, section

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


# Snakemake decides what is out of date by modification times (its params trigger needs metadata
# that outputs made by DVC, or committed, do not have). So each params.yaml section a step reads
# (the same list as in dvc.yaml) becomes a stamp file, rewritten only when the section changes:
# a step whose sections changed is newer-input-than-output and re-runs, as under DVC.
STAMPS = Path(".snakemake/gbml-params")


def params_stamps(*keys):
    """Stamp files for the dotted params keys ``keys``, e.g. ``"model.omniglot"``."""
    STAMPS.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in keys:
        path = STAMPS / f"{key}.json"
        text = json.dumps(section(config, *key.split(".")), sort_keys=True)
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        paths.append(str(path))
    return paths


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
