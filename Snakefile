# The Snakemake workflow is not built yet: it comes with issue 6 (same params.yaml, same `gbml`
# subcommands as dvc.yaml, local and SLURM profiles). Until then this file refuses to run rather
# than pretend to do something. Use `dvc repro` (see README.md).
import sys

sys.exit("gbml: the Snakemake workflow is not implemented yet (issue 6); run `dvc repro` instead.")
