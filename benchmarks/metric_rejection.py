"""Adversarial rejection with the epsilon-softmax dictionary MLP on Fashion-MNIST ("Metric as
Transform", rejection protocol), against a softmax baseline at the same clean rejection rate.

For each setting (keys random or data-initialised, key learning rate x1 or x0.01) and each H: train
a dictionary MLP (Adam lr 0.01, running-mean epsilon). For each attack of the protocol (FGSM, FGM,
L-inf and L2 PGD, L-inf and L2 Adam-PGD, L2 basic iterative) keep only its direction, step a fixed
L2 length alpha in [-1, 1] pixel space, clip to [-b, b], and search epsilon for the minimum
measure = (failed + x_rejected) / count, in every (alpha, b) cell of the grid (default alpha in
{0.5, 1, 3, 9, 20}, b in {1, 10}; one attack run per epsilon serves all cells), among the epsilons
that reject at least ``--min-noise-rejection`` (default 99 %) of 1,000 uniform-noise images (the
measure alone ignores noise; negative: the paper's measure-only search). Also: uniform-noise
rejection at the trained and at the best epsilon, and the selective-accuracy-vs-coverage area.

Baseline (``--baseline``, default on): ``plain-mlp`` trained for the same epochs, rejecting where
its largest softmax probability is below tau; for every cell tau is set so that it rejects as many
clean test images as the dictionary model at its best epsilon, and the same counts are reported.

Prints ONE JSON line (progress on stderr). ``--cost-only``: train one epoch per H (first setting),
time one search per attack and the baseline, and print the estimated cost of the full run instead.
``--render JSONL`` prints the Markdown tables of the file's last full result and measures nothing.
``nice -n 15 .venv/bin/python -m benchmarks metric_rejection``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Adversarial rejection of the epsilon-softmax dictionary MLP on Fashion-MNIST against a softmax baseline"
EXPECTED_TIME = "~30 min: 1,785 s with the defaults on one thread (results/metric_rejection.jsonl)"

# label -> (registered attack, its arguments), in image [0, 1] units: L-inf eps 0.3, L2 eps 3.0;
# PGD 20 steps of eps / 10; L2 Adam-PGD steps per coordinate (foolbox's eps / 40); L2 BIM: its
# defaults (foolbox's 10 steps of eps / 5, no random start)
ATTACKS = {"fgsm": ("fgsm", {"eps": 0.3}),
           "fgm": ("fgm", {"eps": 3.0}),
           "linf-pgd": ("pgd", {"eps": 0.3, "steps": 20, "step_size": 0.03, "norm": "linf"}),
           "l2-pgd": ("pgd", {"eps": 3.0, "steps": 20, "step_size": 0.3, "norm": "l2"}),
           "linf-adam-pgd": ("adam-pgd", {"eps": 0.3, "steps": 20, "step_size": 0.03, "norm": "linf"}),
           "l2-adam-pgd": ("adam-pgd", {"eps": 3.0, "steps": 20, "step_size": 0.075, "norm": "l2"}),
           "l2-bim": ("l2-bim", {"eps": 3.0})}
SETTINGS = ("data:0.01", "data:1", "random:0.01", "random:1")


def setting(text: str) -> tuple[str, bool, float]:
    """``INIT:SCALE`` (``data:0.01``) -> (text, data_init, centre_lr_scale)."""
    init, _, scale = text.partition(":")
    try:
        value = float(scale)
    except ValueError:
        value = -1.0
    if init not in ("data", "random") or not value >= 0:
        raise argparse.ArgumentTypeError(f"a setting is INIT:SCALE with INIT data or random and SCALE >= 0 "
                                         f"(the keys' learning-rate factor), got {text!r}")
    return text, init == "data", value


def positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def trained(train, cfg, out: Path):
    """Train (or resume) ``cfg`` into ``out``; the loaded model and the last epoch's record."""
    from pellucid.models import load_model
    from pellucid.train.checkpointing import has_training_state

    hist = train(cfg, out, resume=has_training_state(out), progress=False)["epochs"]
    return load_model(out)[0].eval(), hist[-1]


def run_dir(root: Path, hidden: int, epochs: int, data_init: bool, scale: float) -> Path:
    # data-initialised keys keep the directory name of the earlier runs (resumable with --runs-dir)
    return root / f"dictionary_{hidden}_e{epochs}{'' if data_init else '_random'}_lr{scale:g}"


def evaluate(model, x, y, attacks, args, baseline=None) -> dict:
    """The model-level figures and, per attack, the search over the grid (and the baseline's counts)."""
    from pellucid.robust.rejection import rejection_at_clean_rates, rejection_report

    row: dict = {"attacks": {}}
    for label in attacks:
        attack, kwargs = ATTACKS[label]
        rep = rejection_report(model, x, y, attack=attack, attack_kwargs=kwargs, alphas=args.alphas,
                               bounds=args.bounds, min_noise_rejection=args.min_noise_rejection)
        search = rep.pop("search")
        row.update(rep)  # the same for every attack
        entry = {"attack": attack, "seconds": search["seconds"], "attack_runs": search["attack_runs"],
                 "bounds": search["bounds"]}
        if baseline is not None:
            base = rejection_at_clean_rates(baseline["model"], x, y, search, attacked=baseline["attacked"](label))
            entry["baseline"] = {"seconds": base["seconds"], "bounds": base["bounds"]}
        row["attacks"][label] = entry
        h.log(f"  {label}: search {search['seconds']:.1f} s, {search['attack_runs']} attack runs")
    return row


def parser():
    from pellucid.robust.rejection import PROTOCOL_ALPHAS, PROTOCOL_BOUNDS

    p = h.parser(__name__, __doc__, threads=1)
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 500])
    p.add_argument("--settings", type=setting, nargs="+", default=[setting(s) for s in SETTINGS],
                   metavar="INIT:SCALE", help=f"keys data-initialised or random, key lr factor (default: "
                                              f"{' '.join(SETTINGS)})")
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS), metavar="ATTACK",
                   help=f"default: all ({', '.join(ATTACKS)})")
    p.add_argument("--alphas", type=positive, nargs="+", default=list(PROTOCOL_ALPHAS))
    p.add_argument("--bounds", type=positive, nargs="+", default=list(PROTOCOL_BOUNDS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n", type=int, default=1000, help="test images attacked")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="plain-mlp max-softmax-probability rejection at the same clean rejection rates")
    p.add_argument("--runs-dir", type=Path, default=None, metavar="DIR",
                   help="keep each trained model in DIR (checkpointed every epoch; re-running resumes)")
    p.add_argument("--min-noise-rejection", type=float, default=0.99, metavar="P",
                   help="epsilon search: only epsilons rejecting >= P of uniform noise (negative: "
                        "none, the paper's measure-only protocol)")
    p.add_argument("--cost-only", action="store_true",
                   help="train 1 epoch per H (first setting), time the searches, print the estimated cost")
    p.add_argument("--render", type=Path, default=None, metavar="JSONL",
                   help="print the Markdown tables of the last full result in JSONL and exit (no measurement)")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = h.parse(parser(), argv)
    if args.render is not None:
        from benchmarks._render import read_lines

        full = [line.result for line in read_lines(args.render) if "models" in line.result]
        print(render_markdown(full[-1]))
        return None
    import torch

    from pellucid.data import load_dataset
    from pellucid.robust.attacks import run_attack
    from pellucid.robust.rejection import MaxProbabilityRejector
    from pellucid.train.metric_recipes import (DictionaryMLPConfig, PlainMLPConfig, train_dictionary_mlp,
                                               train_plain_mlp)

    if args.min_noise_rejection < 0:
        args.min_noise_rejection = None
    test = load_dataset("fashion-mnist", "test")
    x, y = test.images[:args.n], test.labels[:args.n]
    epochs = 1 if args.cost_only else args.epochs
    settings = args.settings[:1] if args.cost_only else args.settings
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # without --runs-dir: throw-away run directories
        # --cost-only times training: never a resumed (already trained) run
        root = Path(tmp) if args.cost_only or args.runs_dir is None else args.runs_dir
        baseline = out_baseline = None
        if args.baseline:
            t = time.perf_counter()
            plain, last = trained(train_plain_mlp, PlainMLPConfig(epochs=epochs), root / f"plain_e{epochs}")
            rejector, directions, attack_seconds = MaxProbabilityRejector(plain), {}, {}

            def attacked(label: str) -> torch.Tensor:  # the plain model's attack(x): once per attack
                if label not in directions:
                    s = time.perf_counter()
                    attack, kwargs = ATTACKS[label]
                    directions[label] = run_attack(attack, rejector, x, y, generator=torch.Generator().manual_seed(0),
                                                   **kwargs).adversarial
                    attack_seconds[label] = round(time.perf_counter() - s, 3)
                return directions[label]

            baseline = {"model": rejector, "attacked": attacked}
            out_baseline = {"model": "plain-mlp", "test_accuracy": last["test_accuracy"],
                            "train_seconds": round(time.perf_counter() - t, 1), "attack_seconds": attack_seconds}
            h.log(f"plain-mlp: test accuracy {last['test_accuracy']:.4f}, {out_baseline['train_seconds']} s")
        models = {}
        for text, data_init, scale in settings:
            for hidden in args.hidden:
                cfg = DictionaryMLPConfig(hidden=hidden, epochs=epochs, data_init=data_init, centre_lr_scale=scale)
                t = time.perf_counter()
                model, last = trained(train_dictionary_mlp, cfg, run_dir(root, hidden, epochs, data_init, scale))
                key = f"{text}/H={hidden}"
                row = {"setting": text, "hidden": hidden, "data_init": data_init, "centre_lr_scale": scale,
                       "test_accuracy": last["test_accuracy"], "train_seconds": round(time.perf_counter() - t, 1)}
                h.log(f"{key}: test accuracy {last['test_accuracy']:.4f}, {row['train_seconds']} s")
                models[key] = row | evaluate(model, x, y, args.attacks, args, baseline)
    common = {"epochs": args.epochs, "n": args.n, "hidden": args.hidden,
              "settings": [s[0] for s in args.settings], "attacks": {k: ATTACKS[k] for k in args.attacks},
              "alphas": args.alphas, "bounds": args.bounds, "min_noise_rejection": args.min_noise_rejection}
    env = {"seconds": h.seconds_since(t0), "threads": args.threads, "device": "cpu"}
    if args.cost_only:
        return {**common, "cost_only": True, **estimate(models, out_baseline, args), **env}
    return {**common, "models": models, "baseline": out_baseline, **env}


def estimate(models: dict, baseline: dict | None, args) -> dict:
    """The full run's cost from one epoch and one search per (H, attack): every setting trains
    ``epochs`` epochs and runs the same searches (their cost does not depend on the setting)."""
    per_hidden = {}
    for row in models.values():
        searches = {label: a["seconds"] + a.get("baseline", {}).get("seconds", 0) for label, a in row["attacks"].items()}
        per_hidden[f"H={row['hidden']}"] = {"epoch_seconds": row["train_seconds"], "search_seconds": searches}
    total = len(args.settings) * sum(h["epoch_seconds"] * args.epochs + sum(h["search_seconds"].values())
                                     for h in per_hidden.values())
    if baseline is not None:
        total += baseline["train_seconds"] * args.epochs + sum(baseline["attack_seconds"].values())
    return {"per_hidden": per_hidden, "baseline": baseline, "estimated_seconds": round(total, 1),
            "estimated_hours": round(total / 3600, 2)}


def render_markdown(result: dict, detail: tuple[str, ...] = ("data:0.01",)) -> str:
    """Markdown tables of one result line: the models, the settings compared (mean measure over the
    attack x alpha cells, per bound, with the softmax baseline's), and for the ``detail`` settings the
    measure of every cell beside the baseline's."""
    models, alphas, bounds = result["models"], result["alphas"], result["bounds"]
    lines = ["| setting | H | test accuracy | trained epsilon | clean rejected | noise rejected | "
             "selective-accuracy area |", "|---|---|---|---|---|---|---|"]
    for row in models.values():
        lines.append(f"| {row['setting']} | {row['hidden']} | {row['test_accuracy'] * 100:.2f} % | "
                     f"{row['trained_epsilon']:.2f} | {row['clean_rejection_rate'] * 100:.1f} % | "
                     f"{row['noise_rejection_rate'] * 100:.1f} % | {row['selective_accuracy_area']:.3f} |")

    def cells(row: dict, bound: float, key: str = "bounds"):
        for label, a in row["attacks"].items():
            src = a if key == "bounds" else a.get("baseline")
            if src is not None:
                for alpha in alphas:
                    yield label, alpha, src["bounds"][str(float(bound))][str(float(alpha))]

    lines += ["", "| setting | H | " + " | ".join(f"mean measure, b = {b:g} (softmax baseline)" for b in bounds)
              + " | adversarial rejected at alpha 9, b = 1 (mean over attacks) |",
              "|---|---|" + "---|" * (len(bounds) + 1)]
    for row in models.values():
        parts = []
        for b in bounds:
            ours = [c["measure"] for *_, c in cells(row, b)]
            base = [c["measure"] for *_, c in cells(row, b, "baseline")]
            parts.append(f"{sum(ours) / len(ours):.3f}" + (f" ({sum(base) / len(base):.3f})" if base else ""))
        rej = [c["adversarial_rejection_rate"] for _, alpha, c in cells(row, bounds[0]) if alpha == 9]
        rej_text = f"{sum(rej) / len(rej) * 100:.1f} %" if rej else "-"
        lines.append(f"| {row['setting']} | {row['hidden']} | " + " | ".join(parts) + f" | {rej_text} |")
    for row in models.values():
        if row["setting"] not in detail:
            continue
        for b in bounds:
            lines += ["", f"**{row['setting']}, H = {row['hidden']}, b = {b:g}**: measure (softmax baseline's "
                      f"at the same clean rejection rate); adversarial / clean rejected", "",
                      "| attack | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
                      "|---|" + "---|" * len(alphas)]
            by_attack: dict[str, list[str]] = {}
            base = {(label, alpha): c for label, alpha, c in cells(row, b, "baseline")}
            for label, alpha, c in cells(row, b):
                other = base.get((label, alpha))
                text = f"{c['measure']:.3f}" + (f" ({other['measure']:.3f})" if other else "")
                text += f"; {c['adversarial_rejection_rate'] * 100:.0f} / {c['clean_rejection_rate'] * 100:.0f} %"
                by_attack.setdefault(label, []).append(text)
            lines += [f"| {label} | " + " | ".join(v) + " |" for label, v in by_attack.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    h.script(__name__)
