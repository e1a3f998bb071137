"""The code each DVC stage depends on: the gbml modules its `gbml <subcommand>` imports.

dvc.yaml lists, for every stage whose command runs ``gbml``, each ``src/gbml/**.py`` file that
the subcommand can import, so a change to any of them re-runs the stage (and only such a
change: report code does not retrain). This script computes those lists by static analysis of
the sources and keeps dvc.yaml's in step with them; Snakemake reads the same lists from
dvc.yaml (workflow/rules/common.smk).

The import closure of ``gbml <sub>`` is ``src/gbml/cli.py`` plus everything reachable from
cli.py's imports, except those inside the other subcommands' ``cmd_<name>`` functions (so
``main()``'s params validation, run before every command, counts for all). From each gbml
module reached, every import is followed, inside functions too (a conservative over-count), as
is every parent package's ``__init__.py`` (importing ``gbml.a.b`` runs ``gbml/a/__init__.py``).
``from gbml.pkg import name`` reaches ``gbml/pkg/name.py`` when that is a submodule. Imports the
AST cannot see
(``importlib.import_module``) are not found; tests/test_code_deps.py checks the closure against
what running the commands imports.

A stage's subcommand is read from its ``cmd``: the first word after ``gbml`` that names a
``cmd_<name>`` function of cli.py. Its deps that this script owns are the ``src/gbml`` ``.py``
files and ``src/gbml`` package directories; every other dep (data, ``src/gbml/reference/...``)
is listed by hand and left alone.

Stdlib and pyyaml only, and gbml is never imported: it runs before gbml is installed.

    python workflow/code_deps.py            print each stage's code deps
    python workflow/code_deps.py --check    exit 1 listing what dvc.yaml misses or over-lists
    python workflow/code_deps.py --write    rewrite dvc.yaml's code deps in place
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "gbml"
CLI = f"{PACKAGE}.cli"


# --- modules and their imports -------------------------------------------------------------------

def module_file(name: str) -> Path | None:
    """The source file of module ``name`` under src/, or None (not gbml's, or no such module)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def is_gbml(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def imports_in(nodes, module: str) -> set[str]:
    """The gbml modules that the import statements anywhere under ``nodes`` load, for code in
    ``module``."""
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:      # relative: `from .x import y` in package p is p.x
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}"))
    return {name for name in found if is_gbml(name)}


@cache
def parse(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(), filename=str(module_file(module)))


@cache
def direct_imports(name: str) -> frozenset[str]:
    """What importing module ``name`` may load: its parent packages, then its imports."""
    if module_file(name) is None:
        return frozenset()
    parents = [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]
    return frozenset(parents + sorted(imports_in(parse(name).body, name)))


def closure(start: set[str]) -> set[str]:
    """Every module reachable from ``start``, following ``direct_imports``."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(direct_imports(name))
    return seen


def subcommands() -> list[str]:
    """The subcommands of cli.py: its ``cmd_<name>`` functions."""
    return [n.name.removeprefix("cmd_") for n in parse(CLI).body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")]


def command_deps(sub: str) -> list[str]:
    """The src/gbml files that ``gbml <sub>`` may import, as repository-relative paths."""
    if sub not in subcommands():
        raise SystemExit(f"code_deps: src/gbml/cli.py has no cmd_{sub} for `gbml {sub}`")
    # cli.py's own imports, less those of the other subcommands' (lazy, function-level) imports.
    other = lambda n: isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_") and n.name != f"cmd_{sub}"
    start = imports_in([n for n in parse(CLI).body if not other(n)], CLI) | {PACKAGE}   # gbml.cli's parent
    files = {module_file(m) for m in closure(start)} | {module_file(CLI)}
    return sorted(str(f.relative_to(ROOT)) for f in files if f is not None)


# --- dvc.yaml ------------------------------------------------------------------------------------

def stage_commands(stage: dict) -> list[str]:
    """The gbml subcommands a stage's ``cmd`` (a string or a list of them) runs."""
    cmds = stage.get("cmd", [])
    words = " ".join([cmds] if isinstance(cmds, str) else cmds).split()
    subs = []
    for i, word in enumerate(words):
        if word == PACKAGE:     # options such as `--params FILE` may come before the subcommand
            sub = next((w for w in words[i + 1:] if w in subcommands()), None)
            if sub is None:
                raise SystemExit(f"code_deps: no cmd_<name> in src/gbml/cli.py for the command {cmds!r}")
            subs.append(sub)
    return subs


def is_code(dep: str) -> bool:
    """A dep this script owns: a src/gbml .py file or package directory (not data under it)."""
    path = ROOT / dep
    inside = dep.rstrip("/") == f"src/{PACKAGE}" or dep.startswith(f"src/{PACKAGE}/")
    return inside and (dep.endswith(".py") or (path / "__init__.py").is_file())


def expected_deps(stages: dict) -> dict[str, list[str]]:
    """stage -> the code deps it should list, for every stage that runs gbml."""
    return {name: sorted({f for sub in stage_commands(stage) for f in command_deps(sub)})
            for name, stage in stages.items() if stage_commands(stage)}


def problems(stages: dict) -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (closure files its deps do not cover, code deps it lists beyond the closure).
    A directory dep covers the files in it (DVC hashes all of it) but is itself over-listed."""
    found = {}
    for name, files in expected_deps(stages).items():
        listed = [d for d in stages[name].get("deps") or [] if is_code(d)]
        missing = [f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in listed)]
        extra = [d for d in listed if d not in files]
        if missing or extra:
            found[name] = (missing, extra)
    return found


def load_stages(text: str) -> dict:
    return yaml.safe_load(text)["stages"]


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def blank(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def item(line: str) -> str | None:
    """The value of a one-line list item ``- value  # comment``, else None."""
    text = line.strip()
    return text[2:].split(" #")[0].strip().strip("'\"") if text.startswith("- ") else None


def rewrite(text: str) -> str:
    """dvc.yaml's ``text`` with each gbml stage's code deps replaced, as text, by its closure
    (sorted, where the first code dep was, else after the other deps); comments, anchors and
    every other line are kept. A stage with no ``deps:`` key of its own that inherits one through
    a YAML merge (``<<: *train``) is left to the stage it inherits from."""
    stages = load_stages(text)
    lines = text.splitlines(keepends=True)
    top = next(i for i, line in enumerate(lines) if line.rstrip() == "stages:")
    stage_indent = indent(next(line for line in lines[top + 1:] if not blank(line)))
    for name, files in expected_deps(stages).items():
        start = next(i for i, line in enumerate(lines) if re.match(rf" {{{stage_indent}}}{re.escape(name)}:", line))
        key_indent = indent(next(line for line in lines[start + 1:] if not blank(line)))
        end = next((i for i in range(start + 1, len(lines)) if not blank(lines[i]) and indent(lines[i]) < key_indent),
                   len(lines))
        keys = [i for i in range(start + 1, end)
                if indent(lines[i]) == key_indent and not blank(lines[i]) and item(lines[i]) is None] + [end]
        deps = next((i for i in keys if lines[i].split("#")[0].strip() == "deps:"), None)
        if deps is None and stages[name].get("deps"):
            continue        # inherited through a merge key (checked below)
        if deps is None:    # no deps yet: a new `deps:` key after `cmd:`
            cmd = next(i for i in keys if lines[i].lstrip().startswith("cmd:"))
            at = keys[keys.index(cmd) + 1]
            lines[at:at] = [" " * key_indent + "deps:\n"] + [" " * (key_indent + 2) + f"- {f}\n" for f in files]
            continue
        region = lines[deps + 1:keys[keys.index(deps) + 1]]
        items = [k for k, line in enumerate(region) if item(line) is not None]
        owned = [k for k in items if is_code(item(region[k]))]
        at = owned[0] if owned else (items[-1] + 1 if items else 0)
        new = [" " * (indent(region[items[0]]) if items else key_indent + 2) + f"- {f}\n" for f in files]
        kept = [line for k, line in enumerate(region) if k not in owned]
        at -= sum(1 for k in owned if k < at)
        lines[deps + 1:deps + 1 + len(region)] = kept[:at] + new + kept[at:]
    result = "".join(lines)
    left = problems(load_stages(result))
    if left:
        raise SystemExit(f"code_deps: the rewrite left stages out of step (give each its own deps: key): {left}")
    return result


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = cli.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml's code deps differ from the closures")
    action.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps in place")
    cli.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml", help="default: the repository's dvc.yaml")
    args = cli.parse_args(argv)
    text = args.dvc_yaml.read_text()
    if args.write:
        new = rewrite(text)
        if new != text:
            tmp = args.dvc_yaml.with_name(args.dvc_yaml.name + ".tmp")
            tmp.write_text(new)
            tmp.replace(args.dvc_yaml)
        print(f"{args.dvc_yaml}: code deps {'rewritten' if new != text else 'already up to date'}")
        return 0
    if args.check:
        found = problems(load_stages(text))
        for name, (missing, extra) in found.items():
            print(f"{name}:", *(f"  missing: {f}" for f in missing), sep="\n")
            for dep in extra:
                print(f"  not imported: {dep}" if dep.endswith(".py") else f"  a directory (list its files): {dep}")
        if found:
            print(f"{args.dvc_yaml} is out of step with the imports; run `python workflow/code_deps.py --write`")
        return 1 if found else 0
    for name, files in expected_deps(load_stages(text)).items():
        print(f"{name} ({', '.join(stage_commands(load_stages(text)[name]))}): {len(files)} files",
              *(f"  {f}" for f in files), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
