"""The evaluation pipeline of a run directory: load, attack, check, record, report.

``pellucid evaluate`` and ``pellucid demo`` (and the benchmarks) run it, so every evaluation of a
run is done, checked and recorded the same way. The run directory is only read until the end;
the records, figures and report are written under the directory's :class:`pellucid._io.RunLock`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from pellucid._device import device_name
from pellucid._io import RunLock, tensors_sha256
from pellucid.data.datasets import ImageDataset, load_dataset
from pellucid.errors import InvalidInputError, Stopped
from pellucid.models.checkpoint import load_model
from pellucid.models.inference import predict_logits
from pellucid.report.records import RECORDS_DIR, save_record
from pellucid.robust.attacks import ATTACKS, option_values
from pellucid.robust.budgets import AdaptiveBudget
from pellucid.robust.checks import evaluation_checks
from pellucid.robust.diagnostics import adaptive_diagnostics
from pellucid.robust.chunk_store import ChunkStore
from pellucid.robust.evaluate import (CHUNK_SIZE, RobustnessResult, chunk_bounds, evaluate_robustness,
                                      minimal_perturbations)

if TYPE_CHECKING:
    from pellucid.distributed import Job

# attacks that return minimal (unbounded) perturbations: their examples are plotted and recorded
MINIMISING_ATTACKS = ("boundary", "deepfool")
# flipped predictions shown in the minimal-perturbation figure
MINIMAL_EXAMPLES = 8
# where an evaluation keeps its finished chunks until it is recorded (robust.chunk_store)
UNFINISHED_DIR = ".unfinished"


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` computed: the recorded ``summary`` and the objects behind it."""

    summary: dict[str, Any]
    model: nn.Module
    config: dict[str, Any]
    test: ImageDataset
    result: RobustnessResult
    record: Path
    checks: list = field(default_factory=list)


def load_test_set(config: dict, data_dir: str | None, limit: int | None) -> ImageDataset:
    """The test split a model directory was trained for, optionally its first ``limit`` images."""
    data = config.get("data") or {}
    if "dataset" not in data:
        raise InvalidInputError("the model directory's config names no dataset to evaluate on")
    ds = load_dataset(data["dataset"], "test", classes=data.get("classes"), data_dir=data_dir)
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {limit}")
        ds = ds.subset(slice(0, limit))
    return ds


def check_outputs(model: nn.Module, images: torch.Tensor) -> None:
    """Refuse a model whose outputs on the test images are NaN or inf (every figure would be
    meaningless), before the attack spends any time."""
    logits = predict_logits(model, images)
    bad = int((~torch.isfinite(logits)).flatten(1).any(1).sum())
    if bad:
        raise InvalidInputError(f"the model outputs NaN or inf on {bad} of {len(images)} test images; "
                                "its weights or inputs are broken")


def evaluate_run(run_dir: Path | str, *, attack: str = "pgd", eps: float = 0.3, norm: str = "linf",
                 seed: int = 0, options: dict[str, Any] | None = None, limit: int | None = None,
                 checks: bool = True, check_limit: int | None = 500, data_dir: str | None = None,
                 report: bool = False, log: Callable[[str], None] | None = None,
                 device: torch.device | str = "cpu", chunk_size: int = CHUNK_SIZE,
                 job: Job | None = None, progress: bool = True) -> RunEvaluation | None:
    """Attack the test set of the model in ``run_dir`` and record the evaluation there.

    ``options`` are the attack's own options (steps, step_size, restarts, queries, budget; see
    :data:`pellucid.robust.ATTACKS`), checked before any work; the record keeps every option of
    the attack with its value, the defaults filled in, so records stay comparable. With ``seed``,
    ``limit`` (the first N test images), the threat model and the weights they identify the
    record (see :mod:`pellucid.report.records`). ``checks``: the gradient-masking checks on
    the first ``check_limit`` images (``None``: all), always run for AutoAttack; the adaptive
    budget adds its diagnostics (:mod:`pellucid.robust.diagnostics`) on the same images and
    records which stage broke each image. ``report``:
    (re)write ``run_dir/report.html`` with every evaluation recorded there.

    ``device``: where the model and the images are put (figures are drawn on the CPU).
    ``chunk_size``: images attacked together (see
    :func:`~pellucid.robust.evaluate.evaluate_robustness`); a size other than the default is part
    of the record's identity, and so is a device other than the CPU. ``job``: the processes of a
    ``torchrun`` launch (:mod:`pellucid.distributed`), which share the chunks out; process 0
    alone runs the checks and writes the record and the report, the others return ``None``
    once the results are gathered. ``progress``: the attacks' progress bars on stderr (process 0
    only, and only on a terminal); ``log`` gets the stage lines.
    """
    run_dir = Path(run_dir)
    checked_options = ATTACKS.get(attack).check_options(options)
    options = option_values(checked_options)
    main = job is None or job.is_main
    say = (log or (lambda msg: None)) if main else (lambda msg: None)
    device = torch.device(device)
    model, config = load_model(run_dir, map_location=device)
    weights_sha256 = tensors_sha256(model.state_dict())
    test = load_test_set(config, data_dir, limit)
    x, y = test.images.to(device), test.labels.to(device)
    check_outputs(model, x)
    say(f"{attack} ({norm} eps {eps:g}) on {len(test)} test images"
        + (f", {job.world_size} processes" if job is not None and job.world_size > 1 else ""))
    store = ChunkStore(run_dir / RECORDS_DIR / UNFINISHED_DIR, {
        "attack": attack, "norm": norm, "eps": eps, "seed": seed,
        "options": dataclasses.asdict(checked_options), "chunk_size": chunk_size,
        "weights_sha256": weights_sha256, "dataset": (config.get("data") or {}).get("dataset"),
        "data_sha256": tensors_sha256({"images": test.images, "labels": test.labels}),
        "device": device.type, "dtype": str(x.dtype)})
    bounds = chunk_bounds(len(x), chunk_size)
    with _what_is_kept_on_interrupt(store, bounds, chunk_size, main):
        reused = sum(store.has(a, b) for a, b in bounds)
        if reused:
            say(f"{reused} of {len(bounds)} chunks were finished by an earlier, interrupted run of this "
                "evaluation: their results are reused")
        result = evaluate_robustness(model, x, y, attack=attack, eps=eps, norm=norm, seed=seed,
                                     chunk_size=chunk_size, job=job, progress=progress and main,
                                     log=log if main else None, chunk_store=store, **options)
        if not main:
            return None
        # per-image results go to the record, not to the summary (one line); so does the adaptive
        # budget's stage per image
        per_image = result.per_image()
        if "broken_by_image" in result.info:
            per_image["broken_by"] = result.info.pop("broken_by_image")
        summary = {"model": config["model"], "model_dir": str(run_dir), **result.summary(),
                   "dataset": (config.get("data") or {}).get("dataset"), "seed": seed,
                   "options": dataclasses.asdict(checked_options),  # JSON-ready: stages as dicts
                   "weights_sha256": weights_sha256,
                   # which gradient-masking checks the record holds: None, or on how many images
                   "checked_images": min(len(test), check_limit or len(test))
                   if checks or attack == "autoattack" else None,
                   # where it ran; neither the device nor the processes are part of the identity
                   # unless they change the results (records.record_identity)
                   "device": device_name(device), "processes": 1 if job is None else job.world_size}
        if chunk_size != CHUNK_SIZE:
            summary["chunk_size"] = chunk_size
        if reused:  # not part of the identity: the results are the same
            summary["reused_chunks"] = reused
        if "steps" in options:
            summary["steps"] = options["steps"]
        minimal = points = None
        if attack in MINIMISING_ATTACKS:
            minimal = minimal_perturbations(model, x, result.adversarial, y)
            summary["minimal_perturbation"] = {k: v for k, v in minimal.items() if k not in ("l2", "linf")}
        found: list = []
        if checks or attack == "autoattack":
            say(f"gradient-masking checks and accuracy vs eps (first {check_limit or len(test)} images)")
            found, curve = evaluation_checks(model, result, x, y, limit=check_limit, seed=seed, warn=False)
            result.checks = found
            summary["checks"] = {c.name: c.summary() for c in found}
            points = {"points": curve, "n": min(len(test), check_limit or len(test))}
        if "broken_by" in per_image:  # the adaptive budget
            n_check = min(len(test), check_limit or len(test))
            say(f"adaptive-budget diagnostics: gradient norms, gates, accuracy vs eps (first {n_check} "
                "images)")
            extra, summary["adaptive_diagnostics"] = adaptive_diagnostics(
                model, x[:n_check], y[:n_check], result.adversarial[:n_check],
                budget=_adaptive_budget(checked_options), seed=seed)
            found = [*found, *extra]
            result.checks = found
            summary["checks"] = {c.name: c.summary() for c in found}
        for c in found:
            if c.passed is False:
                print(f"WARNING: gradient-masking check '{c.name}' failed: {c.detail}", file=sys.stderr)
        with RunLock(run_dir):
            if minimal is not None:
                _save_examples(run_dir, *_on_cpu(model, result), test, minimal)
            record = save_record(run_dir, summary, result, eps_points=points, minimal=minimal,
                                 per_image=per_image)
            store.discard()  # recorded: the finished chunks are no longer needed
            if report:
                say("figures and report")
                summary["report"] = str(write_run_report(run_dir, model, test, result))
        summary["record"] = str(record)  # after saving: where the record lies is not part of it
        return RunEvaluation(summary, model, config, test, result, record, found)


@contextlib.contextmanager
def _what_is_kept_on_interrupt(store: ChunkStore, bounds: list[tuple[int, int]], chunk_size: int,
                               main: bool) -> Iterator[None]:
    """A Ctrl-C or SIGTERM in the block, once chunks are kept, becomes :class:`Stopped` saying how
    many and that the same command goes on from them (process 0 says it; the others re-raise)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        kept = sum(store.has(a, b) for a, b in bounds) if main else 0
        if not kept:
            raise
        raise Stopped(getattr(stop, "signum", signal.SIGINT),
                      f"{kept} of {len(bounds)} chunks of up to {chunk_size} images are finished and kept "
                      f"in {store.directory}; the same command attacks only the rest") from None


def _on_cpu(model: nn.Module, result: RobustnessResult) -> tuple[nn.Module, RobustnessResult]:
    """``model`` and ``result`` on the CPU, where the figures are drawn (copies if elsewhere)."""
    if all(p.device.type == "cpu" for p in model.parameters()) and result.adversarial.device.type == "cpu":
        return model, result
    return copy.deepcopy(model).cpu(), result.to("cpu")


def write_run_report(run_dir: Path, model: nn.Module, test: ImageDataset,
                     result: RobustnessResult | None) -> Path:
    """(Re)write ``run_dir/report.html`` (see :func:`pellucid.report.run.run_report`), drawing
    on the CPU whatever device ``model`` and ``result`` are on; the caller holds the lock."""
    from pellucid.report.run import run_report

    if result is None:
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        return run_report(run_dir, model if on_cpu else copy.deepcopy(model).cpu(), test, None)
    model, result = _on_cpu(model, result)
    return run_report(run_dir, model, test, result)


def _adaptive_budget(options) -> AdaptiveBudget:
    """The :class:`AdaptiveBudget` of checked autoattack options whose budget is adaptive."""
    budget = getattr(options, "budget", None)
    return budget if isinstance(budget, AdaptiveBudget) else AdaptiveBudget()


def _save_examples(run_dir: Path, model: nn.Module, result: RobustnessResult, test: ImageDataset,
                   minimal: dict) -> None:
    from pellucid.viz.robust import plot_minimal_perturbations

    # untitled: the report's heading and text say what it shows and the medians
    plot_minimal_perturbations(model, test.images, result.adversarial, test.labels, list(test.classes),
                               run_dir / f"{result.attack}_examples.png", None, n=MINIMAL_EXAMPLES)
