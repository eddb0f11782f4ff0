"""Robustness evaluation of a classifier: clean and adversarial accuracy, reliability, curves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pellucid._text import duration
from pellucid.data.validation import check_images, check_labels, check_model_input
from pellucid.errors import InvalidInputError
from pellucid.models.inference import predict_logits
from pellucid.robust.attacks import ATTACKS, check_eps, perturbation_norm, within_budget
from pellucid.robust.catalogue import CHUNK_SIZE  # images per chunk; torch-free, for --help
from pellucid.robust.reliability import ReliabilityCurve, precision_at_recall_interval, reliability_curve

if TYPE_CHECKING:
    from pellucid.distributed import Job
    from pellucid.robust.chunk_store import ChunkStore

__all__ = ["CHUNK_SIZE", "RobustnessResult", "accuracy_vs_eps", "advance_generator", "chunk_bounds",
           "check_processes", "chunk_generator", "evaluate_robustness", "merge_info", "merge_stage_rows",
           "minimal_perturbations", "predict_logits"]  # predict_logits: pellucid.models.inference


@dataclass
class RobustnessResult:
    """Outcome of one attack on a labelled set; per-image tensors are in input order.

    ``robust`` = clean correct AND adversarial correct, where an adversarial output outside the
    eps-ball (unbounded attacks such as DeepFool or Boundary) does not count: the clean input
    stands in for it (``within_budget`` is False there).
    """

    attack: str
    eps: float
    norm: str
    n: int
    clean_accuracy: float
    robust_accuracy: float  # clean correct AND adversarial correct
    reliability: ReliabilityCurve = field(repr=False)  # on the (budget-respecting) adversarial inputs
    seconds: float
    adversarial: torch.Tensor = field(repr=False)  # what the attack returned
    adversarial_logits: torch.Tensor = field(repr=False)  # on the budget-respecting inputs
    clean_logits: torch.Tensor = field(repr=False)
    robust: torch.Tensor = field(repr=False)  # (n,) bool
    within_budget: torch.Tensor = field(repr=False)  # (n,) bool
    stages: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # gradient-masking checks (robust.checks.Check)
    precision_at_recall_ci: tuple[float, float] | None = None  # 95 % bootstrap interval at recall 0.8

    def summary(self) -> dict:
        out = {"attack": self.attack, "eps": self.eps, "norm": self.norm, "n": self.n,
               "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
               "precision_at_recall_0.8": self.reliability.precision_at_recall(0.8),
               "reliability_auc": self.reliability.average_precision,
               **({"precision_at_recall_0.8_ci95": list(self.precision_at_recall_ci)}
                  if self.precision_at_recall_ci is not None else {}),
               "seconds": round(self.seconds, 3), "stages": self.stages, **self.info}
        if self.checks:
            out["checks"] = {c.name: c.summary() for c in self.checks}
        return out

    def per_image(self) -> dict[str, list]:
        """Per image, in input order: the clean and adversarial predictions, the adversarial
        input's confidence (max softmax probability, the reliability curve's score) and whether
        the image is robust."""
        confidence = self.adversarial_logits.detach().double().softmax(-1).amax(-1)
        return {"clean_prediction": self.clean_logits.argmax(1).tolist(),
                "adversarial_prediction": self.adversarial_logits.argmax(1).tolist(),
                "adversarial_confidence": confidence.tolist(), "robust": self.robust.tolist()}

    def to(self, device: torch.device | str) -> "RobustnessResult":
        """A copy whose tensors are on ``device`` (figures are drawn from CPU tensors)."""
        move = lambda t: t.to(device)  # noqa: E731
        curve = self.reliability
        return replace(self, adversarial=move(self.adversarial),
                       adversarial_logits=move(self.adversarial_logits),
                       clean_logits=move(self.clean_logits), robust=move(self.robust),
                       within_budget=move(self.within_budget),
                       reliability=ReliabilityCurve(move(curve.precision), move(curve.recall),
                                                    move(curve.thresholds), curve.accuracy))


# stage-log keys whose chunk values add up, and the one that is a fraction of the chunk's images
_SUMMED = ("attacked", "broken", "queries_spent", "broken_by_projection")
_FRACTION = "robust_accuracy_after"
# info keys holding one value per image, in image order: chunks are concatenated
_PER_IMAGE_INFO = ("broken_by_image",)


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the chunks of ``n`` images, ``chunk_size`` each (the last one
    may be smaller)."""
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


def chunk_generator(seed: int, start: int, like: torch.Tensor) -> torch.Generator:
    """The random stream of the chunk whose first image is ``start``: ``seed``'s stream, advanced
    by ``start`` times the values per image of ``like`` (draws of ``like``'s dtype).

    A chunk's randomness thus depends only on the seed and where the chunk starts, never on what
    ran before it in the process, so chunks can be attacked in any order and by any process. The
    advance is the one a single pass over all images makes when it draws one number per input
    value, as PGD's L-inf random start does: such an attack draws exactly what it drew before
    evaluations were split into chunks.
    """
    return advance_generator(torch.Generator().manual_seed(seed), start * like[0].numel(), like.dtype)


def advance_generator(generator: torch.Generator, draws: int, dtype: torch.dtype) -> torch.Generator:
    """``generator`` (returned) moved past ``draws`` uniform draws of ``dtype``, as if
    ``torch.rand(draws, dtype=dtype, generator=generator)`` had run (its draws come one after
    another, so a long draw equals consecutive short ones)."""
    while draws > 0:  # in blocks: a large image set would not fit one draw
        step = min(draws, 1 << 22)
        torch.rand(step, generator=generator, dtype=dtype, device=generator.device)
        draws -= step
    return generator


@dataclass
class ChunkResult:
    """What the attack produced on one chunk of images (its tensors on the images' device)."""

    index: int
    adversarial: torch.Tensor
    clean_logits: torch.Tensor
    adversarial_logits: torch.Tensor
    inside: torch.Tensor
    stages: list[dict]
    info: dict


def _attack_chunk(index: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor, runner, *,
                  eps: float, norm: str, value_range: tuple[float, float], generator: torch.Generator,
                  attack_kwargs: dict) -> ChunkResult:
    clean = predict_logits(model, x)
    run = runner(model, x, y, eps=eps, norm=norm, value_range=value_range, generator=generator,
                 **attack_kwargs)
    inside = within_budget(run.adversarial - x, eps, norm)
    x_eval = torch.where(inside.view(-1, *[1] * (x.dim() - 1)), run.adversarial, x)
    return ChunkResult(index, run.adversarial, clean, predict_logits(model, x_eval), inside, run.stages,
                  run.info)


def _median(values: list) -> float | None:
    # torch's median (the lower middle value), as the attacks compute theirs
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else None


def _merge_value(key: str, values: list, sizes: list[int]) -> Any:
    """One stage-log or info value from the chunks' ``values`` (``sizes``: the chunks' images)."""
    if key in _SUMMED:
        return sum(values)
    if key == "seconds":  # compute time over the chunks (over processes: more than the wall time)
        return round(sum(values), 2)
    if key == _FRACTION:  # as the attacks compute it: a float32 mean over the images
        robust = sum(round(v * n) for v, n in zip(values, sizes))
        return float(torch.tensor(float(robust)) / sum(sizes))
    if key in _PER_IMAGE_INFO:
        return [v for chunk in values for v in chunk]
    if all(isinstance(v, dict) for v in values) and \
            all(isinstance(c, (int, float)) for v in values for c in v.values()):
        out: dict = {}
        for v in values:  # counts per name (images broken per stage, per temperature)
            for name, count in v.items():
                out[name] = out.get(name, 0) + count
        return out
    if all(v == values[0] for v in values):
        return values[0]
    return values  # a figure that does not add up over chunks: one value per chunk


def merge_stage_rows(chunk_rows: list[list[dict]], sizes: list[int]) -> list[dict]:
    """One log row per stage from each chunk's rows (the same stages in the same order):
    counts and seconds summed, ``robust_accuracy_after`` over all images, medians over all
    images from the per-image values a row keeps under ``"_median_of"`` (dropped here)."""
    if len(chunk_rows) == 1:
        return [_strip(row) for row in chunk_rows[0]]
    if len({len(rows) for rows in chunk_rows}) != 1:
        raise AssertionError(f"chunks logged different numbers of stages: {[len(r) for r in chunk_rows]}")
    merged = []
    for rows in zip(*chunk_rows):
        keys = list(dict.fromkeys(k for row in rows for k in row if k != "_median_of"))
        row = {k: _merge_value(k, [r.get(k) for r in rows], sizes) for k in keys}
        pooled: dict[str, list] = {}
        for r in rows:
            for k, values in r.get("_median_of", {}).items():
                pooled.setdefault(k, []).extend(values)
        row.update({k: _median(v) for k, v in pooled.items()})
        merged.append(row)
    return merged


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "_median_of"}


def merge_info(chunk_info: list[dict], sizes: list[int]) -> dict:
    """The attack's ``info`` over all chunks (see :func:`_merge_value`)."""
    if len(chunk_info) == 1:
        return dict(chunk_info[0])
    keys = list(dict.fromkeys(k for info in chunk_info for k in info))
    return {k: _merge_value(k, [info.get(k) for info in chunk_info], sizes) for k in keys}


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                        eps: float = 0.3, norm: str = "linf",
                        value_range: tuple[float, float] = (0.0, 1.0),
                        seed: int = 0, chunk_size: int = CHUNK_SIZE, job: "Job | None" = None,
                        chunk_store: "ChunkStore | None" = None, **attack_kwargs) -> RobustnessResult:
    """Attack ``x`` with the true labels ``y`` and score clean, robust accuracy and reliability.

    ``x``: images in ``value_range`` with the dtype and device of the model's parameters; ``y``:
    integer labels ``(B,)`` in ``0..K-1`` for a model with ``K`` outputs. ``attack_kwargs``: the
    attack's options (e.g. ``steps`` for PGD) and common arguments such as ``progress`` (see
    :mod:`pellucid.robust.attacks`); an option the attack does not have raises.

    The images are attacked in chunks of ``chunk_size``, each on its own: its randomness comes
    from :func:`chunk_generator` (``seed`` and where the chunk starts), ensembles run their
    stages on the chunk's images still standing. An image's result therefore depends only on its
    chunk, and ``job`` (a :class:`pellucid.distributed.Job` of several processes) can share the
    chunks out (rank ``r`` takes chunks ``r, r + W, ...``) and gather them with results identical,
    image by image, to one process's. Every process returns the whole result. Per-stage log rows
    add up over chunks (``seconds``: the compute time summed over chunks).

    ``chunk_store`` (a :class:`pellucid.robust.chunk_store.ChunkStore` for this evaluation's
    identity) keeps every finished chunk and supplies the chunks an earlier, interrupted run of
    the same evaluation finished, which are then not attacked again: the result is the same.
    """
    check_images(x, value_range=value_range)
    check_model_input(model, x)
    y = check_labels(y, n=x.shape[0], device=x.device)
    check_eps(eps)  # fail before any work is done
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    runner = ATTACKS.get(attack)
    runner.split(attack_kwargs)  # unknown options and bad values, too
    bounds = chunk_bounds(len(x), chunk_size)
    check_processes(1 if job is None else job.world_size, len(x), chunk_size)
    start = time.perf_counter()
    y = check_labels(y, n_classes=_n_classes(model, x))
    mine = job.share(len(bounds)) if job is not None else range(len(bounds))
    log = attack_kwargs.get("log")
    chunks = []
    pace = _Pace(sum(bounds[k][1] - bounds[k][0] for k in mine),
                 "" if job is None or job.world_size == 1 else " of this process's share")
    for k in mine:
        a, b = bounds[k]
        chunk = chunk_store.load(k, a, b, x) if chunk_store is not None else None
        attacked = chunk is None
        if attacked:
            kwargs = dict(attack_kwargs)
            if log is not None and len(bounds) > 1:
                kwargs["log"] = lambda msg, k=k: log(f"chunk {k + 1}/{len(bounds)}: {msg}")
            t0 = time.perf_counter()
            chunk = _attack_chunk(k, model, x[a:b], y[a:b], runner, eps=eps, norm=norm,
                                  value_range=value_range, attack_kwargs=kwargs,
                                  generator=chunk_generator(seed, a, x))
            if chunk_store is not None:
                chunk_store.save(a, b, chunk)
            pace.attacked(b - a, time.perf_counter() - t0)
        chunks.append(chunk)
        robust_here = int(((chunk.clean_logits.argmax(1) == y[a:b])
                           & (chunk.adversarial_logits.argmax(1) == y[a:b])).sum())
        pace.done(b - a, robust_here)
        if log is not None and len(bounds) > 1 and attacked:  # hours-long runs: a line per chunk
            log(f"chunk {k + 1}/{len(bounds)} done: {pace.summary(robust_here, b - a)}")
    if job is not None and job.world_size > 1:
        chunks = _gather_chunks(job, chunks, bounds)
    sizes = [b - a for a, b in bounds]
    adversarial, clean, adv, inside = (torch.cat([getattr(c, name) for c in chunks]) for name in
                                       ("adversarial", "clean_logits", "adversarial_logits", "inside"))
    stages = merge_stage_rows([c.stages for c in chunks], sizes)
    info = merge_info([c.info for c in chunks], sizes)
    clean_ok, adv_ok = clean.argmax(1) == y, adv.argmax(1) == y
    robust = clean_ok & adv_ok
    # test-set noise of the reliability figure; its own generator so the attack's draws don't move it
    ci = precision_at_recall_interval(adv, y, 0.8, generator=torch.Generator().manual_seed(seed))
    return RobustnessResult(attack, eps, norm, len(y), float(clean_ok.float().mean()),
                            float(robust.float().mean()), reliability_curve(adv, y),
                            time.perf_counter() - start, adversarial, adv, clean, robust,
                            inside, stages, info, precision_at_recall_ci=ci)


class _Pace:
    """What the per-chunk progress line says: robust accuracy so far, and the time left at the pace
    of the chunks attacked so far (loaded ones cost nothing)."""

    def __init__(self, images: int, whose: str = "") -> None:
        self.left, self.finished, self.robust, self.whose = images, 0, 0, whose
        self.attacked_images, self.attacked_seconds = 0, 0.0

    def attacked(self, images: int, seconds: float) -> None:
        self.attacked_images += images
        self.attacked_seconds += seconds

    def done(self, images: int, robust: int) -> None:
        self.left -= images
        self.finished += images
        self.robust += robust

    def summary(self, robust: int, images: int) -> str:
        text = (f"robust {100 * robust / images:.2f} % of its {images} images, "
                f"{100 * self.robust / self.finished:.2f} % of the {self.finished}{self.whose} so far")
        if self.left:
            per_image = self.attacked_seconds / self.attacked_images
            text += f"; about {duration(self.left * per_image, ' ')} left at this pace"
        return text


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def check_processes(world: int, n: int, chunk_size: int = CHUNK_SIZE) -> None:
    """Raise :class:`InvalidInputError` (one line) when ``world`` processes are more than the
    chunks of ``n`` images: some would have nothing to attack."""
    chunks = len(chunk_bounds(n, chunk_size))
    if world <= chunks:
        return
    fix = (f"start at most {_count(n, 'process', 'processes')}" if n < world else
           f"start at most {_count(chunks, 'process', 'processes')} or use a chunk size "
           f"(--chunk-size) of at most {n // world}")
    raise InvalidInputError(f"{_count(world, 'process', 'processes')} for {_count(n, 'image', 'images')} "
                            f"in {_count(chunks, 'chunk', 'chunks')} of {chunk_size}: some would have "
                            f"nothing to attack; {fix}")


def _n_classes(model: nn.Module, x: torch.Tensor) -> int | None:
    with torch.no_grad():
        out = predict_logits(model, x[:1])
    return out.shape[1] if out.dim() == 2 else None


def _gather_chunks(job: "Job", chunks: list[ChunkResult], bounds: list[tuple[int, int]]) -> list[ChunkResult]:
    """Every process's chunks, in chunk order, on every process."""
    owned = [list(range(r, len(bounds), job.world_size)) for r in range(job.world_size)]
    counts = [sum(bounds[k][1] - bounds[k][0] for k in ks) for ks in owned]
    local = {name: torch.cat([getattr(c, name) for c in chunks]) for name in
             ("adversarial", "clean_logits", "adversarial_logits", "inside")}
    gathered = {name: job.all_gather_rows(t, counts) for name, t in local.items()}
    logs = job.all_gather_objects([(c.index, c.stages, c.info) for c in chunks])
    out: dict[int, ChunkResult] = {}
    for rank, ks in enumerate(owned):
        offset = 0
        for (k, stages, info) in logs[rank]:
            n = bounds[k][1] - bounds[k][0]
            rows = {name: g[rank][offset:offset + n] for name, g in gathered.items()}
            out[k] = ChunkResult(k, rows["adversarial"], rows["clean_logits"], rows["adversarial_logits"],
                            rows["inside"], stages, info)
            offset += n
        assert [k for k, _, _ in logs[rank]] == ks
    return [out[k] for k in range(len(bounds))]


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values, *,
                    attack: str = "pgd", seed: int = 0, **attack_kwargs) -> list[dict]:
    """Robust accuracy for each eps (same seed for each, so the curve is comparable)."""
    eps_values = list(eps_values)
    if not eps_values:
        raise InvalidInputError("eps_values must hold at least one eps")
    for e in eps_values:  # every value checked before the first attack runs
        check_eps(e, name="each eps in eps_values")
    return [{"eps": float(e), "robust_accuracy": evaluate_robustness(
        model, x, y, attack=attack, eps=float(e), seed=seed, **attack_kwargs).robust_accuracy}
            for e in eps_values]


def minimal_perturbations(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                          y: torch.Tensor) -> dict:
    """Norms of the perturbations that flipped a correct prediction, for unbounded minimising
    attacks (Boundary, DeepFool): ``{"flipped", "median_l2", "median_linf", "l2", "linf"}``."""
    flipped = (predict_logits(model, x).argmax(1) == y) & (predict_logits(model, x_adv).argmax(1) != y)
    delta = (x_adv - x)[flipped]
    l2, linf = perturbation_norm(delta, "l2"), perturbation_norm(delta, "linf")
    return {"flipped": int(flipped.sum()), "attacked": int((predict_logits(model, x).argmax(1) == y).sum()),
            "median_l2": float(l2.median()) if len(l2) else None,
            "median_linf": float(linf.median()) if len(linf) else None,
            "l2": l2.tolist(), "linf": linf.tolist()}
