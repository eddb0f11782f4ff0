import json

import pytest
import torch

import pellucid.train.trainer as trainer_module
from pellucid.errors import CheckpointError
from pellucid.models import load_model, whitebox_mnist35
from pellucid.train import TrainConfig, fit, split_train_val

TINY = dict(epochs=2, batch_size=100, val_size=0, val_pgd_steps=2, seed=3)


@pytest.fixture(scope="module")
def tiny_data():
    from pellucid.data import load_dataset

    ds = load_dataset("mnist", "train", classes=(3, 5)).subset(slice(0, 500))
    return split_train_val(ds, 100, seed=0)


def _fit(tiny_data, out, **kw):
    torch.manual_seed(3)
    model = whitebox_mnist35()
    train, val = tiny_data
    return model, fit(model, train, val, TrainConfig(**{**TINY, **kw}), out,
                      model_name="whitebox-mnist35", progress=False,
                      extra_config={"data": {"dataset": "mnist", "classes": [3, 5]}})


def test_split_is_seeded_and_disjoint(tiny_data):
    train, val = tiny_data
    assert len(train) == 400 and len(val) == 100
    assert not set(train.index.tolist()) & set(val.index.tolist())


def test_training_learns_and_writes_a_loadable_run(tiny_data, tmp_path):
    model, history = _fit(tiny_data, tmp_path / "run")
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"val_accuracy", "val_pgd_accuracy", "train_seconds"} <= set(history[-1])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    loaded, config = load_model(tmp_path / "run")
    x = tiny_data[1].images[:5]
    assert torch.equal(loaded(x), model.eval()(x))
    assert config["train"]["lr"] == 3e-3
    # constraints hold after training
    assert 0.01 <= loaded.twostep.t0.item() <= 0.49
    assert torch.allclose(loaded.affine.features.norm(dim=1), torch.ones(8), atol=1e-5)


def test_same_seed_same_weights(tiny_data, tmp_path):
    a, _ = _fit(tiny_data, tmp_path / "a", epochs=1)
    b, _ = _fit(tiny_data, tmp_path / "b", epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_run_killed_mid_epoch_resumes_to_identical_weights(tiny_data, tmp_path, monkeypatch):
    reference, _ = _fit(tiny_data, tmp_path / "full")
    calls = {"n": 0}
    real = trainer_module.project_constraints_

    def dies_in_epoch_two(model):
        calls["n"] += 1
        if calls["n"] == 6:  # 4 steps per epoch: this is the 2nd step of epoch 2
            raise KeyboardInterrupt
        real(model)

    monkeypatch.setattr(trainer_module, "project_constraints_", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, tmp_path / "killed")
    monkeypatch.setattr(trainer_module, "project_constraints_", real)
    rows = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # epoch 1 finished and was kept
    with pytest.raises(CheckpointError, match="--resume"):
        _fit(tiny_data, tmp_path / "killed")
    torch.manual_seed(999)  # resuming must not depend on the global RNG
    model = whitebox_mnist35()
    train, val = tiny_data
    history = fit(model, train, val, TrainConfig(**TINY), tmp_path / "killed",
                  model_name="whitebox-mnist35", resume=True, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    for (k, p), q in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), k


def test_resume_refuses_different_settings_and_missing_state(tiny_data, tmp_path):
    _fit(tiny_data, tmp_path / "run", epochs=1)
    with pytest.raises(CheckpointError, match="lr"):
        fit(whitebox_mnist35(), *tiny_data, TrainConfig(**{**TINY, "lr": 1e-2}), tmp_path / "run",
            model_name="whitebox-mnist35", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        fit(whitebox_mnist35(), *tiny_data, TrainConfig(**TINY), tmp_path / "empty",
            model_name="whitebox-mnist35", resume=True, progress=False)
    (tmp_path / "run" / "train_state.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupted"):
        fit(whitebox_mnist35(), *tiny_data, TrainConfig(**TINY), tmp_path / "run",
            model_name="whitebox-mnist35", resume=True, progress=False)


def test_adversarial_eps_ramps_linearly_then_holds():
    from pellucid.train.trainer import adversarial_eps

    cfg = TrainConfig(adv_eps=0.3, adv_warmup_epochs=2.0)
    # 10 steps per epoch: the ramp spans steps 1..20
    assert adversarial_eps(cfg, 1, 10) == pytest.approx(0.3 / 20)
    assert adversarial_eps(cfg, 10, 10) == pytest.approx(0.15)
    assert adversarial_eps(cfg, 20, 10) == pytest.approx(0.3)
    assert adversarial_eps(cfg, 500, 10) == pytest.approx(0.3)
    assert adversarial_eps(TrainConfig(adv_eps=0.3), 1, 10) == 0.3  # no warmup: full radius


def test_resume_reads_settings_added_later_as_their_defaults(tiny_data, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pellucid.train.checkpointing import STATE_FILE

    _fit(tiny_data, tmp_path, epochs=1)
    state = tmp_path / STATE_FILE
    with safe_open(str(state), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["info"])
    del info["config"]["adv_warmup_epochs"]  # a run written before that setting existed
    save_file(tensors, str(state), metadata={**meta, "info": json.dumps(info)})
    train, val = tiny_data
    resume = lambda **kw: fit(whitebox_mnist35(), train, val, TrainConfig(**{**TINY, **kw}),  # noqa: E731
                              tmp_path, model_name="whitebox-mnist35", progress=False, resume=True)
    assert [r["epoch"] for r in resume(epochs=2)] == [1, 2]
    with pytest.raises(CheckpointError, match="adv_warmup_epochs"):
        resume(epochs=3, adv_warmup_epochs=1.0)
