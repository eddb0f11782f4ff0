r"""Interpretable vs ReLU units, positive vs unconstrained convolutions: unit gradients on noise.

Trains five MNIST 3 vs 5 classifiers with their registered recipes (the code path of ``pellucid
train NAME``, each into a temporary directory): ``disjunction-mnist35``, its positive variant
``disjunction-positive-mnist35`` (conv weights ``>= 0``, BatchNorm without affine), the same pair
of directional networks, and the ReLU baseline ``lenet-mnist35``. Then, per model, for every
hidden unit ``u_j`` of its representation layer (the layer feeding the class head) and for every
class output:

* **A_j, noise-gradient alignment**: ``g_{j,i} = grad_x u_j(z_i)`` on ``n = 8`` noise images
  ``z_i = clamp(N(0.5, 0.25^2), 0, 1)`` (:func:`pellucid.explain.units.noise_inputs`, seed 0, the
  noise of ``pellucid inspect``), ``A_j = 2 / (n (n - 1)) sum_{i<j} cos(g_{j,i}, g_{j,i'})``, as
  :func:`pellucid.explain.units.gradient_alignment` (a zero gradient counts as cosine 0). Mean and
  median over the layer's units; ``dead_on_noise``: the fraction of units whose ``n`` noise
  gradients are all zero (they score A = 0).
* **agreement_j, noise-real agreement**: ``cos(gbar^noise_j, gbar^real_j)`` with ``gbar^noise_j
  = (1/n) sum_i g_{j,i}`` and ``gbar^real_j = (1/k) sum_{x in S_j} grad_x u_j(x)``, where ``S_j``
  (the images on which the unit is active) are the ``k = ceil(0.1 N)`` test images with the largest
  ``u_j(x)`` among the ``N = 1,902`` MNIST 3 vs 5 test images (ties: ``torch.topk``'s order); a
  zero mean gradient gives agreement 0. It asks whether the template read off noise is the one the
  unit uses on the digits that drive it. For a ReLU unit active on fewer than ``k`` images the
  others add zero gradient, so ``gbar^real`` is then proportional to the mean over its active
  images (the cosine does not see the factor). ``A_real``: the alignment A of the same unit's
  gradients on ``S_j`` (how input-dependent its gradient is on real digits).
* **A_centred, agreement_centred**: the same with every gradient (and mean gradient) minus its own
  mean over the 784 pixels first, i.e. Pearson correlations instead of cosines. A control for
  sign-constrained networks: two non-negative vectors always have cosine >= 0 (two independent
  uniform ones about 0.75) whatever their pattern, and the positive networks' input gradients are
  mostly non-negative; centring removes that shared offset. ``A_live_mean``: A over the units that
  are not dead on noise; ``positive_share``: over those units, the mean share of their non-zero
  noise-gradient entries that are positive.
* clean accuracy on the full test set, parameters, training epochs and seconds.

The disjunction networks report two hidden layers: ``parts`` (the BatchNorm1d outputs, 120 units)
and ``conjunctions`` (the Mean of 5 parts, 24 units, what the soft OR of each class reads: the
representation). The directional networks: the second convolution after the global max pool
(``features.6``, 120 units). LeNet: its penultimate ReLU (``classifier.4``, 84 units).

Gradients are batched across units: unit ``j``'s own inputs (the shared noise, or its ``S_j``) are
stacked for a chunk of units into one batch, the forward stops at the layer (a hook), and one
backward of ``sum_j sum_i u_j(x_{j,i})`` gives every ``grad_x u_j(x_{j,i})`` at once, exact
because in eval mode samples do not interact. A check recomputes A for two units per layer with
:func:`pellucid.explain.units.noise_gradient_alignment` and reports the largest difference.

Prints ONE JSON line. ``.venv/bin/python -m benchmarks unit_alignment [--epochs 15] [--threads 2]``
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

if TYPE_CHECKING:
    import torch
    from torch import nn

SUMMARY = "Interpretable against ReLU units, positive against unconstrained convolutions: unit gradients on noise"
EXPECTED_TIME = "~7 min: 432.5 s with the defaults (results/unit_alignment.jsonl)"

# model name -> {layer label: module path}; "output" ("" path) is the model's own output.
LAYERS = {
    "disjunction-mnist35": {"parts": "features.3", "conjunctions": "classifier.0"},
    "disjunction-positive-mnist35": {"parts": "features.3", "conjunctions": "classifier.0"},
    "directional-mnist35": {"representation": "features.6"},
    "directional-positive-mnist35": {"representation": "features.6"},
    "lenet-mnist35": {"representation": "classifier.4"},
}
REPRESENTATION = {"disjunction-mnist35": "conjunctions", "disjunction-positive-mnist35": "conjunctions"}


def layer_output(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module ``path`` (``""``: the model) on ``x``, flattened to ``(B, units)``; the
    forward stops there (:func:`pellucid.explain.layers.layer_output`)."""
    from pellucid.explain.layers import layer_output as explain_layer_output

    return explain_layer_output(model, path, x).flatten(1)


def per_unit_gradients(model: nn.Module, path: str, inputs: torch.Tensor,
                       max_batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``grads[j, i] = grad_x u_j(x)`` at ``x = inputs[j, i]`` and ``values[j, i] = u_j(inputs[j, i])``
    for the ``U`` units ``u_j`` of layer ``path``; ``inputs`` is ``(U, m, *shape)`` (unit ``j``'s own
    ``m`` inputs; pass ``x.expand(U, ...)`` to share them).

    A chunk of ``c`` units is one batch of ``c m`` inputs and one backward of ``sum_j sum_i
    u_j(inputs[j, i])``: exact per-sample gradients when samples do not interact (eval mode).
    """
    import torch

    units, m, shape = inputs.shape[0], inputs.shape[1], inputs.shape[2:]
    chunk = max(1, min(units, max_batch // max(1, m)))
    grads = torch.empty_like(inputs)
    values = inputs.new_empty(units, m)
    with torch.enable_grad():
        for start in range(0, units, chunk):
            c = min(chunk, units - start)
            leaf = inputs[start:start + c].reshape(c * m, *shape).detach().clone().requires_grad_(True)
            out = layer_output(model, path, leaf).reshape(c, m, -1)
            idx = torch.arange(start, start + c, device=out.device)
            picked = out[torch.arange(c, device=out.device), :, idx]  # (c, m): unit start + a on its inputs
            (g,) = torch.autograd.grad(picked.sum(), leaf, allow_unused=True)
            grads[start:start + c] = 0 if g is None else g.reshape(c, m, *shape)
            values[start:start + c] = picked.detach()
    return grads, values


def _centre(g: torch.Tensor, centred: bool) -> torch.Tensor:
    return g - g.mean(-1, keepdim=True) if centred else g


def cosine_rows(a: torch.Tensor, b: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """``cos(a_j, b_j)`` per row of ``(U, ...)`` tensors (float64), 0 where either row is zero;
    ``centred``: of the rows minus their own mean (Pearson correlation)."""
    import torch

    a, b = _centre(a.flatten(1).double(), centred), _centre(b.flatten(1).double(), centred)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(1) / denom.clamp_min(torch.finfo(a.dtype).tiny),
                       torch.zeros_like(denom))


def alignments(grads: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """Per unit, :func:`gradient_alignment` of its gradients ``grads[j]`` ``(U, n, ...)``, batched;
    ``centred``: of the gradients minus their own mean over the input's entries."""
    import torch

    g = _centre(grads.flatten(2).double(), centred)
    norms = g.norm(dim=2, keepdim=True)
    unit = torch.where(norms > 0, g / norms.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    n = g.shape[1]
    gram = unit @ unit.transpose(1, 2)
    return (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))


def active_sets(model: nn.Module, path: str, x: torch.Tensor, fraction: float,
                batch: int = 1024) -> torch.Tensor:
    """``(U, k)`` indices into ``x`` of each unit's ``k = ceil(fraction N)`` largest responses."""
    import torch

    with torch.no_grad():
        values = torch.cat([layer_output(model, path, xb) for xb in x.split(batch)])  # (N, U)
    k = max(1, math.ceil(fraction * x.shape[0]))
    return values.topk(k, dim=0).indices.T


def unit_scores(model: nn.Module, path: str, noise: torch.Tensor, images: torch.Tensor,
                fraction: float = 0.1) -> dict[str, torch.Tensor]:
    """Per unit of layer ``path``: noise alignment ``A``, noise-real ``agreement``, ``A_real`` and
    whether its noise gradients are all zero (``dead``), as defined in the module docstring."""
    import torch

    with torch.no_grad():
        units = layer_output(model, path, noise[:1]).shape[1]
    g_noise, _ = per_unit_gradients(model, path, noise.unsqueeze(0).expand(units, *noise.shape))
    active = active_sets(model, path, images, fraction)  # (U, k)
    g_real, _ = per_unit_gradients(model, path, images[active])  # (U, k, *shape)
    return {"A": alignments(g_noise), "agreement": cosine_rows(g_noise.mean(1), g_real.mean(1)),
            "A_real": alignments(g_real), "A_centred": alignments(g_noise, centred=True),
            "agreement_centred": cosine_rows(g_noise.mean(1), g_real.mean(1), centred=True),
            "positive_share": _positive_share(g_noise),
            "dead": g_noise.flatten(2).abs().amax((1, 2)) == 0}


def _positive_share(grads: torch.Tensor) -> torch.Tensor:
    """Per unit, the share of its non-zero noise-gradient entries that are > 0 (0 if none)."""
    import torch

    g = grads.flatten(1)
    nonzero = (g != 0).sum(1)
    return torch.where(nonzero > 0, (g > 0).sum(1) / nonzero.clamp_min(1), torch.zeros(()))


def _summary(scores: dict[str, torch.Tensor], path: str) -> dict:
    def stats(t: torch.Tensor) -> dict:
        v = t.tolist()
        return {"mean": round(statistics.fmean(v), 4), "median": round(statistics.median(v), 4)}

    live = ~scores["dead"]
    return {"path": path, "units": int(scores["A"].numel()), "A": stats(scores["A"]),
            "A_live_mean": round(float(scores["A"][live].mean()), 4) if live.any() else None,
            "agreement": stats(scores["agreement"]), "A_real": stats(scores["A_real"]),
            "A_centred": stats(scores["A_centred"]),
            "agreement_centred": stats(scores["agreement_centred"]),
            "positive_share": round(float(scores["positive_share"][live].mean()), 4) if live.any() else None,
            "dead_on_noise": round(float(scores["dead"].float().mean()), 4)}


def _library_check(model: nn.Module, path: str, scores: dict[str, torch.Tensor], n: int,
                   seed: int) -> float:
    """Largest |A (batched) - A (noise_gradient_alignment)| over the layer's first two units."""
    from pellucid.explain.units import noise_gradient_alignment

    worst = 0.0
    for j in range(min(2, scores["A"].numel())):
        ref = noise_gradient_alignment(model, f"{path}:{j}", n, seed, input_shape=(1, 28, 28),
                                       value_range=(0.0, 1.0))
        worst = max(worst, abs(ref - float(scores["A"][j])))
    return worst


def measure(name: str, epochs: int, noise: torch.Tensor, test, fraction: float, n: int,
            seed: int, workdir: Path) -> tuple[dict, float]:
    from pellucid.models import load_model
    from pellucid.models.inference import predict_logits
    from pellucid.train.recipes import RECIPES

    recipe = RECIPES.get(name)
    cfg = recipe.config_type(epochs=epochs, val_pgd_steps=0)
    t0 = time.perf_counter()
    recipe.run(cfg, workdir / name, progress=False)
    train_s = time.perf_counter() - t0
    model, _ = load_model(workdir / name)  # eval mode
    t1 = time.perf_counter()
    acc = float((predict_logits(model, test.images).argmax(1) == test.labels).float().mean())
    layers, check = {}, 0.0
    for label, path in {**LAYERS[name], "output": ""}.items():
        scores = unit_scores(model, path, noise, test.images, fraction)
        layers[label] = _summary(scores, path)
        check = max(check, _library_check(model, path, scores, n, seed))
    measure_s = time.perf_counter() - t1
    rep = REPRESENTATION.get(name, "representation")
    row = {"accuracy": round(acc, 4), "parameters": sum(p.numel() for p in model.parameters()),
           "epochs": epochs, "representation_layer": rep,
           "A_representation_mean": layers[rep]["A"]["mean"],
           "A_output_mean": layers["output"]["A"]["mean"],
           "agreement_representation_mean": layers[rep]["agreement"]["mean"],
           "agreement_output_mean": layers["output"]["agreement"]["mean"],
           "A_centred_representation_mean": layers[rep]["A_centred"]["mean"],
           "agreement_centred_representation_mean": layers[rep]["agreement_centred"]["mean"],
           "layers": layers, "train_seconds": round(train_s, 1),
           "measure_seconds": round(measure_s, 1), "seconds": round(train_s + measure_s, 1)}
    return row, check


def parser():
    p = h.parser(__name__, __doc__, threads=2, seed=0, seed_help="noise seed")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per model (the recipes' "
                                                          "default: 15)")
    p.add_argument("--n", type=int, default=8, help="noise draws per unit")
    p.add_argument("--active-fraction", type=float, default=0.1,
                   help="share of the test set on which a unit counts as active (its top responses)")
    p.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    from pellucid.data import load_dataset
    from pellucid.explain.units import noise_inputs
    from pellucid.models import MODELS

    t0 = time.perf_counter()
    test = load_dataset("mnist", "test", classes=(3, 5))
    for name in args.models:
        assert MODELS.get(name).value_range == (0.0, 1.0)
    noise = noise_inputs(args.n, (1, 28, 28), args.seed, mean=0.5, std=0.25, value_range=(0.0, 1.0))
    models, check = {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            models[name], c = measure(name, args.epochs, noise, test, args.active_fraction, args.n,
                                      args.seed, Path(tmp))
            check = max(check, c)
    return {
        "task": "mnist 3 vs 5", "test_images": len(test),
        "noise": {"n": args.n, "seed": args.seed, "mean": 0.5, "std": 0.25, "clamp": [0.0, 1.0]},
        "active_fraction": args.active_fraction,
        "train": {"epochs": args.epochs, "val_pgd_steps": 0,
                  "note": "each model's registered recipe with its defaults otherwise"},
        "models": models,
        "check_vs_noise_gradient_alignment_max_abs_diff": float(f"{check:.3g}"),
        "seconds": h.seconds_since(t0),
    }


if __name__ == "__main__":
    h.script(__name__)
