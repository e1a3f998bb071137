"""The report's protocol tables: for each algorithm of the grid, what the code behind its
published numbers did and what this run does, setting by setting, marked = or ≠.

The references' values and their sources (file:line at a commit) are data,
``src/gbml/reference/protocols.yaml``; this run's come from the resolved run config of each cell.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from gbml.config import base_algorithm, grid, resolved_run_config
from gbml.data.omniglot import NUM_CHARACTERS
from gbml.data.prepared import view_sizes
from gbml.models.reference import switch_defaults

PROTOCOLS = Path(__file__).resolve().parents[1] / "reference" / "protocols.yaml"
MISSING = object()


def load_protocols(path: Path = PROTOCOLS) -> dict:
    return yaml.safe_load(Path(path).read_text())


def reference_value(reference, setting: str, shots: int):
    """The reference's value for a cell: a per-prefix mapping resolved by the longest prefix of
    ``setting`` it holds (MISSING if none), "K" standing for the cell's shots."""
    if isinstance(reference, dict):
        prefixes = [k for k in reference if setting.startswith(k)]
        if not prefixes:
            return MISSING
        reference = reference[max(prefixes, key=len)]
    return shots if reference == "K" else reference


def run_values(params: dict, spec) -> dict:
    """This run's settings as dotted keys: its resolved config, the dataset's prepare section,
    and for Omniglot (under the algorithm's data view) its split sizes, whether test classes are
    rotated and whether pixels are inverted."""
    cfg = resolved_run_config(params, spec)
    cfg["model"] = {**switch_defaults(), **cfg["model"]}    # a switch the params leave out has its default
    values = {f"{part}.{k}": v for part in ("algorithm", "model", "training", "evaluate") for k, v in cfg[part].items()}
    prepare = (params.get("prepare") or {}).get(spec.dataset) or {}
    values.update({f"prepare.{k}": v for k, v in prepare.items()})
    if spec.dataset == "omniglot":
        view = cfg.get("data_view") or {}
        test = NUM_CHARACTERS - prepare["num_train"] - prepare["num_val"]
        train, val = view_sizes(prepare["num_train"], prepare["num_val"], view)
        values["data.split"] = f"{train}/{val}/{test}"
        values["data.rotated_test"] = "test" in view.get("rotate_splits", prepare.get("rotate_splits", []))
        values["data.inverted"] = bool(view.get("invert", False))
    return values


def same(a, b) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-6) if numbers else a == b


def show(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def per_cell(values: dict[str, object]) -> str:
    """One value if every cell has it, else per dataset where its cells agree, else per cell."""
    shown = {cell: show(v) for cell, v in values.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    parts = []
    for dataset in dict.fromkeys(cell.split("-")[0] for cell in shown):
        mine = {cell: v for cell, v in shown.items() if cell.split("-")[0] == dataset}
        if len(set(mine.values())) == 1:
            parts.append(f"{dataset}: {next(iter(mine.values()))}")
        else:
            parts += [f"{cell}: {v}" for cell, v in mine.items()]
    return "; ".join(parts)


def protocol_table(protocol: dict, params: dict, specs: list) -> list[str]:
    """Markdown rows comparing one algorithm's cells with its reference."""
    cells = {s.setting: s for s in specs}
    values = {setting: run_values(params, spec) for setting, spec in cells.items()}
    lines = ["| setting | reference | source | this run | |", "|---|---|---|---|---|"]
    for row in protocol["rows"]:
        ref, this = {}, {}
        for setting, spec in cells.items():
            r = reference_value(row["reference"], setting, spec.shots)
            if r is not MISSING:
                ref[setting] = r
                this[setting] = row["this"] if "this" in row else values[setting][row["key"]]
        if not ref:
            continue
        match = "=" if "this" not in row and all(same(ref[c], this[c]) for c in ref) else "≠"
        if row["reference"] == "K":     # K queries per class: say so rather than list the shots
            ref = dict.fromkeys(ref, "K")
            this = {c: "K" if same(v, cells[c].shots) else v for c, v in this.items()}
        lines.append(f"| {row['what']} | {per_cell(ref)} | {row['cite']} | {per_cell(this)} | {match} |")
    return lines


def protocols_section(params: dict, protocols: dict | None = None) -> str:
    """One table per algorithm of the grid (variants are their own experiments: none)."""
    protocols = protocols or load_protocols()
    specs = [s for s in grid(params) if s.seed == grid(params)[0].seed]
    lines = ["## Protocols: the authors' code and this run", "",
             "What the code behind each published number did (source: repository@commit, file:line) and what "
             "this profile's runs do, setting by setting; = where they agree. `gbml profile paper` follows the "
             "references; the CPU profile departs from them to fit its budget.", ""]
    for algorithm in dict.fromkeys(s.algorithm for s in specs):
        if algorithm not in protocols or base_algorithm(params, algorithm) != algorithm:
            continue
        protocol = protocols[algorithm]
        lines += [f"### {algorithm} ({protocol['source']})", "",
                  *protocol_table(protocol, params, [s for s in specs if s.algorithm == algorithm]), ""]
    return "\n".join(lines)
