"""Code dependencies: every DVC stage that runs a `gbml` command lists, in dvc.yaml, every
src/gbml module that command can import (so a change to any of them re-runs it, and DVC never
serves results of older code), workflow/code_deps.py writes those lists, and Snakemake's rules
depend on the same files."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow" / "code_deps.py"
spec = importlib.util.spec_from_file_location("code_deps", SCRIPT)
code_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_deps)

STAGES = code_deps.load_stages((REPO / "dvc.yaml").read_text())
GBML_STAGES = sorted(name for name, stage in STAGES.items() if code_deps.stage_commands(stage))


def listed_code(stage: str) -> set[str]:
    """The .py files a stage's code deps name (a directory dep names the files in it)."""
    deps = [d for d in STAGES[stage].get("deps") or [] if code_deps.is_code(d)]
    paths = [p for d in deps for p in ([REPO / d] if d.endswith(".py") else (REPO / d).rglob("*.py"))]
    return {str(p.relative_to(REPO)) for p in paths}


@pytest.mark.parametrize("stage", GBML_STAGES)
def test_each_stage_lists_every_module_its_gbml_command_can_import(stage):
    """Specified: a stage's deps cover the static import closure of the subcommand its cmd runs
    (cli.py, main()'s validation, cmd_<name>'s lazy imports and all they import in turn)."""
    missing, _ = code_deps.problems({stage: STAGES[stage]}).get(stage, ([], []))
    assert not missing, f"{stage} does not list {missing}; run `python workflow/code_deps.py --write`"


def test_every_stage_that_runs_code_is_checked():
    """Specified: stages are matched to subcommands from their cmd, and every stage runs one."""
    assert set(GBML_STAGES) == set(STAGES)
    assert code_deps.stage_commands(STAGES["train_miniimagenet"]) == ["train"]      # through `<<: *train`
    assert code_deps.stage_commands({"cmd": "gbml --params p.yaml --quiet check"}) == ["check"]


def test_the_check_passes_on_the_committed_tree():
    """Specified: `code_deps.py --check` exits 0: dvc.yaml lists each closure, as files, and no more."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_names_what_a_stage_misses_and_over_lists(tmp_path):
    """Specified: a stage that omits an imported module (train without evaluate.py, issue 17) or
    lists a code directory fails --check, which names both."""
    text = (REPO / "dvc.yaml").read_text().replace("      - src/gbml/evaluate.py\n      - src/gbml/factory.py\n",
                                                   "      - src/gbml/factory.py\n      - src/gbml/models\n", 1)
    stale = tmp_path / "dvc.yaml"
    stale.write_text(text)
    out = subprocess.run([sys.executable, str(SCRIPT), "--check", "--dvc-yaml", str(stale)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "train_omniglot:\n  missing: src/gbml/evaluate.py" in out.stdout
    assert "a directory (list its files): src/gbml/models" in out.stdout


def test_write_restores_the_code_deps_and_touches_nothing_else():
    """Specified: --write edits dvc.yaml as text: from a file with no code deps at all it writes
    every closure back (a missing `deps:` key included), keeping comments, anchors, merges and
    the hand-listed deps, line for line; a second write changes nothing."""
    committed = (REPO / "dvc.yaml").read_text()
    code_line = re.compile(r"^\s+- src/gbml/\S+\.py\n", re.M)
    stale = re.sub(r"^    deps:\n(?=    \S)", "", code_line.sub("", committed), flags=re.M)
    assert "  fetch:\n    cmd: gbml fetch --dataset omniglot\n    outs:" in stale
    written = code_deps.rewrite(stale)
    assert code_deps.problems(code_deps.load_stages(written)) == {}
    assert code_line.sub("", written) == code_line.sub("", committed)
    assert code_deps.rewrite(written) == written
    assert code_deps.rewrite(committed) == committed


# What the commands really import. A fresh interpreter imports the heavy third-party libraries
# once (only to save time), then forks one child per probe; each child runs `gbml.cli.main`
# either for real or ("imports") with its cmd_<name> replaced by one that executes only that
# function's import statements (all of them, whichever branch holds them). main() validates
# params.yaml first in both, as for a real run, and the child reports the gbml files loaded.
PROBE = """
import ast, inspect, json, os, sys, textwrap, traceback
import matplotlib.pyplot, mlflow, torch

def probe(mode, name, argv):
    import gbml.cli as cli
    if mode == "imports":
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cli, "cmd_" + name))))
        imports = ast.Module([n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], [])
        setattr(cli, "cmd_" + name, lambda args, params, root: exec(compile(imports, name, "exec"), {}))
    rc = cli.main(argv)
    return rc, sorted({m.__file__ for m in list(sys.modules.values()) if m.__name__.split(".")[0] == "gbml"})

results = []
for mode, name, *argv in json.loads(sys.argv[1]):
    read, write = os.pipe()
    if os.fork() == 0:      # the child reports through the pipe and never returns to this loop
        try:
            os.close(read)
            with os.fdopen(write, "w") as out:
                json.dump(probe(mode, name, argv), out)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as result:
        results.append(json.loads(result.read() or "[-1, []]"))
    os.wait()
print(json.dumps(results))
"""
RUN = ["--algorithm", "maml", "--ways", "5", "--shots", "1", "--seed", "0"]
ARGS = {"prepare": ["--dataset", "miniimagenet"], "train": RUN, "evaluate": RUN, "profile": ["cpu"],
        "study": ["feature_reuse"]}
PROBES = [("imports", sub, *ARGS.get(sub, [])) for sub in code_deps.subcommands()] + [
    ("run", "check"), ("run", "schema", "--check")]


@pytest.fixture(scope="module")
def imported():
    """(mode, subcommand) -> the src/gbml files loaded."""
    probes = [[mode, sub, "--params", "params.yaml", sub, *argv] for mode, sub, *argv in PROBES]
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(probes)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.splitlines()[-1])
    assert [rc for rc, _ in results] == [0] * len(probes), out.stderr[-3000:]
    return {(mode, sub): {str(Path(f).resolve().relative_to(REPO)) for f in files}
            for (mode, sub, *_), (_, files) in zip(PROBES, results)}


@pytest.mark.parametrize("mode, sub", [probe[:2] for probe in PROBES])
def test_the_static_closure_holds_every_module_the_command_imports(imported, mode, sub):
    """Specified: the closure is no undercount: every gbml module that running the command
    loads (main's validation, then cmd_<name>'s imports, or a real `gbml check` / `gbml schema
    --check`) is in the static closure of that subcommand."""
    loaded = imported[mode, sub]
    assert "src/gbml/cli.py" in loaded
    assert loaded <= set(code_deps.command_deps(sub)), sorted(loaded - set(code_deps.command_deps(sub)))


def test_training_does_not_load_or_depend_on_the_report_builder(imported):
    """Specified: importing gbml.report.figures (as training does) leaves gbml.report.build out."""
    assert "src/gbml/report/build.py" not in imported["imports", "train"]
    assert "src/gbml/report/build.py" not in code_deps.command_deps("train")
    assert "src/gbml/report/build.py" in code_deps.command_deps("report")


def test_snakemake_rules_depend_on_the_code_dvc_stages_list(tmp_path):
    """Specified: in Snakemake's plan, each job's src/gbml .py inputs are exactly its DVC
    stage's code deps (a rule is its stage, or `<rule>_<dataset>` for the matrix stages)."""
    for name in ("Snakefile", "dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    # reports/fidelity, reports/compute: committed benchmark results, inputs of the report step
    for name in ("src", "workflow", "reports/fidelity", "reports/compute"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--forceall", "--cores", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out.stdout + out.stderr, re.M)
    checked = set()
    for rule, block in jobs:
        if rule == "all":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        wildcards = dict(w.split("=") for w in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        stage = rule if rule in STAGES else f"{rule}_{wildcards['dataset']}"
        inputs = set(fields.get("input", "").split(", "))
        assert {f for f in inputs if code_deps.is_code(f)} == listed_code(stage), rule
        checked.add(stage)
    assert {"fetch", "prepare", "prepare_miniimagenet", "train_omniglot", "evaluate_omniglot", "sine",
            "report"} <= checked
