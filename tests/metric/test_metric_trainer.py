"""The metric recipes on the shared trainer: schedule, parameter groups, per-epoch test accuracy,
bit-for-bit parity with a separately written reference loop, old run directories, kill + resume."""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import math
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from pellucid.data import DATASETS, ImageDataset
from pellucid.errors import CheckpointError, InvalidInputError
from pellucid.models import create_model, save_model
from pellucid.train import RECIPES, TrainConfig
from pellucid.train.checkpointing import PARTIAL_FILE, STATE_FILE, save_epoch
from pellucid.train.optim import Adam
from pellucid.train.trainer import best_so_far, lr_factor, resumable_changes

from interruptions import interrupted_at_call, run_kill_plan
from test_metric_models import synthetic_images

TIMING = {"epoch_seconds", "train_seconds"}


@pytest.fixture
def blobs(monkeypatch):
    """A tiny 3-class dataset registered as 'synthetic-blobs'; returns (train, test)."""
    x, y = synthetic_images(n_per_class=30, seed=0)
    xt, yt = synthetic_images(n_per_class=10, seed=1)
    train = ImageDataset(x, y, ("a", "b", "c"), "synthetic", torch.arange(len(y)))
    test = ImageDataset(xt, yt, ("a", "b", "c"), "synthetic", torch.arange(len(yt)))
    monkeypatch.setitem(DATASETS._entries, "synthetic-blobs",
                        type(DATASETS._entries["fashion-mnist"])(
                            "synthetic-blobs", lambda split, data_dir=None: train if split == "train" else test, "t"))
    return train, test


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def assert_same_as_saved(model: torch.nn.Module, run: Path) -> None:
    saved = load_file(str(run / "model.safetensors"))
    assert saved.keys() == model.state_dict().keys()
    for name, p in model.state_dict().items():
        assert torch.equal(p, saved[name]), name


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- the extension's pieces -------------------------------------------------------------------------

def test_trainer_defaults_leave_existing_recipes_as_they_were():
    cfg = TrainConfig()
    assert (cfg.schedule, cfg.augment, cfg.EXECUTION_OPTIONS) == ("constant", "noise", ("checkpoint_minutes",))
    assert resumable_changes(cfg) == ("checkpoint_minutes", "epochs")
    assert all(lr_factor(cfg, s, 10) == 1.0 for s in range(10))


def test_cosine_factor_is_the_per_step_half_cosine():
    cfg = TrainConfig(schedule="cosine")
    assert lr_factor(cfg, 0, 8) == 1.0
    assert lr_factor(cfg, 4, 8) == pytest.approx(0.5)
    assert lr_factor(cfg, 8, 8) == pytest.approx(0.0, abs=1e-15)
    for s in range(8):
        assert lr_factor(cfg, s, 8) == 0.5 * (1 + math.cos(math.pi * s / 8))
    assert resumable_changes(cfg) == ("checkpoint_minutes",)  # the schedule spans the epochs


def test_best_so_far_takes_the_first_epoch_of_the_maximum():
    history = [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.7}, {"epoch": 3, "acc": 0.7},
               {"epoch": 4, "acc": 0.6}]
    assert best_so_far(history, "acc") == {"best_acc": 0.7, "best_epoch": 2}
    assert best_so_far([], "acc") == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_adam_parameter_groups_match_torch_bit_for_bit(seed):
    torch.manual_seed(seed)
    ours = create_model("dictionary-mlp", hidden=7).train()
    theirs = copy.deepcopy(ours)

    def groups(m):
        return [{"params": [m.keys], "lr": 1e-4}, {"params": [p for p in m.parameters() if p is not m.keys],
                                                    "lr": 1e-2, "weight_decay": 1e-3}]

    opt_ours, opt_theirs = Adam(groups(ours), lr=5.0), torch.optim.Adam(groups(theirs), lr=5.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(5):
        x, y = torch.rand(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for g, lr in zip(opt.param_groups, (1e-4 * (5 - step), 1e-2 / (step + 1))):
                g["lr"] = lr  # a schedule sets each group's rate
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name
    # the state moves both ways, group by group
    back = Adam(groups(copy.deepcopy(ours)))
    back.load_state_dict(opt_theirs.state_dict())
    assert [g["lr"] for g in back.param_groups] == [g["lr"] for g in opt_theirs.param_groups]
    assert back.param_groups[1]["weight_decay"] == 1e-3
    torch.optim.Adam(groups(copy.deepcopy(theirs))).load_state_dict(opt_ours.state_dict())
    with pytest.raises(ValueError, match="parameters"):
        Adam(list(ours.parameters())).load_state_dict(opt_ours.state_dict())
    with pytest.raises(ValueError, match="more than one"):
        Adam([{"params": [ours.keys]}, {"params": list(ours.parameters())}])


# -- parity with a separately written reference loop -------------------------------------------------

@dataclass
class OldMetricMLPConfig:
    """The settings a metric-mlp run saved before the recipes moved onto the shared trainer."""

    metric: str = "l0.5"
    hidden: int = 6
    variant: str = "standardised"
    dataset: str = "synthetic-blobs"
    epochs: int = 4
    batch_size: int = 15
    lr: float = 0.01
    seed: int = 3
    test_limit: int = 0
    compiled_kernels: bool = False


def reference_loop(model, train, test, *, epochs, batch_size, groups, cosine, seed, stop_after=None):
    """torch.optim.Adam + LambdaLR stepped after every optimizer step, test accuracy per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(groups)
    n = len(train)
    steps = math.ceil(n / batch_size)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)) if cosine else 1.0)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(steps):
            rows_ = perm[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(train.images[rows_]), train.labels[rows_])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(test.images).argmax(1) == test.labels).float().mean())
        history.append({"epoch": epoch, "test_accuracy": acc,
                        "best_test_accuracy": max([acc] + [r["test_accuracy"] for r in history])})
        if epoch == stop_after:
            break
    return opt, gen, history


def test_metric_mlp_recipe_equals_the_reference_loop(blobs, tmp_path):
    train, test = blobs
    old = OldMetricMLPConfig()
    torch.manual_seed(old.seed)
    reference = create_model("metric-mlp", metric=old.metric, hidden=old.hidden)
    _, _, history = reference_loop(reference, train, test, epochs=4, batch_size=15,
                                   groups=[{"params": reference.parameters(), "lr": 0.01}], cosine=True, seed=3)
    entry = RECIPES.get("metric-mlp")
    result = entry.run(entry.config_type(**asdict(old)), tmp_path / "run", progress=False)
    assert_same_as_saved(reference, tmp_path / "run")
    got = [{k: r[k] for k in ("epoch", "test_accuracy", "best_test_accuracy")} for r in result["epochs"]]
    assert got == history
    assert all("best_epoch" in r and "train_accuracy" in r for r in result["epochs"])


def test_dictionary_recipe_equals_the_reference_loop(blobs, tmp_path):
    from pellucid.train.metric_recipes import build_dictionary_mlp

    train, test = blobs
    entry = RECIPES.get("dictionary-mlp")
    cfg = entry.config_type(dataset="synthetic-blobs", hidden=6, epochs=3, batch_size=15, data_init=True,
                            centre_lr_scale=0.01, seed=2)
    reference, _, groups = build_dictionary_mlp(cfg, train)
    assert [g["lr"] for g in groups] == [1e-4, 0.01]
    reference_loop(reference, train, test, epochs=3, batch_size=15, groups=groups, cosine=False, seed=2)
    entry.run(cfg, tmp_path / "run", progress=False)
    assert_same_as_saved(reference, tmp_path / "run")


def test_a_run_directory_of_the_old_loop_evaluates_and_resumes(blobs, tmp_path, capsys):
    """Written as the old metric loop wrote it (torch.optim.Adam + LambdaLR state, the old
    settings, rows without the trainer's columns): it still loads, and resumes bit for bit."""
    from pellucid.cli.main import main

    train, test = blobs
    old = OldMetricMLPConfig()
    torch.manual_seed(old.seed)
    model = create_model("metric-mlp", metric=old.metric, hidden=old.hidden)
    opt, gen, history = reference_loop(model, train, test, epochs=4, batch_size=15, cosine=True, seed=3,
                                       groups=[{"params": model.parameters(), "lr": 0.01}], stop_after=2)
    out = tmp_path / "old"
    history = [{**r, "train_loss": 1.0, "epoch_seconds": 0.1} for r in history]
    save_epoch(out, model, opt, gen, old, history)
    data = {"dataset": "synthetic-blobs", "classes": None, "class_names": ["a", "b", "c"]}
    save_model(model, out, "metric-mlp", {"metric": "l0.5", "hidden": 6, "variant": "standardised"},
               {"data": data, "train": asdict(old), "history_last": history[-1]})
    assert main(["evaluate", str(out), "--json", "--attack", "fgsm", "--eps", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == len(test)

    entry = RECIPES.get("metric-mlp")
    cfg = entry.config_type(**asdict(old))
    entry.run(cfg, tmp_path / "whole", progress=False)
    result = entry.run(cfg, out, resume=True, progress=False)
    assert [r["epoch"] for r in result["epochs"]] == [1, 2, 3, 4]
    assert same_weights(out, tmp_path / "whole")
    assert result["epochs"][-1]["best_test_accuracy"] == rows(tmp_path / "whole")[-1]["best_test_accuracy"]


def test_resume_refuses_a_state_saved_with_other_settings(blobs, tmp_path):
    entry = RECIPES.get("dictionary-mlp")
    cfg = entry.config_type(dataset="synthetic-blobs", hidden=5, epochs=1, batch_size=30)
    entry.run(cfg, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"centre_lr_scale=1\.0") as caught:
        entry.run(entry.config_type(**{**asdict(cfg), "centre_lr_scale": 0.5}), tmp_path / "run",
                  resume=True, progress=False)
    assert "\n" not in str(caught.value)
    # a constant-rate run may grow
    result = entry.run(entry.config_type(**{**asdict(cfg), "epochs": 2}), tmp_path / "run", resume=True,
                       progress=False)
    assert [r["epoch"] for r in result["epochs"]] == [1, 2]


@pytest.mark.parametrize("recipe", ["local-residual-mlp", "epsilon-highway-mlp", "plain-mlp"])
def test_local_recipes_train_and_resume_bit_for_bit(recipe, blobs, tmp_path, run_interrupted):
    entry = RECIPES.get(recipe)
    extra = {} if recipe == "plain-mlp" else {"hidden": 5, "centre_lr_scale": 0.1}
    cfg = entry.config_type(dataset="synthetic-blobs", width=16, depth=2, epochs=3, batch_size=15, lr=0.02,
                            **extra)
    whole = entry.run(cfg, tmp_path / "whole", progress=False)
    assert whole["epochs"][-1]["best_test_accuracy"] > 0.5
    run_interrupted(entry, cfg, tmp_path / "killed", at_call=2)
    entry.run(cfg, tmp_path / "killed", resume=True, progress=False)
    assert same_weights(tmp_path / "whole", tmp_path / "killed")
    assert rows(tmp_path / "whole") == rows(tmp_path / "killed")


# -- partial-epoch states: a kill within an epoch loses at most --checkpoint-minutes of work -----------

EVERY_BATCH = 1e-9  # minutes: a partial state after every batch but an epoch's last


def partial_cfg(**changes):
    """metric-mlp on the blobs: 6 batches per epoch, cosine rate per step, noise drawn per batch."""
    entry = RECIPES.get("metric-mlp")
    base = dict(dataset="synthetic-blobs", metric="l2", hidden=6, epochs=3, batch_size=15, lr=0.01,
                seed=5, augment="noise", noise_p=0.5, checkpoint_minutes=EVERY_BATCH)
    return entry, entry.config_type(**{**base, **changes})


def interrupt_at_step(monkeypatch, entry, cfg, out: Path, step: int) -> None:
    """Run into ``out`` and raise KeyboardInterrupt in training step ``step`` (1-based, counted over
    the whole run), before that step's update."""
    from pellucid.train import trainer

    with interrupted_at_call(monkeypatch, trainer, "check_loss", step):
        entry.run(cfg, out, progress=False)


def test_partial_epoch_states_resume_bit_for_bit_from_inside_any_epoch(blobs, tmp_path, monkeypatch, capsys):
    entry, cfg = partial_cfg()
    entry.run(cfg, tmp_path / "whole", progress=False)
    assert not (tmp_path / "whole" / PARTIAL_FILE).exists()  # each epoch's commit removes it
    # steps 3 (epoch 1: no epoch state yet), 10 (epoch 2) and 18 (epoch 3's last batch)
    for step in (3, 10, 18):
        out = tmp_path / f"stop{step}"
        interrupt_at_step(monkeypatch, entry, cfg, out, step)
        part = load_file(str(out / PARTIAL_FILE))
        epoch, batches = (step - 1) // 6 + 1, (step - 1) % 6
        with safe_open(str(out / PARTIAL_FILE), "pt") as f:
            info = json.loads(f.metadata()["info"])
        assert info["epoch"] == epoch - 1
        assert (info["partial"]["epoch"], info["partial"]["batches"]) == (epoch, batches)
        if epoch > 1:  # the model files hold the last finished epoch's weights, not the partial ones
            state = load_file(str(out / STATE_FILE))
            saved = load_file(str(out / "model.safetensors"))
            assert all(torch.equal(saved[k], state[f"model.{k}"]) for k in saved)
            assert not all(torch.equal(saved[k], part[f"model.{k}"]) for k in saved)
        else:
            assert not (out / STATE_FILE).exists() and not (out / "model.safetensors").exists()
        capsys.readouterr()
        entry.run(cfg, out, resume=True, progress=True)
        assert same_weights(out, tmp_path / "whole"), step
        assert rows(out) == rows(tmp_path / "whole"), step
        assert f"resuming epoch {epoch} after batch {batches} of 6" in capsys.readouterr().err
        assert not (out / PARTIAL_FILE).exists()
    # without partial states (0 minutes) the run is the same, and the interrupted epoch restarts
    entry0, cfg0 = partial_cfg(checkpoint_minutes=0.0)
    interrupt_at_step(monkeypatch, entry0, cfg0, tmp_path / "none", 10)
    assert not (tmp_path / "none" / PARTIAL_FILE).exists()
    entry0.run(cfg, tmp_path / "none", resume=True, progress=False)  # the option may change on resume
    assert same_weights(tmp_path / "none", tmp_path / "whole")


def test_stale_and_unreadable_partial_states(blobs, tmp_path, monkeypatch, capsys):
    entry, cfg = partial_cfg(schedule="constant")
    entry.run(cfg, tmp_path / "whole", progress=False)

    # unreadable beside an epoch state: reported, and the epoch restarts from that state
    interrupt_at_step(monkeypatch, entry, cfg, tmp_path / "bad", 10)
    kept = tmp_path / PARTIAL_FILE
    kept.write_bytes((tmp_path / "bad" / PARTIAL_FILE).read_bytes())  # within epoch 2
    (tmp_path / "bad" / PARTIAL_FILE).write_bytes(b"\x00" * 100)
    capsys.readouterr()
    entry.run(cfg, tmp_path / "bad", resume=True, progress=False)
    err = capsys.readouterr().err
    assert "ignoring the unreadable partial-epoch state" in err and "epoch 2 restarts" in err
    assert same_weights(tmp_path / "bad", tmp_path / "whole")

    # a kill between epoch 3's commit and the removal: the partial of an earlier epoch is ignored
    (tmp_path / "bad" / PARTIAL_FILE).write_bytes(kept.read_bytes())
    longer = replace_cfg(cfg, epochs=4)  # a constant-rate run may grow
    entry.run(longer, tmp_path / "bad", resume=True, progress=False)
    entry.run(longer, tmp_path / "whole", resume=True, progress=False)
    assert same_weights(tmp_path / "bad", tmp_path / "whole")
    assert rows(tmp_path / "bad") == rows(tmp_path / "whole")
    assert not (tmp_path / "bad" / PARTIAL_FILE).exists()

    # unreadable and alone (killed in epoch 1, then damaged): one line, nothing written
    interrupt_at_step(monkeypatch, entry, cfg, tmp_path / "alone", 3)
    with open(tmp_path / "alone" / PARTIAL_FILE, "r+b") as f:
        f.truncate(50)
    with pytest.raises(CheckpointError, match="the only state") as caught:
        entry.run(cfg, tmp_path / "alone", resume=True, progress=False)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "alone").iterdir() if not p.name.startswith(".")) == [PARTIAL_FILE]
    # a partial state alone is a run: a new run there is refused, not overwritten
    with pytest.raises(CheckpointError, match="already holds a training run"):
        entry.run(cfg, tmp_path / "alone", progress=False)


@pytest.mark.parametrize("minutes", [-1.0, float("nan"), float("inf"), "10"])
def test_checkpoint_minutes_bad_values_are_refused(minutes):
    from pellucid.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint_minutes"):
        TrainConfig(checkpoint_minutes=minutes)


@pytest.mark.parametrize("minutes", ["-1", "nan", "inf", "ten"])
def test_cli_checkpoint_minutes_bad_values_exit_2_before_any_work(minutes, tmp_path, capsys):
    from pellucid.cli.main import main

    code = main(["train", "metric-mlp", "--out", str(tmp_path / "run"), "--checkpoint-minutes", minutes])
    err = capsys.readouterr().err
    assert code == 2 and "--checkpoint-minutes" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def replace_cfg(cfg, **changes):
    return type(cfg)(**{**asdict(cfg), **changes})


# -- the command line, killed with SIGKILL -------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_idx_dir(root: Path) -> Path:
    """The synthetic blobs as a Fashion-MNIST IDX directory (for ``--data-dir``)."""
    root.mkdir()
    for stem, seed, n in (("train", 0, 30), ("t10k", 1, 10)):
        x, y = synthetic_images(n_per_class=n, seed=seed)
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", np.rint(x.squeeze(1).numpy() * 255))
        _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y.numpy())
    return root


def test_cli_metric_mlp_killed_then_resumed_gives_the_uninterrupted_weights(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    argv = ["train", "metric-mlp", "--data-dir", str(data), "--out", "{dir}", "--metric", "l0.5",
            "--hidden", "6", "--epochs", "3", "--batch-size", "15", "--lr", "0.01", "--seed", "3",
            "--no-progress"]
    # 4 writes per epoch (state, metrics, model, config): kill around epoch 2's commit, and mid-run
    kills = [{"write": 5, "phase": "before"}, {"write": 5, "phase": "after"},
             {"write": 7, "phase": "after"}, {"after_fraction": 0.5}]
    scenarios = [{"kind": "train", "dir": str(tmp_path / "ref"), "argv": argv}]
    scenarios += [{"kind": "train", "dir": str(tmp_path / f"kill{i}"), "argv": argv, "kill": k}
                  for i, k in enumerate(kills)]
    outcomes = run_kill_plan(tmp_path, scenarios)
    ref = tmp_path / "ref"
    for o in outcomes[1:]:
        run = Path(o["dir"])
        assert "write" not in o["kill"] or o["killed"], o
        assert o["integrity"] == [], o
        assert o["finish"] == [] or o["finish"][-1]["code"] == 0, o
        assert same_weights(run, ref), o["dir"]
        assert rows(run) == rows(ref), o["dir"]


def test_cli_killed_within_epochs_resumes_from_the_partial_state(tmp_path):
    """SIGKILL around the partial-epoch writes (a state after every batch: 5 per epoch, then the
    epoch's 4 writes): resumed, the weights and rows are the uninterrupted run's."""
    data = tiny_idx_dir(tmp_path / "data")
    argv = ["train", "metric-mlp", "--data-dir", str(data), "--out", "{dir}", "--metric", "l2",
            "--hidden", "6", "--epochs", "2", "--batch-size", "15", "--lr", "0.01", "--seed", "3",
            "--noise-p", "0.5", "--augment", "noise", "--no-progress"]
    fine = argv + ["--checkpoint-minutes", str(EVERY_BATCH)]
    # write 3: epoch 1's third partial (no epoch state yet); 6: epoch 1's commit, its partial not
    # yet removed (stale on resume); 12: epoch 2's third partial
    kills = [{"write": 3, "phase": "before"}, {"write": 3, "phase": "after"},
             {"write": 6, "phase": "after"}, {"write": 12, "phase": "after"}]
    scenarios = [{"kind": "train", "dir": str(tmp_path / "ref"), "argv": argv}]
    scenarios += [{"kind": "train", "dir": str(tmp_path / f"kill{i}"), "argv": fine, "kill": k}
                  for i, k in enumerate(kills)]
    outcomes = run_kill_plan(tmp_path, scenarios)
    for o in outcomes[1:]:
        run = Path(o["dir"])
        assert o["killed"] and o["integrity"] == [], o
        assert o["finish"][-1]["code"] == 0 and len(o["finish"]) == 1, o
        assert same_weights(run, tmp_path / "ref"), o["dir"]
        assert rows(run) == rows(tmp_path / "ref"), o["dir"]
        assert not (run / PARTIAL_FILE).exists()


def test_the_trainer_options_work_for_a_metric_recipe_too(blobs, tmp_path):
    """A validation split and noise augmentation are the shared trainer's, for every recipe."""
    entry = RECIPES.get("dictionary-mlp")
    cfg = entry.config_type(dataset="synthetic-blobs", hidden=5, epochs=1, batch_size=15, val_size=20,
                            augment="noise", noise_p=0.5)
    row = entry.run(cfg, tmp_path / "run", progress=False)["epochs"][-1]
    assert {"val_accuracy", "test_accuracy", "best_test_accuracy"} <= set(row)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["n_train"] == 70
    with pytest.raises(InvalidInputError, match="val_size"):
        entry.run(entry.config_type(**{**asdict(cfg), "val_size": 90}), tmp_path / "bad", progress=False)


def test_each_epoch_line_says_how_long_the_rest_takes_at_that_epochs_pace(blobs, tmp_path, capsys):
    from pellucid._text import duration

    entry, cfg = partial_cfg(checkpoint_minutes=0.0)
    capsys.readouterr()
    entry.run(cfg, tmp_path / "run", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch=")]
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(history) == 3
    for line, row in zip(lines, history):
        if row["epoch"] < 3:
            left = (3 - row["epoch"]) * row["epoch_seconds"]
            assert line.endswith(f"(epoch {row['epoch']} of 3; about {duration(left, ' ')} left at this "
                                 "epoch's pace)"), line
        else:
            assert "left" not in line  # the run is over


def test_durations_read_as_people_write_them():
    from pellucid._text import duration

    assert [duration(s, " ") for s in (0.42, 2.84, 24.2, 96, 7500, 61_200)] == [
        "420 ms", "2.8 s", "24 s", "1 min 36 s", "2 h 05 min", "17 h 00 min"]
    assert duration(float("nan")) == "–"


# -- a signal (Ctrl-C, kill) stops training at the end of its batch, with the work so far saved -----

@contextlib.contextmanager
def signal_at_step(monkeypatch, step: int, signum: int, times: int = 1):
    """While the block runs, deliver ``signum`` (``times`` times) to this process in training step
    ``step`` (1-based over the block), before that step's update, as a person's Ctrl-C or ``kill``
    would."""
    from pellucid.train import trainer

    real, calls = trainer.check_loss, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            for _ in range(times):
                signal.raise_signal(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "check_loss", signalled)
    # SIGINT as a terminal's Python has it, even where the suite runs with it ignored (see the
    # ctrl_c_heard fixture): the trainer keeps an ignored signal ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        monkeypatch.setattr(trainer, "check_loss", real)


@pytest.mark.parametrize("minutes", [EVERY_BATCH, 0.0])
def test_a_signal_mid_epoch_saves_the_epoch_so_far_and_resume_continues_it(blobs, tmp_path, monkeypatch,
                                                                           capfd, minutes):
    """Steps 1-6 are epoch 1: a Ctrl-C in step 3 finishes that step, saves the state after batch 3
    (also with partial states switched off: the signal asks for it), and stops; --resume then gives
    the uninterrupted run's weights and rows."""
    from pellucid.errors import Stopped

    entry, cfg = partial_cfg(checkpoint_minutes=minutes)
    entry.run(cfg, tmp_path / "whole", progress=False)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "stopped"
    with signal_at_step(monkeypatch, 3, signal.SIGINT), pytest.raises(Stopped) as stopped:
        entry.run(cfg, out, progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handlers are gone again
    assert stopped.value.signum == signal.SIGINT
    assert str(stopped.value) == f"epoch 1 of 3 stopped after batch 3 of 6; the run so far is saved in {out}"
    assert "SIGINT (Ctrl-C): stopping at the end of this batch" in capfd.readouterr().err
    with safe_open(str(out / PARTIAL_FILE), "pt") as f:
        assert json.loads(f.metadata()["info"])["partial"]["batches"] == 3
    entry.run(cfg, out, resume=True, progress=False)
    assert same_weights(out, tmp_path / "whole") and rows(out) == rows(tmp_path / "whole")


def test_a_signal_in_an_epochs_last_batch_stops_after_its_commit(blobs, tmp_path, monkeypatch):
    """SIGTERM in step 12 (epoch 2's last batch): no partial state can hold a finished epoch, so
    epoch 2 is validated and committed, then the run stops; in the run's last step it finishes."""
    from pellucid.errors import Stopped

    entry, cfg = partial_cfg()
    entry.run(cfg, tmp_path / "whole", progress=False)
    out = tmp_path / "stopped"
    with (signal_at_step(monkeypatch, 12, signal.SIGTERM),
          pytest.raises(Stopped, match=r"^stopped after epoch 2 of 3; the run so far is saved") as stopped):
        entry.run(cfg, out, progress=False)
    assert stopped.value.signum == signal.SIGTERM
    assert len(rows(out)) == 2 and not (out / PARTIAL_FILE).exists()
    entry.run(cfg, out, resume=True, progress=False)
    assert same_weights(out, tmp_path / "whole") and rows(out) == rows(tmp_path / "whole")

    # the run's last step: it finishes, then says so, so that a caller with more to do stops too
    with signal_at_step(monkeypatch, 18, signal.SIGINT), pytest.raises(Stopped) as stopped:
        entry.run(cfg, tmp_path / "done", progress=False)
    assert stopped.value.finished and stopped.value.signum == signal.SIGINT
    assert str(stopped.value) == f"training finished: all 3 epochs are saved in {tmp_path / 'done'}"
    assert same_weights(tmp_path / "done", tmp_path / "whole") and rows(tmp_path / "done") == rows(tmp_path / "whole")


def test_a_second_signal_stops_at_once_without_saving(blobs, tmp_path, monkeypatch):
    """Ctrl-C twice in step 9 (epoch 2): the second raises before the step ends, so the state on
    disk is the last one saved (epoch 1's commit, partial states off), and resume redoes epoch 2."""
    from pellucid.errors import Stopped

    entry, cfg = partial_cfg(checkpoint_minutes=0.0)
    entry.run(cfg, tmp_path / "whole", progress=False)
    out = tmp_path / "stopped"
    with signal_at_step(monkeypatch, 9, signal.SIGINT, times=2), pytest.raises(Stopped) as stopped:
        entry.run(cfg, out, progress=False)
    assert str(stopped.value) == ""  # nothing was saved for it: the CLI says "interrupted"
    assert len(rows(out)) == 1 and not (out / PARTIAL_FILE).exists()
    entry.run(cfg, out, resume=True, progress=False)
    assert same_weights(out, tmp_path / "whole")


@pytest.mark.parametrize("step, signals, code, said", [
    (4, [signal.SIGINT], 130, "stopped: epoch 1 of 2 stopped after batch 4 of 6; the run so far is saved in {out}; "
                              "the same command with --resume continues it"),
    (6, [signal.SIGTERM], 143, "stopped: stopped after epoch 1 of 2; the run so far is saved in {out}; the same "
                               "command with --resume continues it"),
    (8, [signal.SIGINT, signal.SIGINT], 130, "interrupted"),
    (12, [signal.SIGINT], 130, "stopped: training finished: all 2 epochs are saved in {out}"),
])
def test_cli_train_answers_a_real_signal_and_resume_continues(tmp_path, step, signals, code, said):
    """``pellucid train`` in its own process gets the signal from outside, as from a terminal or
    ``kill``: exit 128 + the signal's number, one line that says what was kept, no traceback; the
    same command with --resume then ends with the uninterrupted run's weights and rows."""
    from interruptions import signalled_command
    from pellucid.cli.main import main

    data = tiny_idx_dir(tmp_path / "data")
    argv = ["train", "metric-mlp", "--data-dir", str(data), "--metric", "l2", "--hidden", "6",
            "--epochs", "2", "--batch-size", "15", "--lr", "0.01", "--seed", "3", "--noise-p", "0.5",
            "--augment", "noise", "--checkpoint-minutes", "0", "--no-progress", "--out"]
    assert main(argv + [str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    done = signalled_command(tmp_path, "pellucid.train.trainer", "check_loss", step, [*argv, str(out)], signals)
    err = done.stderr
    assert done.returncode == code, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == f"pellucid train: {said.format(out=out)}", err
    assert main(argv + [str(out), "--resume"]) == 0
    assert same_weights(out, tmp_path / "ref") and rows(out) == rows(tmp_path / "ref")


def test_without_a_terminal_one_early_line_says_the_pace(blobs, tmp_path, monkeypatch, capsys):
    """No bar off a terminal: the first epoch run says, once, how long an epoch takes at its pace
    (here after 0 s instead of 60, so after its first batch; 6 batches per epoch)."""
    from pellucid.train import trainer

    monkeypatch.setattr(trainer, "FIRST_PACE_SECONDS", 0.0)
    entry, cfg = partial_cfg(checkpoint_minutes=0.0)
    capsys.readouterr()
    entry.run(cfg, tmp_path / "run", progress=True)
    said = [line for line in capsys.readouterr().err.splitlines() if "at this pace" in line]
    assert len(said) == 1, said
    assert said[0].startswith("epoch 1 of 3: 1 of 6 batches; training takes about ")
    assert said[0].endswith(" left in this one)")
    capsys.readouterr()
    entry.run(cfg, tmp_path / "quiet", progress=False)
    assert "at this pace" not in capsys.readouterr().err


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(blobs, tmp_path, capsys):
    entry, cfg = partial_cfg(checkpoint_minutes=0.0)
    entry.run(cfg, tmp_path / "run", progress=False)
    entry.run(cfg, tmp_path / "same", progress=False)
    capsys.readouterr()
    history = entry.run(cfg, tmp_path / "run", resume=True, progress=True)["epochs"]
    assert f"{tmp_path / 'run'} has finished its 3 epochs: nothing left to train" in capsys.readouterr().err
    assert len(history) == 3 and same_weights(tmp_path / "run", tmp_path / "same")
    assert rows(tmp_path / "run") == rows(tmp_path / "same")
