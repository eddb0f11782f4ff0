r"""Square attack (Andriushchenko et al. 2020), L-inf, written for tensors: the black-box cross-check.

Score-based random search on the vertices of the eps-ball. With :math:`\delta = x^* - x` the
current best perturbation and the margin loss

.. math:: m(x') = z_y(x') - \max_{j \ne y} z_j(x') \qquad (\text{the image is broken when } m < 0),

each query picks, **per image**, a random ``s x s`` window and a random sign per channel, and
proposes :math:`\Pi_{[lo, hi]}(x \pm \epsilon)` inside the window and :math:`x^*` outside it,
keeping the candidate when it lowers :math:`m`. The window side follows the
paper's schedule :math:`s = \mathrm{round}(\sqrt{p_i h w})`, with :math:`p_i` halved at 10, 50,
200, 500, 1000, 2000, 4000, 6000 and 8000 of every 10,000 queries. The start is random vertical
stripes :math:`\pm\epsilon`.

Why pellucid has its own besides ART's ``square`` (which AutoAttack's ensemble uses, as the
reference protocol does): ART draws *one* window and one sign for the whole batch at each
iteration, so every image gets the same perturbation proposal, and it runs three forward passes
per iteration over the batch (including the images already broken). Here each image draws its
own proposal, as in the paper, and a query costs one forward pass over the images still robust
only. A model that can score a local change cheaply offers ``window_queries`` (see
:class:`~pellucid.models.inference.WindowQueries`): the white-box network then recomputes only the
window's neighbourhood in its first two layers, the same bits about 8x faster late in a run. Both are offered; a second, independent black-box attack makes the ``black_box``
gradient-masking check harder to pass by accident.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from pellucid._device import draw_device
from pellucid.errors import InvalidInputError
from pellucid.models.inference import WindowQueries, batched_logits, margin, window_index
from pellucid.robust.attacks import AttackRun, attack_mode, check_eps, check_options, register_attack
from pellucid.robust.options import SquareOptions

__all__ = ["margin", "square_fraction", "square_native"]  # margin: pellucid.models.inference

# Fractions of the 10,000-query schedule at which p halves (the paper's p_selection).
_HALVING = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, n_queries: int) -> float:
    """The share ``p`` of pixels a window covers at ``query`` (0-based) of ``n_queries``."""
    at = int(query / max(n_queries, 1) * 10_000)
    return p_init / 2 ** sum(at > t for t in _HALVING)


@register_attack("square-native", SquareOptions, "Square attack, pellucid's tensor implementation "
                 "(L-inf): per-image windows, one forward per query on robust images")
def square_native(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                  norm: str = "linf", queries: int = SquareOptions.queries,
                  restarts: int = SquareOptions.restarts, p_init: float = SquareOptions.p_init,
                  value_range: tuple[float, float] = (0.0, 1.0),
                  generator: torch.Generator | None = None, batch_size: int = 2048,
                  progress: bool = False) -> AttackRun:
    """Untargeted L-inf Square attack with the true labels ``y``; see the module docstring.

    ``queries`` per restart; each restart starts afresh (new stripes) on the images still robust.
    Returns the adversarial inputs and one log row with the median queries of the broken images.
    """
    if norm != "linf":
        raise InvalidInputError(f"square-native is an L-inf attack; got norm {norm!r}")
    check_eps(eps)
    check_options("square-native", SquareOptions,
                  {"queries": queries, "restarts": restarts, "p_init": p_init})
    if x.dim() != 4:
        raise InvalidInputError(f"square-native needs images (B, C, H, W), got shape {tuple(x.shape)}")
    start = time.perf_counter()
    lo, hi = value_range
    n, c, h, w = x.shape
    x = x.detach()
    rand = lambda *shape: torch.rand(shape, generator=generator,  # noqa: E731
                                     device=draw_device(generator), dtype=torch.float32).to(x.device, x.dtype)
    used = torch.zeros(n, dtype=torch.long, device=x.device)  # queries spent per image
    with attack_mode(model), torch.no_grad():
        best_margin = margin(batched_logits(model, x, batch_size), y)
        broken = best_margin < 0  # already misclassified: no queries
        # the current best points; a model may score local changes cheaply (window_queries)
        factory = getattr(model, "window_queries", None)
        points = (factory(x.clone(), batch_size) if callable(factory)
                  else WindowQueries(model, x.clone(), batch_size))
        for _ in range(restarts):
            idx = torch.nonzero(~broken).squeeze(1)
            if not len(idx):
                break
            # start: vertical stripes of +-eps, one sign per (image, channel, column)
            stripes = torch.where(rand(len(idx), c, 1, w) < 0.5, -eps, eps).to(x.dtype)
            cand = (x[idx] + stripes).clamp(lo, hi)
            m = margin(batched_logits(model, cand, batch_size), y[idx])
            used[idx] += 1
            points.set(idx, cand)
            best_margin[idx] = m
            broken[idx] = m < 0
            bar = tqdm(range(1, queries), desc="Square", unit="query", leave=False,
                       disable=None if progress else True, file=sys.stderr)
            for q in bar:
                idx = torch.nonzero(~broken).squeeze(1)
                if not len(idx):
                    break
                k = len(idx)
                side = min(max(round(math.sqrt(square_fraction(p_init, q, queries) * h * w)), 1), h, w)
                top = (rand(k) * (h - side + 1)).long()
                left = (rand(k) * (w - side + 1)).long()
                signs = torch.where(rand(k, c, 1, 1) < 0.5, -eps, eps).to(x.dtype)
                # the proposal: +-eps around the clean image inside the window, the best point outside
                rows, cols = window_index(top, left, side)
                window = (x[idx[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                            rows[:, None], cols[:, None]] + signs).clamp(lo, hi)
                m = margin(points.query(idx, top, left, window), y[idx])
                used[idx] += 1
                better = m < best_margin[idx]
                points.accept(better)
                keep = idx[better]
                best_margin[keep] = m[better]
                broken[keep] = m[better] < 0
                if q % 100 == 0:
                    bar.set_postfix(robust=int((~broken).sum()))
            bar.close()
    best = points.images
    fooled = broken & (used > 0)
    row = {"attack": "square-native", "queries": queries, "restarts": restarts, "attacked": n,
           "median_queries_to_break": float(used[fooled].double().median()) if fooled.any() else None,
           "queries_spent": int(used.sum()), "seconds": round(time.perf_counter() - start, 2),
           # the values behind the median, so that chunks of an evaluation can be pooled
           # (pellucid.robust.evaluate.merge_stage_rows drops them)
           "_median_of": {"median_queries_to_break": used[fooled].tolist()}}
    return AttackRun(best, [row])
