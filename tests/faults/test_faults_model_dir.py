"""Issue 17, items 8, 12 and 19: a model directory's weights and config.json are checked on load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import pytest
import torch
from safetensors.torch import save_file

from pellucid.errors import CheckpointError, ConfigError, PellucidError
from pellucid.models import MODELS, create_model, load_model, load_weights, register_model, save_model
from pellucid.models import checkpoint


def _lenet_dir(path, extra=None, kwargs=None):
    torch.manual_seed(0)
    model = create_model("lenet-mnist35", **(kwargs or {}))
    data = {"dataset": "mnist", "classes": [3, 5], "class_names": ["3", "5"]}
    save_model(model, path, "lenet-mnist35", kwargs, {"data": data, **(extra or {})})
    return model


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        config[key] = value
    (path / "config.json").write_text(json.dumps(config))


# item 8: NaN / inf weights ----------------------------------------------------------------------

def test_item8_nan_and_inf_weights_are_refused_naming_the_tensors(tmp_path):
    model = _lenet_dir(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.5.weight"][0, 3] = float("nan")
    state["features.0.bias"][1] = float("inf")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert "classifier.5.weight" in msg and "features.0.bias" in msg and "NaN" in msg and "inf" in msg
    assert "model.safetensors" in msg
    with pytest.raises(CheckpointError, match="classifier.5.weight"):
        load_weights(create_model("lenet-mnist35"), tmp_path / "model.safetensors")


def test_item8_finite_weights_still_load_bit_for_bit(tmp_path):
    model = _lenet_dir(tmp_path)
    loaded, config = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert config["data"]["classes"] == [3, 5]


# item 12: class order of a model directory --------------------------------------------------------

def test_item12_model_dir_with_swapped_classes_is_refused(tmp_path):
    _lenet_dir(tmp_path)
    _edit_config(tmp_path, data={"dataset": "mnist", "classes": [5, 3]})
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert "[5, 3]" in msg and "[3, 5]" in msg and "lenet-mnist35" in msg


@pytest.mark.parametrize("classes", [None, [3], [3, 5, 8], [2, 5]])
def test_item12_model_dir_with_other_classes_than_registered_is_refused(tmp_path, classes):
    _lenet_dir(tmp_path)
    _edit_config(tmp_path, data={"dataset": "mnist", "classes": classes})
    with pytest.raises(CheckpointError, match="data.classes"):
        load_model(tmp_path)


def test_item12_check_config_classes_is_callable_on_a_config():
    def config(model, classes):
        return {"model": model, "data": {"dataset": "mnist", "classes": classes}}

    assert checkpoint.check_config_classes(config("lenet-mnist35", [3, 5])) == (3, 5)
    # a model registered without classes (all of its dataset) accepts a subset in ascending order
    assert checkpoint.check_config_classes(config("metric-mlp", [0, 4])) == (0, 4)
    assert checkpoint.check_config_classes(config("metric-mlp", None)) is None
    assert checkpoint.check_config_classes({"model": "lenet-mnist35"}) is None  # names no data
    with pytest.raises(CheckpointError, match="ascending"):
        checkpoint.check_config_classes(config("metric-mlp", [4, 0]))
    with pytest.raises(CheckpointError, match="\\[5, 3\\]"):
        checkpoint.check_config_classes(config("lenet-mnist35", [5, 3]))


def test_item12_registering_classes_out_of_order_is_refused():
    name = "faults-descending-classes"
    try:
        with pytest.raises(PellucidError, match="ascending"):
            register_model(name, dataset="mnist", classes=(5, 3))(lambda: torch.nn.Identity())
    finally:
        MODELS._entries.pop(name, None)  # never leave a test entry behind
    for spec in (MODELS.get(n) for n in MODELS):
        assert spec.classes is None or list(spec.classes) == sorted(set(spec.classes))


# item 19: wrongly typed config.json -----------------------------------------------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("model", ["lenet-mnist35"], "config.json: model must be a str"),
    ("model", 5, "config.json: model must be a str"),
    ("kwargs", ["n_classes", 2], "config.json: kwargs must be a dict"),
    ("kwargs", {"n_classes": "2"}, "config.json: kwargs.n_classes must be an int, got '2' (str)"),
    ("kwargs", {"n_classes": True}, "kwargs.n_classes must be an int, got True (bool)"),
    ("kwargs", {"n_classes": 2.0}, "kwargs.n_classes must be an int, got 2.0 (float)"),
    ("kwargs", {"nclasses": 2}, "unknown key 'nclasses'; valid: n_classes"),
    ("data", "mnist", "config.json: data must be a dict"),
    ("data", {"classes": [3, 5]}, "config.json: data.dataset"),
    ("data", {"dataset": 7, "classes": [3, 5]}, "config.json: data.dataset must be a str"),
    ("data", {"dataset": "mnist", "classes": "35"}, "config.json: data.classes"),
    ("data", {"dataset": "mnist", "classes": [3, "5"]}, "config.json: data.classes"),
    ("data", {"dataset": "mnist", "classes": [3, 3]}, "duplicate"),
    ("train", [1, 2], "config.json: train must be a dict"),
])
def test_item19_config_json_types_are_checked_naming_the_field(tmp_path, key, value, needle):
    _lenet_dir(tmp_path)
    _edit_config(tmp_path, **{key: value})
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert needle in str(err.value)


def test_item19_whitebox_kwargs_are_checked_against_the_network_arguments(tmp_path):
    torch.manual_seed(0)
    save_model(create_model("whitebox-mnist35"), tmp_path, "whitebox-mnist35", {},
               {"data": {"dataset": "mnist", "classes": [3, 5]}})
    _edit_config(tmp_path, kwargs={"n_kernels": "2"})
    with pytest.raises(CheckpointError, match=r"kwargs.n_kernels must be an int, got '2' \(str\)"):
        load_model(tmp_path)
    _edit_config(tmp_path, kwargs={"kernels": 2})
    with pytest.raises(CheckpointError, match="unknown key 'kernels'; valid: .*n_kernels"):
        load_model(tmp_path)


def test_item19_dictionary_mlp_optional_float_kwarg(tmp_path):
    torch.manual_seed(0)
    kwargs = {"hidden": 4, "epsilon_mode": "fixed", "epsilon": 1.0}
    save_model(create_model("dictionary-mlp", **kwargs), tmp_path, "dictionary-mlp", kwargs,
               {"data": {"dataset": "fashion-mnist", "classes": None}})
    load_model(tmp_path)  # valid as written
    _edit_config(tmp_path, kwargs={**kwargs, "epsilon": "1.0"})
    with pytest.raises(CheckpointError, match=r"kwargs.epsilon must be a float or None, got '1.0' \(str\)"):
        load_model(tmp_path)
    _edit_config(tmp_path, kwargs={**kwargs, "epsilon": float("nan")})
    with pytest.raises(CheckpointError, match="kwargs.epsilon must be finite"):
        load_model(tmp_path)


@pytest.mark.parametrize("name,kwargs", [
    ("lenet-mnist35", {"n_classes": 2}), ("whitebox-mnist35", {}),
    ("metric-mlp", {"metric": "l2", "hidden": 4, "variant": "standardised"}),
    ("dictionary-mlp", {"hidden": 4, "epsilon_mode": "running", "epsilon": None}),
])
def test_item19_valid_model_dirs_still_load(tmp_path, name, kwargs):
    torch.manual_seed(0)
    spec = MODELS.get(name)
    classes = list(spec.classes) if spec.classes else None
    save_model(create_model(name, **kwargs), tmp_path, name, kwargs,
               {"data": {"dataset": spec.dataset, "classes": classes}, "history_last": {"epoch": 1}})
    model, config = load_model(tmp_path)
    assert config["model"] == name and isinstance(model, torch.nn.Module)


def test_item19_check_dataclass_dict_on_the_train_config():
    from pellucid._config import check_dataclass_dict
    from pellucid.train import RECIPES, TrainConfig

    good = asdict(TrainConfig())
    assert check_dataclass_dict(TrainConfig, good, "config.json: train") == good
    with pytest.raises(ConfigError) as err:
        check_dataclass_dict(TrainConfig, {**good, "batch_size": "abc"}, "config.json: train")
    assert str(err.value) == "config.json: train.batch_size must be an int, got 'abc' (str)"
    with pytest.raises(ConfigError, match=r"config.json: train.lr must be a float, got \[0.1\] \(list\)"):
        check_dataclass_dict(TrainConfig, {**good, "lr": [0.1]}, "config.json: train")
    with pytest.raises(ConfigError, match="train.lr must be finite"):
        check_dataclass_dict(TrainConfig, {**good, "lr": float("inf")}, "config.json: train")
    with pytest.raises(ConfigError, match="unknown key 'batchsize'; valid: .*batch_size"):
        check_dataclass_dict(TrainConfig, {"batchsize": 3}, "config.json: train")
    with pytest.raises(CheckpointError, match="train_state: config.epochs must be an int"):
        check_dataclass_dict(TrainConfig, {"epochs": 1.5}, "train_state: config", error=CheckpointError)
    assert check_dataclass_dict(TrainConfig, {"lr": 1}, "train") == {"lr": 1}  # int for a float
    assert check_dataclass_dict(TrainConfig, {"lr": 1, "old": 2}, "train", ignore_unknown=True) == {"lr": 1}
    # a recipe's own config type (a TrainConfig subclass with other defaults) and its saved dict
    adv = RECIPES.get("lenet-mnist35-adv").config_type
    assert check_dataclass_dict(adv, asdict(adv()), "train") == asdict(adv())


@dataclass
class _Example:
    name: str
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 0.5)
    scale: Optional[float] = None
    flags: list[bool] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=dict)


def test_item19_check_dataclass_dict_generic_types():
    from pellucid._config import check_dataclass_dict

    out = check_dataclass_dict(_Example, {"name": "a", "sizes": [3, 4], "pair": [2, 1], "scale": None,
                                          "flags": [True], "table": {"x": 1}}, "cfg")
    assert out["sizes"] == (3, 4) and out["pair"] == (2, 1)  # JSON lists become the declared tuples
    assert _Example(**out).sizes == (3, 4)
    for bad, needle in [({}, "cfg.name is missing"), ({"name": 1}, r"cfg.name must be a str, got 1 \(int\)"),
                        ({"name": "a", "sizes": [1, "2"]}, r"cfg.sizes\[1\] must be an int"),
                        ({"name": "a", "sizes": 3}, "cfg.sizes must be a list"),
                        ({"name": "a", "pair": [1]}, "cfg.pair must have 2 items"),
                        ({"name": "a", "scale": "x"}, "cfg.scale must be a float or None"),
                        ({"name": "a", "flags": [1]}, r"cfg.flags\[0\] must be a bool"),
                        ({"name": "a", "table": {"x": "1"}}, r"cfg.table\['x'\] must be an int"),
                        ([1], "cfg must be a dict")]:
        with pytest.raises(ConfigError, match=needle):
            check_dataclass_dict(_Example, bad, "cfg")
