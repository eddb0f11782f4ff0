"""Reliability: how well the model's confidence separates its correct from its wrong answers.

The reliability curve is the precision-recall curve of *correctness*: positives are correctly
classified inputs, the score is the max softmax probability. Precision at recall 1 equals the
accuracy; a model that knows when it is wrong keeps precision high as recall falls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pellucid._device import draw_device


@dataclass(frozen=True)
class ReliabilityCurve:
    """Operating points in order of decreasing threshold (one per distinct score)."""

    precision: torch.Tensor
    recall: torch.Tensor
    thresholds: torch.Tensor
    accuracy: float

    def precision_at_recall(self, target: float) -> float:
        """Precision at the highest threshold whose recall reaches ``target``."""
        reached = torch.nonzero(self.recall >= target - 1e-12)
        return float(self.precision[reached[0, 0]]) if len(reached) else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready operating points (for run records that reports plot later)."""
        return {"precision": self.precision.tolist(), "recall": self.recall.tolist(),
                "thresholds": self.thresholds.tolist(), "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, d: dict) -> "ReliabilityCurve":
        t = lambda k: torch.tensor(d[k], dtype=torch.float64, device="cpu")  # noqa: E731
        return cls(t("precision"), t("recall"), t("thresholds"), float(d["accuracy"]))

    @property
    def average_precision(self) -> float:
        """Area under the step curve, ``sum_n (R_n - R_{n-1}) P_n`` (the "AUC" reported)."""
        recall = torch.cat([self.recall.new_zeros(1), self.recall])
        return float(((recall[1:] - recall[:-1]) * self.precision).sum())


def _sorted_correctness(logits: torch.Tensor, labels: torch.Tensor):
    """Scores in decreasing order, correctness in that order, and the last index of each tie run."""
    probs = logits.detach().double().softmax(dim=-1)
    score, pred = probs.max(dim=-1)
    correct = (pred == labels).double()
    order = torch.argsort(score, descending=True, stable=True)
    score, correct = score[order], correct[order]
    # one operating point per distinct threshold: the last index of each run of tied scores
    last = torch.ones_like(score, dtype=torch.bool)
    last[:-1] = score[1:] != score[:-1]
    return score, correct, last


def reliability_curve(logits: torch.Tensor, labels: torch.Tensor) -> ReliabilityCurve:
    """Precision-recall curve of "prediction is correct" scored by the max softmax probability."""
    score, correct, last = _sorted_correctness(logits, labels)
    tp = torch.cumsum(correct, 0)
    tp, n_pred, thr = tp[last], torch.nonzero(last).squeeze(1).double() + 1, score[last]
    n_pos = correct.sum()
    recall = tp / n_pos if n_pos > 0 else torch.zeros_like(tp)
    return ReliabilityCurve(tp / n_pred, recall, thr, float(correct.mean()))


def precision_at_recall_interval(logits: torch.Tensor, labels: torch.Tensor, target: float = 0.8, *,
                                 n_boot: int = 2000, level: float = 0.95,
                                 generator: torch.Generator | None = None) -> tuple[float, float]:
    """Percentile-bootstrap interval of :meth:`ReliabilityCurve.precision_at_recall` (test-set noise).

    Each replicate redraws the ``N`` inputs with replacement. A redraw changes only how often each
    input counts, not the order of the scores, so all replicates share one sort: with multiplicity
    ``w_bn``, ``TP_b(t) = sum_{n <= t} w_bn c_n`` and ``P_b(t) = TP_b(t) / sum_{n <= t} w_bn``,
    read at the highest threshold where ``TP_b(t) / TP_b(N) >= target``. Returns ``(lo, hi)``;
    NaN where no replicate has a correct answer.
    """
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    _, correct, last = _sorted_correctness(logits, labels)
    # the resampling runs on the CPU, whose generator draws the same replicates for every device
    correct, last = correct.cpu(), last.cpu()
    n = len(correct)
    draws = torch.randint(n, (n_boot, n), generator=generator, device=draw_device(generator)).cpu()
    weight = torch.zeros(n_boot, n, dtype=torch.float64, device="cpu").scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64, device="cpu"))
    tp, n_pred = torch.cumsum(weight * correct, 1), torch.cumsum(weight, 1)
    recall = tp / tp[:, -1:]
    # operating points: the last index of each tie run (its cumulative sums cover the whole run)
    reached = (recall >= target - 1e-12) & last
    first = reached.double().argmax(1, keepdim=True)
    precision = (tp.gather(1, first) / n_pred.gather(1, first)).squeeze(1)
    precision = precision[tp[:, -1] > 0]
    if len(precision) == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device="cpu")
    lo, hi = torch.quantile(precision, q).tolist()
    return lo, hi
