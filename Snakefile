# The Snakemake workflow: the same pipeline as dvc.yaml, from the same params.yaml, calling the
# same `gbml` subcommands. Locally: `snakemake --cores N` (workflow/profiles/default is picked up
# automatically); on a SLURM cluster: `snakemake --workflow-profile workflow/profiles/slurm`.
# `snakemake --report report.html` bundles the report's tables and figures with captions.
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "params.yaml"

# The rules gbml itself enforces (rendered from src/gbml/schema.py by `gbml schema`).
validate(config, "workflow/schemas/params.schema.yaml")
# ...and what a schema cannot say (each cell's ways and shots against its dataset's classes and
# examples per class), with gbml's messages, before any job is scheduled.
from gbml.validation import validate_params
validate_params(config)

report: "workflow/report/workflow.rst"

# Light steps run on the submitting host when a cluster executor is used; every training and
# evaluation job (and the sine study, which trains) goes to the scheduler.
localrules: all, fetch, study_feature_reuse, study_gradient_combinations, study_minibatch_overlap, study_taylor_terms, study_mamlpp_ablation, report

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
