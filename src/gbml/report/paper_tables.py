"""The papers' own result tables, filled with our numbers beside the published ones.

Each table keeps its paper's layout: rows are the paper's methods, columns its settings. A cell
holds ours (mean over seeds, ± in the same sense as the paper's ± for that row), the published
value, the difference, and whether the published value lies within ours ± that interval. Cells
the current grid did not run say "not run" -- nothing is left out silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

CI_OVER_TASKS = "95% CI over tasks"
STD_OVER_SEEDS = "std over seeds"
# The MAML++ rows: our published_results.csv does not record what their ± is; ours then uses
# the std over seeds, the usual reading for a multi-run mean.
AS_PRINTED = "as printed (meaning not recorded)"
DATASET_NAMES = {"omniglot": "Omniglot", "miniimagenet": "Mini-ImageNet"}


@dataclass(frozen=True)
class Row:
    label: str                      # the paper's row name
    algorithm: str                  # our grid name
    mode: str                       # our evaluation mode (transductive / non_transductive)
    variants: tuple[str, ...] = ("",)   # published_results.csv variants, first match wins
    grid_name: str | None = ""      # the grid entry giving ours ("": algorithm; None: none can)
    plus_minus: str = STD_OVER_SEEDS    # what the paper's ± means for this row


@dataclass(frozen=True)
class Column:
    dataset: str
    ways: int
    shots: int

    @property
    def label(self) -> str:
        return f"{DATASET_NAMES.get(self.dataset, self.dataset)} {self.ways}-way {self.shots}-shot"


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    source: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    note: str = ""


def _cols(dataset: str, *settings: tuple[int, int]) -> tuple[Column, ...]:
    return tuple(Column(dataset, w, k) for w, k in settings)


_NICHOL_ROWS = (
    # Finn et al.'s MAML numbers (quoted by Nichol et al.) carry a 95% CI over tasks.
    Row("MAML + Transduction", "maml", "transductive", plus_minus=CI_OVER_TASKS),
    Row("1st-order MAML + Transduction", "fomaml", "transductive", plus_minus=CI_OVER_TASKS),
    Row("Reptile", "reptile", "non_transductive"),
    Row("Reptile + Transduction", "reptile", "transductive"),
)
_ANTONIOU_COLS = _cols("omniglot", (20, 1), (20, 5)) + _cols("miniimagenet", (5, 1), (5, 5))

PAPER_TABLES = (
    PaperTable("reptile_table1", "Nichol et al. 2018, Table 1: Omniglot", "nichol2018_table1",
               _cols("omniglot", (5, 1), (5, 5), (20, 1), (20, 5)), _NICHOL_ROWS),
    PaperTable("reptile_table2", "Nichol et al. 2018, Table 2: Mini-ImageNet", "nichol2018_table2",
               _cols("miniimagenet", (5, 1), (5, 5)), _NICHOL_ROWS),
    PaperTable(
        "mamlpp", "Antoniou et al. 2019 (MAML++): results and ablation", "antoniou2019", _ANTONIOU_COLS,
        (Row("MAML (local replication)", "maml", "transductive", ("local replication", "local reproduction"),
             plus_minus=AS_PRINTED),
         # The single-switch ablations: MAML++ variants with one switch on (params sections
         # maml_msl, maml_lslr, maml_bnwb_bnrs with variant_of: mamlpp; see profiles/paper.yaml).
         Row("MAML + MSL", "maml", "transductive", ("+MSL",), grid_name="maml_msl", plus_minus=AS_PRINTED),
         Row("MAML + LSLR", "maml", "transductive", ("+LSLR",), grid_name="maml_lslr", plus_minus=AS_PRINTED),
         Row("MAML + BNWB + BNRS", "maml", "transductive", ("+BNWB+BNRS",), grid_name="maml_bnwb_bnrs",
             plus_minus=AS_PRINTED),
         Row("MAML++", "mamlpp", "transductive", ("", "5 inner steps"), plus_minus=AS_PRINTED),
         *(Row(f"MAML++, {k} inner step{'s' if k > 1 else ''}", "mamlpp", "transductive",
               (f"{k} inner step{'s' if k > 1 else ''}",), grid_name=None, plus_minus=AS_PRINTED) for k in (1, 2, 3, 4))),
        note="Ablation rows are filled by the grid entries maml_msl, maml_lslr and maml_bnwb_bnrs "
             "(MAML++ with one switch on; defined in the paper profile); the MAML++ ablation study "
             "(section below; `gbml profile studies`) runs them at a CPU scale. The inner-step rows are "
             "listed with the published value only. Ours for MAML++ is the top-N checkpoint "
             "ensemble with the profile's inner steps."),
    PaperTable("anil", "Raghu et al. 2020 (ANIL), Table 2", "raghu2020_table2", _ANTONIOU_COLS,
               (Row("MAML", "maml", "transductive"), Row("ANIL", "anil", "transductive"))),
)


def published_value(pub: pd.DataFrame, table: PaperTable, row: Row, col: Column) -> pd.Series | None:
    """The table's published number for a cell, or None where the paper has none."""
    match = pub[(pub.source == table.source) & (pub.algorithm == row.algorithm) & (pub.dataset == col.dataset)
                & (pub.ways == col.ways) & (pub.shots == col.shots)
                & (pub.transductive == (row.mode == "transductive"))]
    for variant in row.variants:
        hit = match[match.variant == variant]
        if not hit.empty:
            return hit.iloc[0]
    return None


def ours_value(summary: pd.DataFrame, row: Row, col: Column) -> pd.Series | None:
    if row.grid_name is None:
        return None
    hit = summary[(summary.algorithm == (row.grid_name or row.algorithm)) & (summary.dataset == col.dataset)
                  & (summary.ways == col.ways) & (summary.shots == col.shots) & (summary["mode"] == row.mode)]
    return None if hit.empty else hit.iloc[0]


def interval(ours: pd.Series, plus_minus: str) -> tuple[float, str]:
    """Our ± in the sense of the paper's: a std over seeds needs two seeds, else the CI over tasks."""
    if plus_minus in (STD_OVER_SEEDS, AS_PRINTED) and ours["seeds"] >= 2:
        return float(ours["std_over_seeds_pct"]), STD_OVER_SEEDS
    return float(ours["mean_ci95_over_tasks_pct"]), CI_OVER_TASKS


def _num(value) -> float:
    return math.nan if value is None or value == "" else float(value)


def table_cells(table: PaperTable, summary: pd.DataFrame, pub: pd.DataFrame,
                unavailable: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (paper row, column): the machine-readable twin of the markdown table.
    ``unavailable`` gives, per dataset that could not run at all, the reason its cells say."""
    cells = []
    for row in table.rows:
        for col in table.columns:
            paper, ours = published_value(pub, table, row, col), ours_value(summary, row, col)
            paper_acc = _num(paper["accuracy_pct"]) if paper is not None else math.nan
            cell = {"table": table.key, "row": row.label, "algorithm": row.algorithm, "mode": row.mode,
                    "dataset": col.dataset, "ways": col.ways, "shots": col.shots,
                    "status": "run" if ours is not None else not_run(col.dataset, unavailable),
                    "ours_pct": math.nan, "ours_plus_minus_pct": math.nan, "ours_plus_minus": "",
                    "seeds": 0, "meta_iters": math.nan,
                    "paper_pct": paper_acc, "paper_plus_minus_pct": _num(paper["plus_minus_pct"]) if paper is not None else math.nan,
                    "paper_plus_minus": row.plus_minus if paper is not None else "",
                    "difference_pct": math.nan, "paper_within_ours": None, "mlflow_run_ids": ""}
            if ours is not None:
                half, meaning = interval(ours, row.plus_minus)
                diff = float(ours["accuracy_pct"]) - paper_acc
                cell.update(ours_pct=float(ours["accuracy_pct"]), ours_plus_minus_pct=half, ours_plus_minus=meaning,
                            seeds=int(ours["seeds"]), meta_iters=int(ours["meta_iters"]),
                            difference_pct=diff, paper_within_ours=None if math.isnan(diff) else abs(diff) <= half,
                            mlflow_run_ids=ours["mlflow_run_ids"])
            cells.append(cell)
    return pd.DataFrame(cells)


def not_run(dataset: str, unavailable: dict[str, str] | None) -> str:
    reason = (unavailable or {}).get(dataset)
    return f"not run: {reason}" if reason else "not run"


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def cell_markdown(c: pd.Series, links: dict[str, str] | None = None) -> str:
    """A cell as markdown; ``links`` (MLflow run id -> URL) adds one link per seed's run."""
    paper = "paper —" if math.isnan(c["paper_pct"]) else (
        f"paper {_fmt(c['paper_pct'])}" + ("" if math.isnan(c["paper_plus_minus_pct"]) else f" ± {_fmt(c['paper_plus_minus_pct'])}"))
    if c["status"].startswith("not run"):
        return "—" if math.isnan(c["paper_pct"]) else f"not run · {paper}"
    mark = {True: " ✓", False: " ✗"}.get(c["paper_within_ours"], "")
    sign = "" if math.isnan(c["difference_pct"]) else f" · {c['difference_pct']:+.2f}{mark}"
    tag = "ᵀ" if c["ours_plus_minus"] == CI_OVER_TASKS else "ˢ"
    runs = "".join(f" [run{i + 1}]({links[rid]})" for i, rid in enumerate(c["mlflow_run_ids"].split())
                   if links and rid in links)
    return f"**{_fmt(c['ours_pct'])}** ± {_fmt(c['ours_plus_minus_pct'])}{tag} · {paper}{sign}{runs}"


def table_markdown(table: PaperTable, cells: pd.DataFrame, links: dict[str, str] | None = None,
                   how_to: dict[str, str] | None = None) -> str:
    """The table in the paper's layout; for each dataset that could not run, ``how_to`` (dataset
    -> text) says under the table how to make it run."""
    header = "| method | " + " | ".join(c.label for c in table.columns) + " |"
    lines = [f"### {table.title}", "", header, "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        mine = cells[cells.row == row.label]
        lines.append(f"| {row.label} | " + " | ".join(cell_markdown(c, links) for _, c in mine.iterrows()) + " |")
    ran = int((cells.status == "run").sum())
    for status in sorted({st for st in cells.status if st.startswith("not run:")}):
        dataset = cells[cells.status == status].dataset.iloc[0]
        lines += ["", f"**{DATASET_NAMES.get(dataset, dataset)}: {status}.** "
                  + (how_to or {}).get(dataset, "")]
    lines += ["", f"{ran} of {len(cells)} cells run in this profile; — the paper has no such cell (source `{table.source}`). "
              + (table.note + " " if table.note else "")
              + f"Machine-readable: [`tables/{table.key}.csv`](tables/{table.key}.csv).", ""]
    return "\n".join(lines)


LEGEND = ("Each cell: **ours** (mean over seeds) ± its interval — ˢ std over seeds, ᵀ 95% CI over test "
          "tasks (mean of the per-seed intervals), matching what the paper's ± means for that row "
          "(Finn et al.'s MAML numbers: 95% CI over tasks; Reptile and ANIL: std over 3 seeds; "
          "MAML++: as printed) — then the published value, ours − paper, and ✓ when the published "
          "value lies within ours ± that interval (✗ otherwise).")
