"""Training state in one atomic safetensors file: model, optimizer, RNG, epoch and metrics together.

A crash can therefore never leave weights from epoch k beside an optimizer from epoch k - 1, nor
a finished epoch without its metrics row: ``metrics.jsonl`` is a copy of the rows held in the
state file, rewritten from them on resume.

Within a long epoch the trainer also saves a *partial-epoch* state, the same content after some
of the epoch's batches, to a second file (``PARTIAL_FILE``). It never replaces the epoch state:
that stays the authority on finished epochs, and a version of pellucid that does not know the
second file resumes correctly (from the epoch's start) by ignoring it. A partial state counts
only if it continues the epoch after the one the epoch state finished; the next epoch's commit
removes it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from pellucid._config import check_dataclass_dict
from pellucid._io import save_bytes_atomic, save_tensors_atomic
from pellucid.errors import CheckpointError, PellucidError

STATE_FILE = "train_state.safetensors"
PARTIAL_FILE = "train_state.partial.safetensors"
METRICS_FILE = "metrics.jsonl"
MODEL_FILES = ("model.safetensors", "config.json")  # written by models.checkpoint.save_model


class TrainingDivergedError(PellucidError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Optimizer(Protocol):
    """What is checkpointed of an optimizer: ``torch.optim.Optimizer`` or :class:`pellucid.train.optim.Adam`."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def save_train_state(path: Path, model: nn.Module, optimizer: Optimizer,
                     generator: torch.Generator, info: dict[str, Any],
                     epoch_start: torch.Tensor | None = None) -> None:
    """``epoch_start``: the generator's state when the current epoch began (partial states)."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    if epoch_start is not None:
        tensors["rng.epoch_start"] = epoch_start
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors_atomic(path, tensors, meta)


def load_train_state(path: Path, model: nn.Module, optimizer: Optimizer,
                     generator: torch.Generator, epoch_start: torch.Generator | None = None) -> dict[str, Any]:
    """Restore everything saved by :func:`save_train_state`; returns its ``info`` dict.

    ``epoch_start`` receives the epoch-start generator state of a partial-epoch file (required
    there: without it the epoch's data order cannot be drawn again)."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        info, groups = json.loads(meta["info"]), json.loads(meta["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {path} is corrupted ({e})") from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"cannot resume: {path} holds NaN or inf in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}; the run diverged before this "
                              "checkpoint: start a new run (e.g. with a lower --lr)")
    if not isinstance(info, dict) or not isinstance(info.get("epoch"), int):
        raise CheckpointError(f"cannot resume: {path} records no finished epoch")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume: {path} does not match the model ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"cannot resume: {path} holds another optimizer's state ({e})") from None
    try:
        generator.set_state(tensors["rng.generator"])
        if epoch_start is not None:
            epoch_start.set_state(tensors["rng.epoch_start"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume: {path} holds no valid generator state ({e})") from None
    return info


def has_training_state(out: Path) -> bool:
    """Whether ``out`` holds a run that ``resume=True`` continues (an epoch or partial-epoch state)."""
    return (Path(out) / STATE_FILE).is_file() or (Path(out) / PARTIAL_FILE).is_file()


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse, before any work, to start a run where one exists or to resume where none does.

    A directory holding a model but no training state (a finished or copied model) is never
    written by a new run: pellucid cannot recreate what it would overwrite.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a directory; choose a directory")
    state = out / STATE_FILE
    model_files = [name for name in MODEL_FILES if (out / name).exists()]
    if resume:
        if has_training_state(out):
            return
        if model_files:
            raise CheckpointError(f"nothing to resume in {out}: it holds a model ({model_files[0]}) "
                                  f"but no training state ({STATE_FILE}); train into a new --out")
        raise CheckpointError(f"nothing to resume in {out} (no {STATE_FILE}); drop --resume")
    if state.exists() or (out / PARTIAL_FILE).exists() or (out / METRICS_FILE).exists():
        raise CheckpointError(f"{out} already holds a training run; continue it with --resume or "
                              "choose a new --out")
    if model_files:
        raise CheckpointError(f"{out} already holds a trained model ({model_files[0]}) that cannot "
                              "be resumed; choose a new --out (a model is never overwritten)")


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.jsonl``; a garbled line is skipped with a warning on stderr."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch row")
        except ValueError:
            print(f"pellucid: warning: skipping garbled line {number} of {path}", file=sys.stderr)
            continue
        rows.append(row)
    return rows


@dataclass(frozen=True)
class PartialEpoch:
    """Where a run stands inside epoch ``epoch`` (1-based): ``batches`` of its batches done.

    ``epoch_start`` is the data-order generator's state when the epoch began, from which the
    epoch's permutation is drawn again on resume; ``loss_sum``, ``correct`` and ``train_seconds``
    are the epoch's running totals, so its metrics row is the one an uninterrupted run writes
    (up to the seconds, which add the interrupted parts)."""

    epoch: int
    batches: int
    loss_sum: float
    correct: int
    train_seconds: float
    epoch_start: torch.Tensor

    def info(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "loss_sum": self.loss_sum,
                "correct": self.correct, "train_seconds": self.train_seconds}


def _state_info(path: Path) -> dict[str, Any]:
    """The ``info`` of a state file, from its header only (no tensors read)."""
    with safe_open(str(path), "pt") as f:
        info = json.loads((f.metadata() or {})["info"])
    if not isinstance(info, dict) or not isinstance(info.get("epoch"), int):
        raise ValueError("no finished-epoch count")
    return info


def _current_partial(out: Path, done: int) -> dict[str, Any] | None:
    """The partial-epoch info of ``out`` if it continues epoch ``done + 1``; ``None`` if there is
    none or it is stale (left by a kill between an epoch's commit and the removal of the file).
    Raises ``ValueError``/``OSError``/``SafetensorError`` if the file is unreadable."""
    path = out / PARTIAL_FILE
    if not path.is_file():
        return None
    info = _state_info(path)
    part = info.get("partial")
    if not (isinstance(part, dict) and info["epoch"] == done and part.get("epoch") == done + 1):
        return None
    return part


def start_or_resume(out: Path, resume: bool, cfg: Any, model: nn.Module, optimizer: Optimizer,
                    generator: torch.Generator, may_change: tuple[str, ...] = ("epochs",),
                    write: bool = True) -> tuple[int, list[dict[str, Any]], PartialEpoch | None]:
    """Begin a run in ``out``, or (``resume=True``) restore the one there: ``(epochs done, their
    metrics, where the next epoch was interrupted or None)``.

    ``cfg`` is the run's settings dataclass. A resumed run must have the same settings except
    those in ``may_change``, and at least as many epochs as it has finished; a setting added to
    the dataclass after the run started reads as its default. Without ``resume`` an existing run
    or model in ``out`` is refused rather than overwritten (:func:`check_run_dir`). The caller
    holds ``out``'s :class:`pellucid._io.RunLock`. ``write=False`` (the processes of a job other
    than process 0) only reads: ``metrics.jsonl`` is left to the process that writes.

    A current partial-epoch state is restored instead of the epoch state it continues; an
    unreadable one is reported and skipped (the epoch restarts from the epoch state).
    """
    check_run_dir(out, resume)
    if not resume:
        return 0, [], None
    state_path, partial_path = out / STATE_FILE, out / PARTIAL_FILE
    try:
        done_before = _state_info(state_path)["epoch"] if state_path.is_file() else 0
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {state_path} is corrupted ({e})") from None
    epoch_start = torch.Generator()
    part: dict[str, Any] | None = None
    try:
        part = _current_partial(out, done_before)
        if part is not None:
            info = load_train_state(partial_path, model, optimizer, generator, epoch_start)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, CheckpointError) as e:
        if not state_path.is_file():
            raise CheckpointError(f"cannot resume: {partial_path}, the only state in {out}, is "
                                  f"unreadable ({e}); start a new run") from None
        print(f"pellucid: warning: ignoring the unreadable partial-epoch state {partial_path} ({e}); "
              f"epoch {done_before + 1} restarts from its beginning", file=sys.stderr)
        part = None
    if part is None:
        info = load_train_state(state_path, model, optimizer, generator)
    defaults = {f.name: f.default for f in fields(cfg)}
    loaded = partial_path if part is not None else state_path
    # a setting since removed from the dataclass is ignored; one of the wrong type is refused
    saved_cfg = check_dataclass_dict(type(cfg), info.get("config") or {}, f"{loaded}: config",
                                     error=CheckpointError, ignore_unknown=True)
    saved = {k: v for k, v in {**defaults, **saved_cfg}.items() if k not in may_change}
    wanted = {k: v for k, v in asdict(cfg).items() if k not in may_change}
    if saved != wanted:
        diff = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise CheckpointError(f"cannot resume {out}: it was started with different settings "
                              f"({', '.join(f'{k}={saved.get(k)}' for k in diff)})")
    done = int(info["epoch"])
    epochs = getattr(cfg, "epochs", None)
    if isinstance(epochs, int) and epochs < done:
        raise CheckpointError(f"{out} has finished {done} epochs; --epochs {epochs} is fewer: pass "
                              f"--epochs {done} or more to continue it, or choose a new --out")
    history = info.get("history")
    if not isinstance(history, list):  # runs saved before the state held the metrics
        history = [r for r in read_metrics(out) if r["epoch"] <= done]
    if write:
        _write_metrics(out, history)  # repairs a garbled or stale metrics.jsonl
    partial = None
    if part is not None:
        try:
            partial = PartialEpoch(epoch=int(part["epoch"]), batches=int(part["batches"]),
                                   loss_sum=float(part["loss_sum"]), correct=int(part["correct"]),
                                   train_seconds=float(part["train_seconds"]),
                                   epoch_start=epoch_start.get_state())
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot resume: {partial_path} is corrupted ({e})") from None
    return done, history, partial


def check_loss(loss: torch.Tensor, epoch: int, step: int, out: Path | None) -> None:
    """Stop a diverged run: raise :class:`TrainingDivergedError` if ``loss`` is NaN or inf."""
    value = float(loss.detach())
    if not math.isfinite(value):
        kept = (f"; the checkpoint of epoch {epoch - 1} in {out} is kept" if out is not None and epoch > 1
                else "")
        raise TrainingDivergedError(f"training diverged: the loss is {value} at epoch {epoch}, step "
                                    f"{step}{kept}; try a lower --lr")


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    save_bytes_atomic(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())


def _refuse_non_finite(out: Path, model: nn.Module, epoch: int) -> None:
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDivergedError(f"training diverged in epoch {epoch}: {', '.join(bad[:5])} "
                                    f"hold NaN or inf; the previous checkpoint in {out} is kept; try a lower --lr")


def save_epoch(out: Path, model: nn.Module, optimizer: Optimizer, generator: torch.Generator,
               cfg: Any, history: list[dict[str, Any]]) -> None:
    """After an epoch: the resumable state with the metrics so far (one atomic write, the
    authority on resume), then their ``metrics.jsonl`` copy. Weights that turned NaN or inf are
    never saved over the last good checkpoint."""
    _refuse_non_finite(out, model, history[-1]["epoch"])
    save_train_state(out / STATE_FILE, model, optimizer, generator,
                     {"epoch": history[-1]["epoch"], "config": asdict(cfg), "history": history})
    _write_metrics(out, history)
    (out / PARTIAL_FILE).unlink(missing_ok=True)  # after the commit: a kill before leaves it stale


def save_partial_epoch(out: Path, model: nn.Module, optimizer: Optimizer, generator: torch.Generator,
                       cfg: Any, history: list[dict[str, Any]], partial: PartialEpoch) -> None:
    """Within epoch ``partial.epoch``: the resumable state after ``partial.batches`` batches, in
    ``PARTIAL_FILE`` (one atomic write; the epoch state and the model files are not touched)."""
    _refuse_non_finite(out, model, partial.epoch)
    save_train_state(out / PARTIAL_FILE, model, optimizer, generator,
                     {"epoch": partial.epoch - 1, "config": asdict(cfg), "history": history,
                      "partial": partial.info()}, epoch_start=partial.epoch_start)
