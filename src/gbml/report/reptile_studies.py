"""The report's sections for Nichol et al. 2018's own analyses (gradient combinations, minibatch
overlap, the Taylor terms of the updates): each states the paper's claim and ours side by side, from
the study stage's metrics.json; the helpers shared with the other studies' sections are in studies.py."""

from __future__ import annotations

import json
from pathlib import Path

from gbml.report.studies import data_files, pct, study_section


GRADIENT_COMBINATIONS_OURS = (
    "**Ours** ({ways}-way {shots}-shot Omniglot, {meta_iters:,} meta-iterations (the paper: 40,000), seeds "
    "{seed_list}; held-out accuracy on {eval_tasks} test tasks after {eval_inner_iters} SGD steps, {mode}, "
    "mean ± 95% interval over seeds x tasks; differences at the last point paired task by task):")
MINIBATCH_OVERLAP_OURS = (
    "**Ours** ({ways}-way Omniglot, tasks of {train_shots} examples per class (separate tail: {tail_shots} of "
    "them), minibatches of {inner_batch}, {meta_iters:,} meta-iterations per unit, seeds {seed_list}; final "
    "accuracy on {eval_tasks} test tasks ({shots}-shot, {eval_inner_iters} SGD steps), mean ± 95% interval "
    "over seeds x tasks, differences paired task by task):")


def ours(template: str, cfg: dict) -> str:
    """A section's "Ours" line (what we ran): ``template`` filled from the study's config, with
    ``seed_list`` (the seeds, comma-separated) and ``mode`` (the evaluation mode as prose)."""
    return template.format(**cfg, seed_list=", ".join(map(str, cfg["seeds"])),
                           mode=cfg["eval_mode"].replace("_", "-"))


GRADIENT_COMBINATIONS_CLAIM = (
    "**Paper** (Nichol et al. 2018, section 6.2, Figure 3: 5-way 5-shot Omniglot, inner minibatches of 25, "
    "plain SGD, 40,000 meta-iterations): with one inner step (k = 1) the update is the gradient of the "
    "expected loss over tasks -- joint training -- which \"learns very little\" when zero-shot learning is "
    "not possible (the authors' announcement of the paper); an update built from later inner-loop gradients "
    "(k > 1: first-order MAML's last gradient gk, Reptile's sum g1 + ... + gk) learns an initialisation "
    "that adapts. Figure 3 also orders the k > 1 arms; that ordering is shown below, not quoted "
    "(not checked against the paper's text here).")


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

    def body(metrics: dict, cfg: dict, rel: str) -> list[str]:
        return [ours(GRADIENT_COMBINATIONS_OURS, cfg), "", *gradient_combinations_verdict(metrics), "",
                f"![gradient combinations]({rel}/curves.png)", "", *gradient_combinations_table(metrics), "",
                data_files(rel, ("curves.csv", "final.csv", "metrics.json"))]
    return study_section(study_dir, report_dir, title, GRADIENT_COMBINATIONS_CLAIM, "gradient_combinations", body)


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

    def body(metrics: dict, cfg: dict, rel: str) -> list[str]:
        figure, table = f"![minibatch overlap]({rel}/overlap.png)", minibatch_overlap_table(metrics)
        return [ours(MINIBATCH_OVERLAP_OURS, cfg), "", *minibatch_overlap_verdict(metrics), "", figure, "", *table,
                "", data_files(rel, ("final.csv", "metrics.json"))]
    return study_section(study_dir, report_dir, title, MINIBATCH_OVERLAP_CLAIM, "minibatch_overlap", body)


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

    def body(metrics: dict, cfg: dict, rel: str) -> list[str]:
        align = metrics["alignment"]
        return [f"**Ours** ({cfg['ways']}-way Omniglot training tasks, two disjoint minibatches of "
                f"{cfg['inner_batch']} ({cfg['inner_loss']} loss), at the random initialisations of seeds "
                f"{', '.join(map(str, cfg['seeds']))}, {cfg['tasks']} tasks each in both minibatch orders; float64; "
                "each update computed exactly by autograd through the inner step, the terms as gradients and "
                "Hessian-vector products; errors are |update - expansion| / |update|, mean over seeds x tasks x "
                "orders):", "", *taylor_verdict(metrics), joint_training_line(study_dir),
                f"- The inner product the expansion's second term ascends, at these initialisations: gbar_1 . gbar_2 "
                f"= {align['inner']:.3g} ± {align['inner_ci95']:.2g} (cosine {align['cosine']:.3f} ± "
                f"{align['cosine_ci95']:.3f}) over seeds x tasks.", "",
                f"![Taylor expansion]({rel}/taylor.png)", "", *taylor_table(metrics), "",
                data_files(rel, ("errors.csv", "expected.csv", "metrics.json"))]
    return study_section(study_dir, report_dir, title, TAYLOR_CLAIM, "taylor_terms", body,
                         why="no initialisation to measure at")
