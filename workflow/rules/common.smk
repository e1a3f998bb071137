# Shared by every rule: the grid (expanded by gbml itself, so both engines run the same cells),
# what each step depends on (read from dvc.yaml: one list of deps and params for both engines),
# and the per-job threads and resources from params.yaml's `resources` section.
import json
import os
import re
from pathlib import Path

import yaml

from gbml.config import DATASETS, grid, section
from gbml.studies.config import study_config
from gbml.studies.registry import STUDIES

RUNS = {spec.name: spec for spec in grid(config)}
RUN = "{algorithm}-{dataset}-{ways}w{shots}s-seed{seed}"
DVC_STAGES = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
PRODUCTS = ("data/", "runs/", "evals/", "studies/", "reports/")   # deps that are other steps' outputs

wildcard_constraints:
    algorithm="[A-Za-z0-9_]+",
    dataset="|".join(DATASETS),
    ways="[0-9]+",
    shots="[0-9]+",
    seed="[0-9]+",
    arm="[A-Za-z0-9_]+",   # gradient_combinations: g1_g2...; mamlpp_ablation: a params section
    variant="reptile|foml_shared|foml_separate",
    sampling="cycle|replacement",
    inner_iters="[0-9]+",


def stage_inputs(stage, wildcards=None):
    """The deps and params that dvc.yaml lists for ``stage``, as Snakemake inputs: another step's
    output as is (``runs``, ``evals``: every run or evaluation of the grid; ``studies/<name>``: the
    study's per-run measurements), a source directory as its files,
    and each params key as its stamp file. ``${item.x}`` takes the job's wildcard ``x``, ``${a.b}``
    the value of params.yaml's ``a.b``."""
    item = {key: getattr(wildcards, key) for key in wildcards.keys()} if wildcards else {}

    def expand_item(text):   # ${item.x}: the job's wildcard; ${a.b}: params.yaml's value, as DVC does
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(item[m.group(1)[5:]] if m.group(1).startswith("item.")
                                                       else section(config, *m.group(1).split("."))), text)
    inputs = []
    for dep in map(expand_item, DVC_STAGES[stage].get("deps", [])):
        if dep in ("runs", "evals"):
            inputs += run_outputs(dep)
        elif dep.startswith("studies/") and dep.count("/") == 1:
            inputs += study_outputs(dep.split("/")[1])
        elif dep.startswith(PRODUCTS) or not Path(dep).is_dir():
            inputs.append(dep)
        else:
            inputs += sorted(str(p) for p in Path(dep).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return inputs + params_stamps(*map(expand_item, DVC_STAGES[stage].get("params", [])))


# Snakemake decides what is out of date by modification times (its params trigger needs metadata
# that outputs made by DVC, or committed, do not have). So each params.yaml key a step reads
# becomes a stamp file, rewritten only when its value changes: a step whose params changed has an
# input newer than its output and re-runs, as under DVC.
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


def study_outputs(study):
    """The measured units a study gathers (its module's ``unit_names``: a grid run each for
    feature_reuse, an arm and seed each for gradient_combinations)."""
    return [f"studies/{study}/{name}" for name in STUDIES[study].unit_names(config, study_config(config, study))]


def study_summary(study, figures):
    """The summary files ``gbml study <study>`` writes under reports/studies/<study>/ in this
    profile, the figures among them (name -> caption file) marked for Snakemake's report."""
    names = STUDIES[study].summary_outputs(config, study_config(config, study))
    return [report(f"reports/studies/{study}/{n}", caption=f"../report/{figures[n]}", category=study.replace("_", " ").capitalize())
            if n in figures else f"reports/studies/{study}/{n}" for n in names]


def all_targets():
    """What `dvc repro` builds: every cell of the grid trained and evaluated, the report, and
    every dataset prepared (whether or not the grid uses it)."""
    return (run_outputs("runs") + run_outputs("evals") + ["reports/README.md"]
            + [f"data/prepared/{dataset}" for dataset in DATASETS])
