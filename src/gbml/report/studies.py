"""The report's sections for the papers' own analyses (``gbml.studies``): each states the
paper's claim and ours side by side, from the study stage's metrics.json."""

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


GRADIENT_COMBINATIONS_CLAIM = (
    "**Paper** (Nichol et al. 2018, section 6.2, Figure 3: 5-way 5-shot Omniglot, inner minibatches of 25, "
    "plain SGD, 40,000 meta-iterations): with one inner step (k = 1) the update is the gradient of the "
    "expected loss over tasks -- joint training -- which \"learns very little\" when zero-shot learning is "
    "not possible (the authors' announcement of the paper); an update built from later inner-loop gradients "
    "(k > 1: first-order MAML's last gradient gk, Reptile's sum g1 + ... + gk) learns an initialisation "
    "that adapts. Figure 3 also orders the k > 1 arms; that ordering is shown below, not quoted "
    "(not checked against the paper's text here).")


TRAINS = "the study trains networks of its own, beyond the default pipeline's 40-minute budget"


def training_study_metrics(study_dir: Path, title: str, claim: str, name: str, why: str = TRAINS) -> dict | str:
    """A seeded study's metrics.json, or the section's whole text when there is nothing to
    report: no summary yet, or the study left out of this profile (no seeds, for ``why``)."""
    path = study_dir / "metrics.json"
    if not path.is_file():
        return (f"\n{title}\n\nNot run: no `{path.relative_to(study_dir.parents[2])}` (run `dvc repro` "
                f"or `gbml study {name}`).\n")
    metrics = json.loads(path.read_text())
    if metrics["ran"]:
        return metrics
    return "\n".join([title, "", claim, "",
                      f"**Ours: not run in this profile** (`studies.{name}.seeds` is empty: {why}). "
                      "`gbml profile studies && dvc repro` "
                      "runs it at a CPU scale, `gbml profile paper` at the paper's.", ""])


def gradient_combinations_verdict(metrics: dict) -> list[str]:
    """Joint training against every other arm at the last curve point, paired task by task."""
    final, differences = metrics["final"], metrics["differences"]
    versus_g1 = {k.split("-vs-")[0]: v for k, v in differences.items() if k.endswith("-vs-g1")}
    if not versus_g1:
        return ["- No arm to compare with joint training (g1 is not among the arms)."]
    separated = [a for a, d in versus_g1.items() if d["change"] - d["ci95"] > 0]
    worst = min(versus_g1.items(), key=lambda kv: kv[1]["change"] - kv[1]["ci95"])
    line = (f"- Joint training (g1) ends at {pct(final['g1']['accuracy'])} ± {pct(final['g1']['ci95'])}%; "
            f"{len(separated)} of the {len(versus_g1)} other arms end above it with the paired 95% interval "
            f"excluding 0 (the smallest gain: {label_arm(worst[0])} {100 * worst[1]['change']:+.2f} ± "
            f"{100 * worst[1]['ci95']:.2f} points) -> ")
    if len(separated) == len(versus_g1):
        return [line + "**agrees**: every update with a later gradient learns more than joint training."]
    return [line + "**not separated at this budget** for " + ", ".join(label_arm(a) for a in versus_g1 if a not in separated) + "."]


def label_arm(arm: str) -> str:
    return " + ".join(arm.split("_"))


def gradient_combinations_table(metrics: dict) -> list[str]:
    rows = ["| arm | update | final accuracy (%) | vs g1 (points) | vs gk alone (points) |", "|---|---|---:|---:|---:|"]
    kinds = lambda idx: ("joint training" if idx == [1] else f"first-order MAML, k = {idx[0]}" if len(idx) == 1
                         else f"Reptile, k = {idx[-1]}" if idx == list(range(1, idx[-1] + 1)) else "other subset")
    for arm in [a for a in metrics["config"]["arms"] if a in metrics["final"]]:   # the config's order
        r, idx = metrics["final"][arm], [int(p[1:]) for p in arm.split("_")]
        cells = []
        for other in ("g1", f"g{idx[-1]}"):
            d = metrics["differences"].get(f"{arm}-vs-{other}")
            cells.append(f"{100 * d['change']:+.2f} ± {100 * d['ci95']:.2f}" if d else "")
        rows.append(f"| {label_arm(arm)} | {kinds(idx)} | {pct(r['accuracy'])} ± {pct(r['ci95'])} | " + " | ".join(cells) + " |")
    return rows


def gradient_combinations_section(study_dir: Path, report_dir: Path) -> str:
    title = "## Inner-loop gradient combinations (Nichol et al. 2018, section 6.2)"
    metrics = training_study_metrics(study_dir, title, GRADIENT_COMBINATIONS_CLAIM, "gradient_combinations")
    if isinstance(metrics, str):
        return metrics
    cfg, rel = metrics["config"], os.path.relpath(study_dir, report_dir)
    text = [title, "", GRADIENT_COMBINATIONS_CLAIM, "",
            f"**Ours** ({cfg['ways']}-way {cfg['shots']}-shot Omniglot, {cfg['meta_iters']:,} meta-iterations "
            f"(the paper: 40,000), seeds {', '.join(map(str, cfg['seeds']))}; held-out accuracy on "
            f"{cfg['eval_tasks']} test tasks after {cfg['eval_inner_iters']} SGD steps, "
            f"{cfg['eval_mode'].replace('_', '-')}, mean ± 95% interval over seeds x tasks; differences at the "
            "last point paired task by task):", "", *gradient_combinations_verdict(metrics), "",
            f"![gradient combinations]({rel}/curves.png)", "", *gradient_combinations_table(metrics), "",
            f"Data: [`curves.csv`]({rel}/curves.csv), [`final.csv`]({rel}/final.csv), "
            f"[`metrics.json`]({rel}/metrics.json).", ""]
    return "\n".join(text)


MINIBATCH_OVERLAP_CLAIM = (
    "**Paper** (Nichol et al. 2018, section 6.3, Figure 4): first-order MAML's update is the gradient of "
    "its last inner minibatch; drawn like the earlier ones (the reference FOML's default: \"the final "
    "mini-batch may overlap with the previous mini-batches\", `supervised_reptile/reptile.py`) it can "
    "repeat examples the earlier steps already fit, while `--foml-tail` holds examples out for it. Figure 4 "
    "compares the two, and Reptile, across inner-iteration counts with cycled and with-replacement "
    "minibatches; expected from it (paraphrase, not checked against the paper's text here): the shared tail "
    "is worse once it overlaps the earlier minibatches, the separate tail and Reptile are not hurt.")
VARIANT_NAMES = {"reptile": "Reptile", "foml_shared": "FOMAML, shared tail", "foml_separate": "FOMAML, separate tail"}


def minibatch_overlap_verdict(metrics: dict) -> list[str]:
    """Separate tail against shared tail at each sampling and k, paired task by task."""
    lines = []
    for sampling, by_k in metrics["differences"].get("foml_separate-vs-foml_shared", {}).items():
        cells = [f"k = {k}: {100 * d['change']:+.2f} ± {100 * d['ci95']:.2f}" for k, d in sorted(by_k.items(), key=lambda kv: int(kv[0]))]
        above = [k for k, d in by_k.items() if d["change"] - d["ci95"] > 0]
        verdict = (f"the separate tail is above at k = {', '.join(sorted(above, key=int))} (interval excluding 0)"
                   if above else "**not separated at this budget** (every interval contains 0 or favours the shared tail)")
        lines.append(f"- {'Cycling' if sampling == 'cycle' else 'With replacement'}: separate minus shared tail "
                     f"(points) {'; '.join(cells)} -> {verdict}.")
    return lines


def minibatch_overlap_table(metrics: dict) -> list[str]:
    final = metrics["final"]
    columns = sorted({(s, k) for by_s in final.values() for s, by_k in by_s.items() for k in by_k},
                     key=lambda sk: (sk[0], int(sk[1])))
    rows = ["| variant | " + " | ".join(f"{s}, k = {k}" for s, k in columns) + " |", "|---|" + "---:|" * len(columns)]
    for variant, by_s in ((v, final[v]) for v in metrics["config"]["variants"] if v in final):
        cells = [f"{pct(by_s[s][k]['accuracy'])} ± {pct(by_s[s][k]['ci95'])}" if k in by_s.get(s, {}) else "--"
                 for s, k in columns]
        rows.append(f"| {VARIANT_NAMES.get(variant, variant)} | " + " | ".join(cells) + " |")
    return rows


def minibatch_overlap_section(study_dir: Path, report_dir: Path) -> str:
    title = "## Minibatch overlap in first-order MAML (Nichol et al. 2018, section 6.3)"
    metrics = training_study_metrics(study_dir, title, MINIBATCH_OVERLAP_CLAIM, "minibatch_overlap")
    if isinstance(metrics, str):
        return metrics
    cfg, rel = metrics["config"], os.path.relpath(study_dir, report_dir)
    return "\n".join([title, "", MINIBATCH_OVERLAP_CLAIM, "",
                      f"**Ours** ({cfg['ways']}-way Omniglot, tasks of {cfg['train_shots']} examples per class "
                      f"(separate tail: {cfg['tail_shots']} of them), minibatches of {cfg['inner_batch']}, "
                      f"{cfg['meta_iters']:,} meta-iterations per unit, seeds {', '.join(map(str, cfg['seeds']))}; "
                      f"final accuracy on {cfg['eval_tasks']} test tasks ({cfg['shots']}-shot, "
                      f"{cfg['eval_inner_iters']} SGD steps), mean ± 95% interval over seeds x tasks, differences "
                      "paired task by task):", "", *minibatch_overlap_verdict(metrics), "",
                      f"![minibatch overlap]({rel}/overlap.png)", "", *minibatch_overlap_table(metrics), "",
                      f"Data: [`final.csv`]({rel}/final.csv), [`metrics.json`]({rel}/metrics.json).", ""])


TAYLOR_CLAIM = (
    "**Paper** (Nichol et al. 2018, section 5.1): with k = 2 inner SGD steps at rate alpha on two "
    "minibatches of a task, to leading order in alpha, E[MAML] = AvgGrad - 2 alpha AvgGradInner, "
    "E[FOMAML] = AvgGrad - alpha AvgGradInner and E[Reptile] = 2 AvgGrad - alpha AvgGradInner, where "
    "AvgGrad = E[gbar] is joint training's gradient and AvgGradInner = E[Hbar_2 gbar_1] = "
    "1/2 d/dphi E[gbar_1 . gbar_2]: all three ascend the inner product of two minibatches' gradients of "
    "the same task (a step on one then helps the other), which joint training (k = 1) does not, and MAML's "
    "update weighs that term twice as FOMAML's and Reptile's do. The terms of order alpha^2 are dropped.")
ALGORITHM_NAMES = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}


def sci(value: float) -> str:
    return f"{value:.1e}"


def taylor_verdict(metrics: dict) -> list[str]:
    """The expansion at the smallest rate (its terms), the coefficients there, and how far it holds."""
    errors, expected, validity = metrics["errors"], metrics["expected"], metrics["validity"]
    smallest = lambda points: min(points, key=lambda p: p["alpha"])
    first = {n: smallest(p) for n, p in errors.items()}
    alpha0 = min(p["alpha"] for p in first.values())
    share = min(p["first_order_share"] for p in first.values())
    lines = [f"- The terms, per task, at alpha = {alpha0:g}: the median remainder of the update is "
             + ", ".join(f"{ALGORITHM_NAMES[n]} {sci(p['error0_median'])} of it without the Hessian term, "
                         f"{sci(p['error1_median'])} with it (slope over the two smallest rates "
                         f"{validity[n]['order0_slope']:.2f}; 1 = first order)" for n, p in first.items())
             + f"; {100 * share:.0f}% of task-orders match the expansion to first order (remainder under "
             "1/1000 of the term) -> "
             + ("**agrees**: the Hessian term is what the updates add to the gradients at first order."
                if share >= 0.9 else "**does not agree** at the smallest rate measured.")]
    fitted = {n: smallest(p) for n, p in expected.items()}
    close = all(abs(p["a"] - p["paper_a"]) < 0.05 * p["paper_a"] and abs(p["b"] - p["paper_b"]) < 0.05 * p["paper_b"]
                for p in fitted.values())
    lines.append(f"- In expectation (tasks x both minibatch orders), E[update] fitted as a AvgGrad - b alpha "
                 f"AvgGradInner at alpha = {alpha0:g}: "
                 + ", ".join(f"{ALGORITHM_NAMES[n]} (a, b) = ({p['a']:.3f}, {p['b']:.3f}), paper "
                             f"({p['paper_a']:g}, {p['paper_b']:g})" for n, p in fitted.items())
                 + (" -> **agrees** (within 5%)." if close else " -> **does not agree** (beyond 5%)."))
    trained = metrics.get("trained_alpha")
    at_trained = {n: next((p for p in points if p["alpha"] == trained), None) for n, points in errors.items()}
    holds = ", ".join(f"{ALGORITHM_NAMES[n]} alpha <= {v['order1_within_1pct_up_to']:g}"
                      if v["order1_within_1pct_up_to"] else f"{ALGORITHM_NAMES[n]} not even at the smallest alpha"
                      for n, v in validity.items())
    line = f"- How far it holds: the first-order expansion stays within 1% of the update (mean) for {holds}"
    if all(at_trained.values()):
        ratio = next(p for p in expected["reptile"] if p["alpha"] == trained)
        line += (f"; at the rate the gradient-combination study trains with (alpha = {trained:g}) it misses by "
                 + ", ".join(f"{100 * p['error1']:.0f}% ({ALGORITHM_NAMES[n]})" for n, p in at_trained.items())
                 + f", and the 'small' term alpha |AvgGradInner| is {ratio['inner_term_norm'] / ratio['avg_grad_norm']:.2f}x "
                 "|AvgGrad|: the section 6 studies train far beyond the expansion's reach, so it explains the "
                 "direction of small updates, not the size of the ones trained with. Where a task-order leaves the "
                 "expansion, its gradient moved more than the Hessian predicts, as when ReLU units switch on or off "
                 "(the Hessian, zero at a ReLU's kink, cannot see that)")
    return lines + [line + "."]


def taylor_table(metrics: dict) -> list[str]:
    names = list(metrics["errors"])
    rows = ["| alpha | " + " | ".join(f"{ALGORITHM_NAMES[n]}: median error without -> with the Hessian term "
                                      f"(first-order share) | {ALGORITHM_NAMES[n]}: (a, b)" for n in names) + " |",
            "|---:|" + "---:|---:|" * len(names)]
    for i, point in enumerate(metrics["errors"][names[0]]):
        cells = []
        for n in names:
            e, f = metrics["errors"][n][i], metrics["expected"][n][i]
            cells += [f"{sci(e['error0_median'])} -> {sci(e['error1_median'])} ({100 * e['first_order_share']:.0f}%)",
                      f"({f['a']:.3f}, {f['b']:.3f})"]
        rows.append(f"| {point['alpha']:g} | " + " | ".join(cells) + " |")
    return rows


def joint_training_line(study_dir: Path) -> str:
    """k = 1 against k = 2 as the gradient-combination study trained them (g1 vs g1 + g2)."""
    path = study_dir.parent / "gradient_combinations" / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {"ran": False}
    d = metrics.get("differences", {}).get("g1_g2-vs-g1") if metrics["ran"] else None
    if d is None:
        return ("- k = 1 (joint training) against k = 2 (Reptile) in training: measured by the gradient-combination "
                "study (arms g1 and g1_g2), which did not run both in this profile (see its section).")
    g1, g12 = metrics["final"]["g1"], metrics["final"]["g1_g2"]
    return (f"- k = 1 against k = 2 in training (the gradient-combination study): joint training (g1) ends at "
            f"{pct(g1['accuracy'])} ± {pct(g1['ci95'])}%, Reptile with k = 2 (g1 + g2) at {pct(g12['accuracy'])} ± "
            f"{pct(g12['ci95'])}% ({100 * d['change']:+.2f} ± {100 * d['ci95']:.2f} points, paired) -> "
            + ("**agrees**: the initialisation joint training learns adapts worse." if d["change"] - d["ci95"] > 0
               else "**not separated at this budget**."))


def taylor_section(study_dir: Path, report_dir: Path) -> str:
    title = "## The Taylor expansion of the updates (Nichol et al. 2018, section 5.1)"
    metrics = training_study_metrics(study_dir, title, TAYLOR_CLAIM, "taylor_terms",
                                     why="no initialisation to measure at")
    if isinstance(metrics, str):
        return metrics
    cfg, rel, align = metrics["config"], os.path.relpath(study_dir, report_dir), metrics["alignment"]
    return "\n".join([title, "", TAYLOR_CLAIM, "",
                      f"**Ours** ({cfg['ways']}-way Omniglot training tasks, two disjoint minibatches of "
                      f"{cfg['inner_batch']} ({cfg['inner_loss']} loss), at the random initialisations of seeds "
                      f"{', '.join(map(str, cfg['seeds']))}, {cfg['tasks']} tasks each in both minibatch orders; float64; "
                      "each update computed exactly by autograd through the inner step, the terms as gradients and "
                      "Hessian-vector products; errors are |update - expansion| / |update|, mean over seeds x tasks x "
                      "orders):", "", *taylor_verdict(metrics), joint_training_line(study_dir),
                      f"- The inner product the expansion's second term ascends, at these initialisations: gbar_1 . gbar_2 "
                      f"= {align['inner']:.3g} ± {align['inner_ci95']:.2g} (cosine {align['cosine']:.3f} ± "
                      f"{align['cosine_ci95']:.3f}) over seeds x tasks.", "",
                      f"![Taylor expansion]({rel}/taylor.png)", "", *taylor_table(metrics), "",
                      f"Data: [`errors.csv`]({rel}/errors.csv), [`expected.csv`]({rel}/expected.csv), "
                      f"[`metrics.json`]({rel}/metrics.json).", ""])


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
    metrics = training_study_metrics(study_dir, title, claim, "mamlpp_ablation")
    if isinstance(metrics, str):
        return metrics
    cfg, rel = metrics["config"], os.path.relpath(study_dir, report_dir)
    return "\n".join([title, "", claim, "",
                      f"**Ours** ({cfg['dataset']} {cfg['ways']}-way {cfg['shots']}-shot, seeds "
                      f"{', '.join(map(str, cfg['seeds']))}; each arm a params section trained by the pipeline's "
                      f"training loop, the training loss logged every {cfg['log_every']} meta-iterations; test "
                      f"accuracy on {cfg['eval_tasks']} tasks, transductive, mean ± 95% interval over seeds x tasks; "
                      "differences paired by seed and task):", "", *instability_verdict(metrics),
                      *ablation_verdict(metrics, published), "",
                      f"![MAML vs MAML++ over seeds]({rel}/instability.png)", "",
                      f"![MAML++ switches]({rel}/ablation.png)", "", *ablation_table(metrics, published), "",
                      f"Data: [`curves.csv`]({rel}/curves.csv), [`final.csv`]({rel}/final.csv), "
                      f"[`metrics.json`]({rel}/metrics.json).", ""])
