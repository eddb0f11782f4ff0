"""Generated blocks inside README.md and docs/*.md, filled from ``results/`` only.

A block is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``;
``python -m benchmarks render`` rewrites it with ``BLOCKS[NAME](results_dir)`` and
``render --check`` fails when a committed block differs from what the results files give (a test
runs it), so a quoted number cannot drift from its JSON. The functions below choose which figures
a block shows and how; every number comes from a results line, and a figure that no line holds
stops the rendering with the name of what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from benchmarks import REPO

BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n).*?(<!-- /results:(?P=name) -->)", re.S)


class MissingResult(LookupError):
    """A block asks for a figure that no results line holds."""


def latest_line(results_dir: Path, name: str):
    """The last line (:class:`benchmarks._render.Line`) of benchmark ``name``'s results files."""
    from benchmarks._render import read_lines, results_files

    paths = results_files(results_dir).get(name)
    lines = [line for p in paths or [] for line in read_lines(p)]
    if not lines:
        raise MissingResult(f"no results line of {name!r} in {results_dir}")
    return lines[-1]


def latest(results_dir: Path, name: str) -> Any:
    """The result of the last line of benchmark ``name``'s results files."""
    return latest_line(results_dir, name).result


def measured_on(line) -> str:
    """Where and how a runner-recorded line was measured, and its command."""
    env = line.environment or {}
    commit = (env.get("git_commit") or "")[:10] or "unknown"
    return (f"Measured on {env.get('cpu')} ({env.get('threads')} threads), torch {env.get('torch')}, "
            f"pellucid {env.get('pellucid')} (commit {commit}), {str(env.get('timestamp'))[:10]}: "
            f"`{env.get('command')}`.")


def evaluation(results_dir: Path, run: str, attack: str, budget: str | None = None,
               n: int | None = None, weights: str | None = None) -> dict:
    """The collected ``pellucid evaluate`` record of run directory ``run`` (``evaluations``
    benchmark) for ``attack`` (and ``budget``, ``n`` images, the weights' SHA-256 where given);
    the newest wins."""
    from benchmarks._render import read_lines, results_files

    found = None
    for path in results_files(results_dir).get("evaluations", []):
        for line in read_lines(path):
            items = line.result if isinstance(line.result, list) else [line.result]
            for item in items:
                if item.get("run") != run:
                    continue
                for record in item["evaluations"]:
                    if record["attack"] == attack and record.get("budget") == budget and \
                            (n is None or record["n"] == n) and \
                            (weights is None or record.get("weights_sha256") == weights):
                        found = record
    if found is None:
        raise MissingResult(f"no evaluation record of {run} for {attack} (budget {budget}, n {n})")
    return found


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def readme(results_dir: Path) -> str:
    """The README's results: the white-box models against their baselines (collected evaluation
    records), then one figure per other pillar (benchmark lines)."""
    rows, commands, row_cites = [], [], []  # row_cites: the numbers cited by each row

    def cite(record: dict) -> str:
        commands.append(record["command"])
        row_cites[-1].append(len(commands))
        return f"[{len(commands)}]"

    def model_row(label: str, data: str, run: str, pgd_n: int, autoattack: list[tuple[str, str, int]],
                  same_model: bool = False) -> None:
        """``same_model``: another run of the previous row's recipe; its commands share that row's line."""
        if not same_model:
            row_cites.append([])
        pgd = evaluation(results_dir, run, "pgd", n=pgd_n)
        pgd_cell = f"{pct(pgd['robust_accuracy'])} {cite(pgd)}"
        aa = []
        for title, budget, n in autoattack:  # of the same weights as the PGD row
            record = evaluation(results_dir, run, "autoattack", budget, n, weights=pgd.get("weights_sha256"))
            aa.append(f"{pct(record['robust_accuracy'])} {title} {cite(record)}")
        rows.append(f"| {label} | {data} | {pct(pgd['clean_accuracy'])} | "
                    f"{pgd_cell} | {'; '.join(aa) or '–'} |")

    model_row("`whitebox-mnist35` (no adversarial training)", "MNIST 3 vs 5, all 1,902, L-inf 0.3",
              "wb314", 1902, [("native budget", "native", 1902), ("adaptive attacks", "adaptive", 1902)])
    model_row("`whitebox-mnist35`, the AVX2-trained weights (`wb314-avx2`)", "MNIST 3 vs 5, all 1,902, L-inf 0.3",
              "wb314-avx2", 1902, [("native-standard budget", "native-standard", 1902),
                                   ("ART's white-box stages + pellucid's Square", "standard-native", 1902)],
              same_model=True)
    model_row("`whitebox-mnist10` (no adversarial training)", "MNIST, all 10,000, L-inf 0.3",
              "wb10-noise15", 10000, [("native-standard budget", "native-standard", 10000)])
    for seed in (1, 2):
        model_row(f"the same recipe, `--seed {seed}` (`wb10-noise15-s{seed}`)", "MNIST, all 10,000, L-inf 0.3",
                  f"wb10-noise15-s{seed}", 10000, [("native-standard budget", "native-standard", 10000)],
                  same_model=True)
    # the earlier recipe (noise std 0.25, wb10-cos, wb10-retrain): docs/beyond-3v5.md
    model_row("`lenet-mnist10` (plain training)", "MNIST, all 10,000, L-inf 0.3", "lenet10", 10000,
              [("native-standard budget", "native-standard", 10000)])
    model_row("`lenet-mnist10-adv` (PGD adversarial training)", "MNIST, all 10,000, L-inf 0.3", "lenet10-adv",
              10000, [("standard-native budget", "standard-native", 10000)])
    model_row("`whitebox-fashion10` (no adversarial training)", "Fashion-MNIST, all 10,000, L-inf 0.1",
              "wbf10", 10000, [("native-standard budget", "native-standard", 10000)])
    model_row("`lenet-fashion10-adv` (PGD adversarial training)", "Fashion-MNIST, all 10,000, L-inf 0.1",
              "lenetf10-adv", 10000, [("native-standard budget", "native-standard", 10000)])
    table = ["| model | test images, threat | clean | PGD-40 | AutoAttack |", "|---|---|---|---|---|", *rows]

    pull = latest(results_dir, "bench_pullback")["results"]["batch8"]["ratios"]
    inh = latest(results_dir, "inh_mnist")
    square = latest(results_dir, "attack_speed")["attacks"]["square-native"]
    resnet = latest(results_dir, "metric_resnet_standin")
    forms = ", ".join(f"{m} {v['final_test_accuracy']:.2f} %" for m, v in
                      sorted(resnet["metrics"].items(), key=lambda kv: -kv[1]["final_test_accuracy"]))
    other = ["| what | measured | reproduce |", "|---|---|---|",
             f"| excitation pullback vs input gradient, ResNet-50, 8 images of 224 px, CPU | "
             f"{pull['pullback_vs_gradient_time']:.2f}x the time, "
             f"{pull['pullback_vs_gradient_memory_rise']:.2f}x the peak memory rise | "
             "`python -m benchmarks bench_pullback --batches 1 8 --repeats 5` |",
             f"| Square attack with window queries vs full forward passes (white-box network, "
             f"{latest(results_dir, 'attack_speed')['n']} images, {square['queries']:,} queries) | "
             f"{square['window_query_speedup']:.1f}x faster, same points: {str(square['same_points']).lower()} | "
             "`python -m benchmarks attack_speed runs/wb314 --n 500 --attacks square-native --queries 5000 "
             "--threads 1` |",
             f"| Incremental Neural Hashing, MNIST test set | {pct(inh['test_accuracy'])} with "
             f"{inh['slots']:,} slots, fitted in {inh['fit_seconds']:.0f} s | `python -m benchmarks inh_mnist` |",
             f"| metric ResNet-20 on Fashion-MNIST ({resnet['train_limit']:,} images x {resnet['epochs']} "
             f"epochs, one seed; the CIFAR-10 recipe's stand-in) | {forms} | `python -m benchmarks "
             f"metric_resnet_standin --train-limit {resnet['train_limit']} --epochs {resnet['epochs']}` |"]
    # one line per model: its rows' commands
    notes = [" · ".join(f"[{i}] `{commands[i - 1]}`" for i in cited) + "  " for cited in row_cites if cited]
    notes[-1] = notes[-1].rstrip()
    return "\n".join(table + [""] + notes + [""] + other) + "\n"


def whitebox_seeds(results_dir: Path) -> str:
    """docs/whitebox.md's results table: the default recipe over training seeds, the authors'
    weights evaluated the same way, and the paper's figures (quoted)."""
    line = latest_line(results_dir, "whitebox_seeds")
    result = line.result
    keys = ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "reliability_auc")

    def cells(row: dict) -> str:
        spread = row.get("over_attack_seeds", {}).get("robust_accuracy")
        robust = pct(row["robust_accuracy"]) + (
            f" (attack seeds: {pct(spread['min'])}-{pct(spread['max'])})" if spread else "")
        return " | ".join([pct(row["clean_accuracy"]), robust, pct(row["precision_at_recall_0.8"]),
                           pct(row["reliability_auc"])])

    epochs = line.config["epochs"]  # the runner records every line's parsed arguments
    rows = [f"| seed {r['seed']}{' (the default)' if r['seed'] == 314 else ''}, {epochs} epochs in "
            f"{r['train_seconds']:.0f} s (validation included) | {cells(r)} |" for r in result["runs"]]
    agg = result["aggregate"]
    rows.append(f"| {len(result['runs'])} seeds, mean ± std | " + " | ".join(
        f"{pct(agg[k]['mean'])} ± {100 * agg[k]['std']:.2f}" for k in keys) + " |")
    if "authors_weights" in result:
        rows.append(f"| the authors' published weights (`tests/fixtures`), evaluated the same way | "
                    f"{cells(result['authors_weights'])} |")
        paper = result["paper"]
        rows.append(f"| paper (quoted) | {pct(paper['clean_accuracy'])} | {pct(paper['robust_accuracy'])} | "
                    f"~{pct(paper['precision_at_recall_0.8'])} | |")
    head = ["| run | clean | PGD-40 | precision at 80 % recall | reliability AUC |", "|---|---|---|---|---|"]
    return "\n".join(head + rows + ["", measured_on(line)]) + "\n"


def whitebox_speed(results_dir: Path) -> str:
    """docs/whitebox.md's speed table: pellucid against TwoStep trained through its autograd graph,
    its PyTorch path (the C loops off) and the dense-conv baseline, all in the same process, and
    (when the line has it) against another revision in alternating processes."""
    line = latest_line(results_dir, "whitebox_speed")
    r = line.result
    if "epoch_seconds_twostep_graph" not in r:  # a line of the layout before the fused TwoStep
        return "Re-run `python -m benchmarks whitebox_speed --whole-run --against REV`: the latest line has an older layout.\n"
    rows = ["| measure | pellucid | TwoStep as autograd graph | ratio | PyTorch path (C loops off) | ratio "
            "| dense-conv baseline | ratio |",
            "|---|---|---|---|---|---|---|---|",
            f"| training epoch, {r['train_images']:,} images, no validation | {r['epoch_seconds']:.2f} s | "
            f"{r['epoch_seconds_twostep_graph']:.2f} s | {r['epoch_speedup_vs_twostep_graph']:.2f}x | "
            f"{r['epoch_seconds_pytorch_path']:.2f} s | {r['epoch_speedup_vs_pytorch_path']:.2f}x | "
            f"{r['epoch_seconds_dense_conv_baseline']:.2f} s | {r['epoch_speedup_vs_baseline']:.1f}x |",
            f"| PGD-40 on the full test set | {r['pgd40_full_test_seconds']:.2f} s "
            f"({r['pgd40_images_per_second']:.0f} images/s) | | | "
            f"{r['pgd40_images_per_second_pytorch_path']:.0f} images/s | {r['pgd40_speedup_vs_pytorch_path']:.2f}x | "
            f"{r['pgd40_images_per_second_dense_conv_baseline']:.0f} images/s | "
            f"{r['pgd40_speedup_vs_baseline']:.1f}x |"]
    if "whole_default_run_seconds" in r:
        rows.append(f"| whole default `pellucid train whitebox-mnist35` (fresh process, validation "
                    f"included) | {r['whole_default_run_seconds']:.1f} s |" + " |" * 6)
    out = rows + [""]
    if "against" in r:
        a = r["against"]
        out += [f"Against commit `{a['revision']}` (alternating fresh processes, the same epoch loop): "
                f"epochs of {', '.join(f'{t:.2f}' for t in a['epoch_seconds_revision'])} s there and "
                f"{', '.join(f'{t:.2f}' for t in a['epoch_seconds_checkout'])} s here, "
                f"**{a['epoch_speedup_vs_revision']:.2f}x** (fastest against fastest).", ""]
    return "\n".join(out + [measured_on(line)]) + "\n"


def parameters(model_name: str) -> str:
    """The registered model's parameter count (built, not trained: the count is the recipe's)."""
    from pellucid.models import create_model

    return f"{sum(p.numel() for p in create_model(model_name).parameters()):,}"


# AutoAttack budgets a table cell may show, the fullest first: the reference "standard" list, all
# pellucid's own, then ART's white-box stages with pellucid's Square
AUTOATTACK_BUDGETS = ("native-standard", "standard-native")


def _autoattack_cell(results_dir: Path, run: str, n: int, weights: str | None, subset: int = 1000) -> str:
    """``run``'s AutoAttack robust accuracy on the same ``n`` images (the fullest budget recorded),
    else on its first ``subset`` images, saying so, else "not run". Only a record of the same
    ``weights`` (SHA-256) counts: a retrained run's old records describe other weights."""
    for images, note in ((n, ""), (subset, f"first {subset:,} images, ")):
        for budget in AUTOATTACK_BUDGETS:
            try:
                record = evaluation(results_dir, run, "autoattack", budget, images, weights=weights)
            except MissingResult:
                continue
            return f"{pct(record['robust_accuracy'])} ({note}`{budget}`)"
    return "not run"


def _pgd_rows(results_dir: Path, runs: list[tuple[str, str, str]], n: int) -> list[str]:
    """One row per ``(run, label, training)``: its PGD-40 record's figures, and its AutoAttack
    (:func:`_autoattack_cell`) where one is recorded."""
    rows = []
    for run, label, training in runs:
        r = evaluation(results_dir, run, "pgd", n=n)
        low, high = r["precision_at_recall_0.8_ci95"]
        precision = (f"{pct(r['precision_at_recall_0.8'])} (95 % interval {100 * low:.2f}-{100 * high:.2f})"
                     if r["robust_accuracy"] > 0 else "(no correct prediction under attack)")
        autoattack = _autoattack_cell(results_dir, run, n, r.get("weights_sha256"))
        rows.append(f"| {label} | {parameters(r['model'])} | {training} | {pct(r['clean_accuracy'])} | "
                    f"{pct(r['robust_accuracy'])} | {autoattack} | {precision} | {pct(r['reliability_auc'])} |")
    return ["| model | parameters | training | clean | PGD-40 | AutoAttack | precision at 80 % recall "
            "(PGD-40) | reliability AUC |", "|---|---|---|---|---|---|---|---|", *rows]


def beyond_mnist10(results_dir: Path) -> str:
    """docs/beyond-3v5.md: ten-digit MNIST, PGD-40 at eps 0.3 on all 10,000 test images."""
    return "\n".join(_pgd_rows(results_dir, [
        ("wb10-noise15", "`whitebox-mnist10`", "20 cosine epochs, noise augmentation (std 0.15)"),
        ("wb10-noise15-s1", "`whitebox-mnist10 --seed 1`", "the same, seed 1"),
        ("wb10-noise15-s2", "`whitebox-mnist10 --seed 2`", "the same, seed 2"),
        ("wb10-cos", "`whitebox-mnist10 --noise-std 0.25`", "20 cosine epochs, noise augmentation (std 0.25)"),
        ("wb10-retrain", "`whitebox-mnist10 --noise-std 0.25`, trained again on another CPU", "the same"),
        ("wb10", "`whitebox-mnist10 --noise-std 0.25 --epochs 15 --schedule constant`", "the 3-vs-5 schedule"),
        ("lenet10", "`lenet-mnist10`", "plain, 15 epochs"),
        ("lenet10-adv", "`lenet-mnist10-adv`", "PGD-7 at eps 0.3 (5-epoch ramp), 15 epochs"),
        ("madry10-adv", "`madry-cnn-mnist10-adv` (the large reference)",
         "PGD-7 at eps 0.3 (5-epoch ramp), 15 epochs")], 10000)) + "\n"


def beyond_fashion10(results_dir: Path) -> str:
    """docs/beyond-3v5.md: Fashion-MNIST, PGD-40 at eps 0.1 on all 10,000 test images."""
    return "\n".join(_pgd_rows(results_dir, [
        ("wbf10", "`whitebox-fashion10`", "plain (noise augmentation)"),
        ("lenetf10", "`lenet-fashion10`", "plain, 15 epochs"),
        ("lenetf10-adv", "`lenet-fashion10-adv`", "PGD-7 at eps 0.1"),
        ("madryf10-adv", "`madry-cnn-fashion10-adv` (the large reference)",
         "PGD-7 at eps 0.1 (5-epoch ramp), 15 epochs")], 10000)) + "\n"


def apgd_crosscheck(results_dir: Path) -> str:
    """docs/beyond-3v5.md: pellucid's native APGD attacks against ART's, every recorded line."""
    from benchmarks._render import read_lines, results_files

    names = {"ce": "APGD-CE", "dlr": "APGD-DLR", "t": "APGD-T, {n_targets} targets"}
    rows = ["| model, images | attack | native | ART | native - ART | broken by ART only | "
            "broken by native only | ART time / native time |", "|---|---|---|---|---|---|---|---|"]
    lines = [line for p in results_files(results_dir).get("apgd_crosscheck", []) for line in read_lines(p)]
    if not lines:
        raise MissingResult("no results line of 'apgd_crosscheck'")
    for line in lines:
        r = line.result
        images = f"`{r['model']}`, " + (f"all {r['n']:,}" if r["n"] in (1902, 10000) else f"first {r['n']:,}")
        for key, pair in r["pairs"].items():
            rows.append(
                f"| {images} (clean {pct(r['clean_accuracy'])}) | {names[key].format(**r)} | "
                f"{pct(pair['native_robust_accuracy'])} | {pct(pair['art_robust_accuracy'])} | "
                f"{pair['difference_points']:+.2f} points | "
                f"{', '.join(map(str, pair['art_breaks_native_does_not'])) or 'none'} | "
                f"{', '.join(map(str, pair['native_breaks_art_does_not'])) or 'none'} | "
                f"{pair['art_over_native_time']:.2f} ({pair['art_seconds']:.1f} s / {pair['native_seconds']:.1f} s) |")
    return "\n".join(rows) + "\n"


def fab_crosscheck(results_dir: Path) -> str:
    """docs/beyond-3v5.md: pellucid's FAB-T against torchattacks' FAB, every recorded line."""
    from benchmarks._render import read_lines, results_files

    rows = ["| model, images | targets | pellucid | torchattacks | pellucid - torchattacks | "
            "broken by torchattacks only | broken by pellucid only | torchattacks time / pellucid time |",
            "|---|---|---|---|---|---|---|---|"]
    lines = [line for p in results_files(results_dir).get("fab_crosscheck", []) for line in read_lines(p)]
    if not lines:
        raise MissingResult("no results line of 'fab_crosscheck'")

    def images(side: dict, key: str) -> str:
        return ", ".join(f"{i} ({d:.3f})" for i, d in zip(side["images"], side[key])) or "none"

    for line in lines:
        r = line.result
        shown = f"`{r['model']}`, " + (f"all {r['n']:,}" if r["n"] in (1902, 10000) else f"first {r['n']:,}")
        rows.append(
            f"| {shown} (clean {pct(r['clean_accuracy'])}, eps {r['eps']:g}) | {r['n_targets']} | "
            f"{pct(r['pellucid_robust_accuracy'])} | {pct(r['torchattacks_robust_accuracy'])} | "
            f"{r['difference_points']:+.2f} points | "
            f"{images(r['torchattacks_breaks_pellucid_does_not'], 'torchattacks_linf')} | "
            f"{images(r['pellucid_breaks_torchattacks_does_not'], 'pellucid_linf')} | "
            f"{r['torchattacks_over_pellucid_time']:.2f} ({r['torchattacks_seconds']:.1f} s / "
            f"{r['pellucid_seconds']:.1f} s) |")
    return "\n".join(rows) + "\n"


def budget_agreement(results_dir: Path) -> str:
    """docs/beyond-3v5.md: two AutoAttack budgets on the same weights, every recorded line."""
    from benchmarks._render import read_lines, results_files

    rows = ["| weights, images | first budget | second budget | first - second | broken by the first only | "
            "broken by the second only |", "|---|---|---|---|---|---|"]
    lines = [line for p in results_files(results_dir).get("budget_agreement", []) for line in read_lines(p)]
    if not lines:
        raise MissingResult("no results line of 'budget_agreement'")

    def budget(side: dict) -> str:
        return (f"`{side['budget']}`: {pct(side['robust_accuracy'])} ({side['robust_images']:,}), "
                f"{side['attack_seconds']:.0f} s of attacks")

    for line in lines:
        r = line.result
        shown = f"`runs/{r['run']}`, " + (f"all {r['n']:,}" if r["n"] in (1902, 10000) else f"first {r['n']:,}")
        rows.append(f"| {shown} (clean {pct(r['first']['clean_accuracy'])}, eps {r['eps']:g}) | "
                    f"{budget(r['first'])} | {budget(r['second'])} | {r['difference_points']:+.2f} points | "
                    f"{', '.join(map(str, r['broken_by_first_only'])) or 'none'} | "
                    f"{', '.join(map(str, r['broken_by_second_only'])) or 'none'} |")
    return "\n".join(rows) + "\n"


# explain_table's metrics, in column order, with their short names
EXPLAIN_COLUMNS = {"infidelity": "INFD", "faithfulness_correlation": "FC", "faithfulness_estimate": "FE",
                   "monotonicity_correlation": "MC", "max_sensitivity": "SENS", "random_logit": "RL",
                   "model_parameter_randomisation": "MPRT", "deletion": "DEL", "insertion": "INS",
                   "pointing_game": "PG", "focus": "Focus"}


def explain_table(result: dict) -> str:
    """One explanation table: a row per method, a column per metric (3 significant digits), the
    best value of each column in bold (by its direction; the first on an exact tie), ``n/a`` where
    a method gave no value, and the rows' notes below."""
    rows = result["rows"]
    cells = {(r["method"], r["metric"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [m for m in EXPLAIN_COLUMNS if any(r["metric"] == m for r in rows)]
    best = {}
    for metric in metrics:
        scored = [(cells[(m, metric)]["mean"], m) for m in methods
                  if (m, metric) in cells and cells[(m, metric)]["mean"] is not None]
        if scored:
            higher = cells[(scored[0][1], metric)]["higher_is_better"]
            best[metric] = (max if higher else min)(scored, key=lambda s: s[0])[1]
    arrow = {True: " ↑", False: " ↓"}
    head = ["| method | " + " | ".join(EXPLAIN_COLUMNS[m] + arrow[cells[(methods[0], m)]["higher_is_better"]]
                                       for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    body = []
    for method in methods:
        out = []
        for metric in metrics:
            r = cells.get((method, metric))
            if r is None or r["mean"] is None:
                out.append("n/a")
            else:
                text = f"{r['mean']:.3g}"
                out.append(f"**{text}**" if best.get(metric) == method else text)
        body.append(f"| {method} | " + " | ".join(out) + " |")
    notes: dict[str, list[str]] = {}  # note -> the methods whose rows carry it
    for r in rows:
        if r.get("note") and r["method"] not in notes.setdefault(r["note"], []):
            notes[r["note"]].append(r["method"])
    lines = [f"Note ({', '.join(m)}): {n.rstrip('.')}." for n, m in notes.items()]
    return "\n".join(head + body + ([""] + lines if lines else [])) + "\n"


def explain_tables(results_dir: Path) -> str:
    """docs/explain-metrics.md: the latest explanation table of each model and target."""
    from benchmarks._render import read_lines, results_files

    latest_by: dict = {}
    for path in results_files(results_dir).get("explain_table", []):
        for line in read_lines(path):
            latest_by[(line.result["model"], line.result["target"])] = line.result
    if not latest_by:
        raise MissingResult("no results line of 'explain_table'")
    out = []
    for result in latest_by.values():
        seconds = f", {result['seconds']} s" if result.get("seconds") else ""
        out += [f"**{result['model']}** ({result.get('registered') or result['model']}, target: "
                f"{result['target']}, n = {result['n']}{seconds})", "", explain_table(result)]
    return "\n".join(out)


def _all_results(results_dir: Path, name: str) -> list:
    from benchmarks._render import read_lines, results_files

    results = [line.result for p in results_files(results_dir).get(name, []) for line in read_lines(p)]
    if not results:
        raise MissingResult(f"no results line of {name!r}")
    return results


def metric_resnet_standin(results_dir: Path) -> str:
    """docs/metric.md: the metric ResNet-20 stand-in, one table per recorded budget."""
    forms = {"linear": "linear (`nn.Conv2d`)", "l2": "l2 (`L2DistanceConv2d`)",
             "stereo": "stereo (`StereoAngle`, conv path)"}
    out = []
    for r in _all_results(results_dir, "metric_resnet_standin"):
        scored = f"the first {r['test_limit']:,} test images" if r["test_limit"] else "all 10,000 test images"
        out += [f"**{r['train_limit']:,} training images x {r['epochs']} epochs**, seed {r['seed']}, test accuracy "
                f"per epoch on {scored} (published on CIFAR-10 in brackets)", "",
                "| convolution | parameters | test accuracy per epoch | train time |", "|---|---|---|---|"]
        for metric, label in forms.items():
            m = r["metrics"][metric]
            curve = " / ".join(f"{a:.2f}" for a in m["curve"][:-1]) + f" / **{m['curve'][-1]:.2f}**"
            out.append(f"| {label} | {m['parameters']:,} | {curve} [{m['published_cifar10']:.2f}] | "
                       f"{m['train_seconds']:.0f} s |")
        out.append("")
    return "\n".join(out)


def unit_alignment(results_dir: Path) -> str:
    """docs/research-log.md: unit gradients on noise, alignment per model (the latest line)."""
    labels = {"disjunction-mnist35": "disjunction", "disjunction-positive-mnist35": "disjunction, positive",
              "directional-mnist35": "directional", "directional-positive-mnist35": "directional, positive",
              "lenet-mnist35": "LeNet (ReLU)"}
    models = latest(results_dir, "unit_alignment")["models"]
    rows = ["| model | accuracy | parameters | A (repr.) | A (output) | agreement | A centred | "
            "agreement centred |", "|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        rows.append(f"| {labels.get(name, name)} | {pct(m['accuracy'])} | {m['parameters']:,} | "
                    f"{m['A_representation_mean']:.3f} | {m['A_output_mean']:.3f} | "
                    f"{m['agreement_representation_mean']:.3f} | {m['A_centred_representation_mean']:.3f} | "
                    f"{m['agreement_centred_representation_mean']:.3f} |")
    return "\n".join(rows) + "\n"


def conv_input_gradient(results_dir: Path) -> str:
    """docs/robust.md: oneDNN's conv backward-data against ATen's direct kernel, per layer and per
    attack (the latest line)."""
    line = latest_line(results_dir, "conv_input_gradient")
    r = line.result
    rows = ["| layer (256 images) | oneDNN backward-data | direct kernel | ratio | largest difference / largest entry |",
            "|---|---|---|---|---|"]
    for row in r["layers"]:
        rerouted = "" if row["in_channels"] <= 3 else " (not rerouted)"
        rows.append(f"| {row['layer']}{rerouted} | {row['default_ms']:.1f} ms | {row['direct_ms']:.1f} ms | "
                    f"{row['speedup']:.2f}x | {row['max_abs_difference']:.1e} / {row['max_abs_gradient']:.0f} |")
    attacks = r.get("attacks")
    if attacks:
        rows += ["", f"| attack on `{line.config.get('run_dir')}` (`{attacks['model']}`), {attacks['n']:,} test "
                 f"images, eps {attacks['eps']:g} | "
                 "oneDNN everywhere | direct kernel for the first layer | ratio | robust accuracy (oneDNN / direct) |",
                 "|---|---|---|---|---|"]
        for name in ("pgd", "apgd-ce-native"):
            a = attacks[name]
            rows.append(f"| {'PGD-40' if name == 'pgd' else name} | {a['default_seconds']:.1f} s | "
                        f"{a['direct_seconds']:.1f} s | {a['speedup']:.2f}x | "
                        f"{pct(a['robust_accuracy_default'])} / {pct(a['robust_accuracy_direct'])} |")
    return "\n".join(rows + ["", measured_on(line)]) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {"readme": readme, "whitebox-seeds": whitebox_seeds,
                                            "metric-resnet-standin": metric_resnet_standin,
                                            "unit-alignment": unit_alignment,
                                            "explain-tables": explain_tables,
                                            "whitebox-speed": whitebox_speed,
                                            "beyond-mnist10": beyond_mnist10,
                                            "beyond-fashion10": beyond_fashion10,
                                            "apgd-crosscheck": apgd_crosscheck,
                                            "fab-crosscheck": fab_crosscheck,
                                            "budget-agreement": budget_agreement,
                                            "conv-input-gradient": conv_input_gradient}


def fill(text: str, results_dir: Path) -> str:
    """``text`` with every known block re-rendered (unknown block names raise)."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise MissingResult(f"no generator for block {name!r} (known: {', '.join(BLOCKS)})")
        return match[1] + BLOCKS[name](results_dir) + match[3]

    return BLOCK.sub(one, text)


def documents() -> list[Path]:
    """The files that may hold blocks: README.md and docs/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def stale(results_dir: Path, paths: list[Path] | None = None) -> dict[Path, str]:
    """``{path: new text}`` for every document whose blocks differ from a fresh rendering."""
    out = {}
    for path in paths or documents():
        text = path.read_text()
        new = fill(text, results_dir)
        if new != text:
            out[path] = new
    return out
