"""Images per second of every attack on a trained model, and of its inference forward pass.

Each attack runs once on the first ``--n`` test images (L-inf eps 0.3, true labels; Square
with ``--queries`` queries, so its figure scales as about 1 / queries). The forward figure is
compared, in the same process, with the same forward computing the rotation-conv max with
argmax indices (what the layer did before the inference path skipped them). ``square-native`` is
also run, same seed, on the model hidden behind a plain wrapper, so that every query is a full
forward pass instead of the white-box network's window queries: the ratio of the two times, and
whether both found the same points. Prints ONE JSON line.

    python -m benchmarks attack_speed runs/seeds/seed314 --n 200
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Images per second of every attack and of the inference forward pass on a trained model"
EXPECTED_TIME = ("minutes: 232 s for --n 500 --queries 5000 --attacks square-native with one thread "
                 "(results/attack_speed.jsonl); the default attack set is not recorded")

ATTACK_SETTINGS = {"fgsm": {}, "pgd": {"steps": 40}, "apgd-ce": {"steps": 100},
                   "apgd-dlr": {"steps": 100}, "deepfool": {"steps": 100}}


@contextlib.contextmanager
def argmax_forward():
    """The forward with argmax bookkeeping (``max(dim=1)``) in the conv layer: the baseline."""
    import pellucid.nn.semantic.rotation_conv as rc

    original = rc.max_correlation

    def with_index(x, weight, return_index=True):
        return original(x, weight, return_index=True)

    rc.max_correlation = with_index
    try:
        yield
    finally:
        rc.max_correlation = original


def full_forwards(model):
    """The model without its ``window_queries``: Square's baseline of one full forward per query."""
    from torch import nn

    class FullForwards(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    return FullForwards(model)


def images_per_s(f, n: int, repeats: int = 3) -> float:
    f()
    t = time.perf_counter()
    for _ in range(repeats):
        f()
    return n * repeats / (time.perf_counter() - t)


def parser():
    p = h.parser(__name__, __doc__, threads=None)
    p.add_argument("model_dir")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--attacks", nargs="+", default=[*ATTACK_SETTINGS, "square", "square-native"],
                   choices=[*ATTACK_SETTINGS, "square", "square-native"])
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from pellucid.data import load_dataset
    from pellucid.models import load_model
    from pellucid.robust import evaluate_robustness

    model, config = load_model(Path(args.model_dir))
    test = load_dataset(config["data"]["dataset"], "test", classes=config["data"].get("classes"))
    x, y = test.images[: args.n], test.labels[: args.n]
    model.eval()
    with torch.no_grad():
        full = test.images
        fast = images_per_s(lambda: model(full), len(full))
        with argmax_forward():
            base = images_per_s(lambda: model(full), len(full))
    rows = {}
    settings = {**ATTACK_SETTINGS, "square": {"queries": args.queries},
                "square-native": {"queries": args.queries}}
    for name, kw in {k: settings[k] for k in args.attacks}.items():
        t = time.perf_counter()
        res = evaluate_robustness(model, x, y, attack=name, eps=0.3, **kw)
        s = time.perf_counter() - t
        rows[name] = {**kw, "seconds": round(s, 2), "images_per_s": round(len(x) / s, 2),
                      "robust_accuracy": res.robust_accuracy}
        if name == "square-native" and hasattr(model, "window_queries"):
            t = time.perf_counter()
            plain = evaluate_robustness(full_forwards(model), x, y, attack=name, eps=0.3, **kw)
            s_plain = time.perf_counter() - t
            rows[name].update(full_forward_seconds=round(s_plain, 2), window_query_speedup=round(s_plain / s, 2),
                              same_points=bool(torch.equal(plain.adversarial, res.adversarial)))
    return {"model": config["model"], "n": len(x), "threads": torch.get_num_threads(),
            "forward_images_per_s": round(fast), "forward_baseline_images_per_s": round(base),
            "forward_speedup": round(fast / base, 2), "attacks": rows}


if __name__ == "__main__":
    h.script(__name__)
