"""The report's sections for the papers' own analyses (``gbml.studies``): each states the
paper's claim and ours side by side, from the study stage's metrics.json. Nichol et al.'s three
are in reptile_studies.py, which shares this module's helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

LAYERS = ("conv1", "conv2", "conv3", "conv4", "head")
NAMES = {"maml": "MAML", "anil": "ANIL", "fomaml": "FOMAML"}
FEATURE_REUSE_CLAIM = (
    "**Paper** (Raghu et al. 2020, section 3.2, MAML on Mini-ImageNet): the inner loop barely changes the "
    "body -- each conv layer's representation before vs after adaptation has CCA similarity above 0.9 and "
    "CKA near 1 -- while the head changes (CCA below 0.5), and freezing conv layers 1-4 in the test-time "
    "inner loop \"hardly affects accuracy\" (their Table 1; the OpenReview version: 44.5 -> 44.7% 5-way "
    "1-shot, 61.7 -> 60.2% 5-shot). Hence ANIL: adapt only the head.")


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def similarity_table(similarity: dict) -> list[str]:
    series = [(a, s, layers) for a, settings in similarity.items() for s, layers in settings.items()]
    head = "| layer | " + " | ".join(f"{NAMES.get(a, a)} {s} CCA | CKA" for a, s, _ in series) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(series)]
    for layer in LAYERS:
        cells = [f"{layers[layer]['cca_mean']:.3f} ± {layers[layer]['cca_ci95']:.3f} | "
                 f"{layers[layer]['cka_mean']:.3f} ± {layers[layer]['cka_ci95']:.3f}" for _, _, layers in series]
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    return rows


def freezing_table(freezing: dict) -> list[str]:
    rows = ["| algorithm | setting | mode | conv layers frozen | accuracy (%) | change vs none (points) |",
            "|---|---|---|---|---:|---:|"]
    labels = ["none", "1", "1-2", "1-3", "1-4"]
    for algorithm, settings in freezing.items():
        for setting, modes in settings.items():
            for mode, by_k in modes.items():
                for k, r in sorted(by_k.items(), key=lambda kv: int(kv[0])):
                    change = "" if int(k) == 0 else f"{100 * r['change']:+.2f} ± {100 * r['change_ci95']:.2f}"
                    rows.append(f"| {NAMES.get(algorithm, algorithm)} | {setting} | {mode.replace('_', '-')} | "
                                f"{labels[int(k)]} | {pct(r['mean'])} ± {pct(r['ci95'])} | {change} |")
    return rows


def similarity_verdict(similarity: dict) -> list[str]:
    """Does the body change less than the head? Per algorithm and setting, the lowest conv-layer
    CKA against the head's, each with its interval."""
    lines = []
    for algorithm, settings in similarity.items():
        for setting, layers in settings.items():
            body = min((layers[n] for n in LAYERS[:-1]), key=lambda r: r["cka_mean"])
            head = layers["head"]
            holds = body["cka_mean"] - body["cka_ci95"] > head["cka_mean"] + head["cka_ci95"]
            lines.append(f"- {NAMES.get(algorithm, algorithm)} {setting}: conv layers' CKA >= {body['cka_mean']:.3f} "
                         f"and CCA >= {min(layers[n]['cca_mean'] for n in LAYERS[:-1]):.3f}; the head's CKA "
                         f"{head['cka_mean']:.3f}, CCA {head['cca_mean']:.3f} -> "
                         + ("**agrees** (the body changes less than the head, intervals apart)." if holds
                            else "**does not agree** at this budget (the intervals overlap)."))
    return lines


def freezing_verdict(freezing: dict) -> list[str]:
    """Freezing every conv layer: the change in accuracy with its interval, and whether a loss
    of more than one point is excluded."""
    lines = []
    for algorithm, settings in freezing.items():
        for setting, modes in settings.items():
            for mode, by_k in modes.items():
                r = by_k[max(by_k, key=int)]
                low = 100 * (r["change"] - r["change_ci95"])
                lines.append(f"- {NAMES.get(algorithm, algorithm)} {setting}, {mode.replace('_', '-')}: freezing conv "
                             f"layers 1-4 changes accuracy by {100 * r['change']:+.2f} points (95% interval "
                             f"[{low:+.2f}, {100 * (r['change'] + r['change_ci95']):+.2f}]) -> "
                             + ("**agrees** (a loss above 1 point is excluded)." if low > -1.0 else
                                "**does not agree**: freezing may cost more than a point here."))
    return lines


def nil_rows(summary: pd.DataFrame) -> list[str]:
    """Raghu et al.'s feature-reuse table (their Table 4): MAML, ANIL and NIL (the ANIL body with
    no head and no inner loop) side by side, from the grid's evaluations."""
    rows = summary[summary.algorithm.isin(["maml", "anil"])]
    if rows.empty:
        return []
    out = ["| algorithm | setting | transductive | non-transductive | NIL (no inner loop, no head) |",
           "|---|---|---:|---:|---:|"]
    for (algorithm, dataset, ways, shots), group in rows.groupby(["algorithm", "dataset", "ways", "shots"]):
        acc = group.set_index("mode")["accuracy_pct"]
        cells = [f"{acc[m]:.2f}" if m in acc else "--" for m in ("transductive", "non_transductive", "nil")]
        out.append(f"| {NAMES.get(algorithm, algorithm)} | {dataset} {ways}w{shots}s | " + " | ".join(cells) + " |")
    return out


def feature_reuse_section(study_dir: Path, report_dir: Path, summary: pd.DataFrame) -> str:
    title = "## Feature reuse (Raghu et al. 2020, sections 3-5)"
    path = study_dir / "metrics.json"
    if not path.is_file():
        return (f"\n{title}\n\nNot run: no `{path.relative_to(study_dir.parents[2])}` (run `dvc repro` "
                "or `gbml study feature_reuse`).\n")
    metrics = json.loads(path.read_text())
    cfg, rel = metrics["config"], os.path.relpath(study_dir, report_dir)
    text = [title, "", FEATURE_REUSE_CLAIM, "",
            f"**Ours** (the grid's trained runs; similarity on {cfg['queries']} queries per class of "
            f"{cfg['similarity_tasks']} test tasks, mean ± 95% interval over seeds x tasks; freezing on "
            f"{cfg['freeze_tasks']} test tasks, the change paired task by task):", "",
            *similarity_verdict(metrics["similarity"]), *freezing_verdict(metrics["freezing"]), "",
            f"![similarity]({rel}/similarity.png)", "", *similarity_table(metrics["similarity"]), "",
            f"![freezing]({rel}/freezing.png)", "", *freezing_table(metrics["freezing"]), ""]
    nil = nil_rows(summary)
    if nil:
        text += ["The feature-reuse table (Raghu et al. Table 4: NIL scores each query by the cosine "
                 "similarity of its body features to the support examples', no head, no inner loop):", "", *nil, ""]
    text += [f"Data: [`similarity.csv`]({rel}/similarity.csv), [`freezing.csv`]({rel}/freezing.csv), "
             f"[`metrics.json`]({rel}/metrics.json).", ""]
    return "\n".join(text)


TRAINS = "the study trains networks of its own, beyond the default pipeline's 40-minute budget"


def data_files(rel: str, names) -> str:
    """The line linking a section's data files (``rel``: the study's directory from the report's)."""
    return "Data: " + ", ".join(f"[`{name}`]({rel}/{name})" for name in names) + "."


def study_section(study_dir: Path, report_dir: Path, title: str, claim: str, name: str, body,
                  why: str = TRAINS) -> str:
    """A seeded study's section: its title, the paper's claim and ``body(metrics, config, rel)``,
    what we measured (``rel``: the study's directory from the report's). With nothing to report --
    no summary yet, or the study left out of this profile (no seeds, for ``why``) -- what to run."""
    path = study_dir / "metrics.json"
    if not path.is_file():
        return (f"\n{title}\n\nNot run: no `{path.relative_to(study_dir.parents[2])}` (run `dvc repro` "
                f"or `gbml study {name}`).\n")
    metrics = json.loads(path.read_text())
    if not metrics["ran"]:
        return "\n".join([title, "", claim, "",
                          f"**Ours: not run in this profile** (`studies.{name}.seeds` is empty: {why}). "
                          "`gbml profile studies && dvc repro` "
                          "runs it at a CPU scale, `gbml profile paper` at the paper's.", ""])
    return "\n".join([title, "", claim, "", *body(metrics, metrics["config"], os.path.relpath(study_dir, report_dir)), ""])


MAMLPP_CLAIM = (
    "**Paper** (Antoniou et al. 2019, section 3 and Figure 1, paraphrased, not checked against the paper's "
    "text here): MAML is unstable to train -- with strided convolutions and 5 inner steps, runs from different "
    "seeds differ and some become erratic (the figure shows three seeds, two of them unstable) -- while MAML++ "
    "trains stably, faster and higher on every seed. Table 1's ablation (Omniglot 20-way 1-shot) adds "
    "MAML++'s switches one at a time: {rows}.")
# The published row each arm answers to (published_results.csv, source antoniou2019, Omniglot 20-way 1-shot).
ABLATION_ROWS = {"maml": ("maml", "local replication", "MAML"), "maml_strided": ("maml", "local replication", "MAML"),
                 "maml_msl": ("maml", "+MSL", "MAML + MSL"), "maml_lslr": ("maml", "+LSLR", "MAML + LSLR"),
                 "maml_bnwb_bnrs": ("maml", "+BNWB+BNRS", "MAML + BNWB + BNRS"),
                 "mamlpp": ("mamlpp", "", "MAML++"), "mamlpp_strided": ("mamlpp", "", "MAML++")}


def ablation_published(pub: pd.DataFrame) -> dict[str, pd.Series]:
    """Table 1's ablation rows by our arm names (those with a published row)."""
    rows = pub[(pub.source == "antoniou2019") & (pub.dataset == "omniglot") & (pub.ways == 20) & (pub.shots == 1)]
    found = {}
    for arm, (algorithm, variant, _) in ABLATION_ROWS.items():
        hit = rows[(rows.algorithm == algorithm) & (rows.variant == variant)]
        if not hit.empty:
            found[arm] = hit.iloc[0]
    return found


def published_text(row: pd.Series) -> str:
    pm = str(row["plus_minus_pct"]).strip()   # blank where the paper prints no interval
    return f"{float(row['accuracy_pct']):.2f}" + (f" ± {float(pm):.2f}" if pm not in ("", "nan") else "")


def instability_verdict(metrics: dict) -> list[str]:
    cfg, arms = metrics["config"], metrics["arms"]
    base, fixed = arms[cfg["baseline"]], arms[cfg["fixed"]]
    rises = {a: max(metrics["runs"][f"{a}-seed{s}"]["max_rise"] for s in cfg["seeds"]) for a in (cfg["baseline"], cfg["fixed"])}
    line = (f"- Unstable seeds (training loss {cfg['rise']} nats above its running minimum, or a non-finite "
            f"meta-step): {cfg['baseline']} {base['unstable_seeds']} of {base['seeds']} (largest rise "
            f"{rises[cfg['baseline']]:.2f}), {cfg['fixed']} {fixed['unstable_seeds']} of {fixed['seeds']} (largest "
            f"rise {rises[cfg['fixed']]:.2f}); test accuracy spread over seeds (std): {pct(base['std_over_seeds'])} "
            f"against {pct(fixed['std_over_seeds'])} points -> ")
    if base["unstable_seeds"] > fixed["unstable_seeds"] == 0:
        return [line + "**agrees**: MAML's training is the unstable one."]
    if base["unstable_seeds"] == fixed["unstable_seeds"] == 0:
        return [line + "**not reproduced at this budget**: no run of either arm became unstable."]
    return [line + "**disagrees**: MAML++ was not the stabler arm here."]


def ablation_table(metrics: dict, published: dict[str, pd.Series]) -> list[str]:
    cfg, arms, diffs = metrics["config"], metrics["arms"], metrics["differences"]
    rows = [f"| arm | ours: {cfg['ways']}-way {cfg['shots']}-shot (%) | std over seeds | unstable seeds | "
            f"ours - {cfg['baseline']} (points) | paper: 20-way 1-shot (%) | paper - MAML (points) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    base_paper = published.get(cfg["baseline"])
    for arm in cfg["arms"]:
        r, d, paper = arms[arm], diffs.get(f"{arm}-vs-{cfg['baseline']}"), published.get(arm)
        change = f"{100 * d['change']:+.2f} ± {100 * d['ci95']:.2f}" if d else ""
        paper_change = (f"{float(paper['accuracy_pct']) - float(base_paper['accuracy_pct']):+.2f}"
                        if paper is not None and base_paper is not None and arm != cfg["baseline"] else "")
        label = ABLATION_ROWS.get(arm, (None, None, arm))[2]
        rows.append(f"| {label} (`{arm}`) | {pct(r['accuracy'])} ± {pct(r['ci95'])} | {pct(r['std_over_seeds'])} | "
                    f"{r['unstable_seeds']} of {r['seeds']} | {change} | "
                    f"{published_text(paper) if paper is not None else '—'} | {paper_change} |")
    return rows


def ablation_verdict(metrics: dict, published: dict[str, pd.Series]) -> list[str]:
    """Each arm against the baseline, paired by seed and task: above, below or not separated."""
    cfg, lines = metrics["config"], []
    for arm in cfg["arms"]:
        d = metrics["differences"].get(f"{arm}-vs-{cfg['baseline']}")
        if not d:
            continue
        low, high = d["change"] - d["ci95"], d["change"] + d["ci95"]
        ours = "above" if low > 0 else "below" if high < 0 else "not separated from"
        paper, base = published.get(arm), published.get(cfg["baseline"])
        said = ("" if paper is None or base is None else
                f"; the paper: {'above' if float(paper['accuracy_pct']) > float(base['accuracy_pct']) else 'not above'} "
                f"({float(paper['accuracy_pct']) - float(base['accuracy_pct']):+.2f} points at 20-way 1-shot)")
        lines.append(f"- {ABLATION_ROWS.get(arm, (None, None, arm))[2]}: {ours} MAML here "
                     f"({100 * d['change']:+.2f} ± {100 * d['ci95']:.2f} points){said}.")
    return lines


def mamlpp_ablation_section(study_dir: Path, report_dir: Path, pub: pd.DataFrame) -> str:
    title = "## MAML's instability and MAML++'s switches (Antoniou et al. 2019, Figure 1 and Table 1)"
    published = ablation_published(pub)
    rows = ", ".join(f"{ABLATION_ROWS[a][2]} {published_text(r)}" for a, r in published.items()
                     if a in ("maml_strided", "maml_msl", "maml_lslr", "maml_bnwb_bnrs", "mamlpp_strided"))
    claim = MAMLPP_CLAIM.format(rows=rows or "(no published rows found)")

    def body(metrics: dict, cfg: dict, rel: str) -> list[str]:
        return [f"**Ours** ({cfg['dataset']} {cfg['ways']}-way {cfg['shots']}-shot, seeds "
                f"{', '.join(map(str, cfg['seeds']))}; each arm a params section trained by the pipeline's "
                f"training loop, the training loss logged every {cfg['log_every']} meta-iterations; test "
                f"accuracy on {cfg['eval_tasks']} tasks, transductive, mean ± 95% interval over seeds x tasks; "
                "differences paired by seed and task):", "", *instability_verdict(metrics),
                *ablation_verdict(metrics, published), "",
                f"![MAML vs MAML++ over seeds]({rel}/instability.png)", "",
                f"![MAML++ switches]({rel}/ablation.png)", "", *ablation_table(metrics, published), "",
                data_files(rel, ("curves.csv", "final.csv", "metrics.json"))]
    return study_section(study_dir, report_dir, title, claim, "mamlpp_ablation", body)
