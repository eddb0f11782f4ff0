"""Issue 25: every attack declares its options (a checked dataclass), returns an AttackRun, and the
CLI's attack flags, their defaults and help come from those declarations; batched inference
(logits, margins) has one home, :mod:`pellucid.models.inference`."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from pellucid.cli import main
from pellucid.errors import InvalidInputError
from pellucid.robust import ATTACKS, AttackRun, evaluate_robustness, run_attack
from pellucid.robust.autoattack import Stage

from test_robust_art import ImageLinear

TINY_STAGES = (Stage("apgd-ce", {"steps": 2}), Stage("deepfool", {"steps": 2}),
               Stage("square", {"queries": 5}, white_box=False))
# small budgets: every registered attack on 4 images in well under a second
SMALL = {"pgd": {"steps": 2}, "adam-pgd": {"steps": 2}, "l2-bim": {"steps": 2}, "fgsm": {}, "fgm": {},
         "apgd-ce": {"steps": 2}, "apgd-dlr": {"steps": 2},
         "square": {"queries": 20}, "square-native": {"queries": 20}, "deepfool": {"steps": 2},
         "boundary": {"steps": 2}, "autoattack": {"budget": TINY_STAGES, "step_size": 0.05},
         "apgd-ce-native": {"steps": 2}, "apgd-dlr-native": {"steps": 2},
         "apgd-t-native": {"steps": 2}, "fab-t-native": {"steps": 2}}


class Counting(nn.Module):
    """Counts forward passes: an error raised "before any work" leaves it at 0."""

    def __init__(self):
        super().__init__()
        self.model, self.calls = ImageLinear(), 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _four():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 0, 1])


def _option_names(name):
    return [f.name for f in dataclasses.fields(ATTACKS.get(name).options)]


def _all_option_names():
    return {n for name in ATTACKS for n in _option_names(name)}


@pytest.mark.parametrize("name", list(SMALL))
def test_unknown_or_inapplicable_option_is_a_one_line_error_listing_the_valid_options(name):
    x, y = _four()
    others = sorted(_all_option_names() - set(_option_names(name)))
    for bad in ("bogus_option", others[0]):
        for call in (lambda m: run_attack(name, m, x, y, eps=0.1, **{bad: 1}),
                     lambda m: evaluate_robustness(m, x, y, attack=name, eps=0.1, **{bad: 1})):
            model = Counting()
            with pytest.raises(InvalidInputError) as err:
                call(model)
            msg = str(err.value)
            assert "\n" not in msg and name in msg and repr(bad) in msg, msg
            assert all(option in msg for option in _option_names(name)), msg
            assert _option_names(name) or "none" in msg
            assert model.calls == 0  # refused before any work


@pytest.mark.parametrize("name", list(SMALL))
def test_every_attack_declares_options_and_returns_an_attack_run(name):
    from pellucid.robust import AttackOptions

    assert set(SMALL) == set(ATTACKS)  # a new attack needs an entry here
    attack = ATTACKS.get(name)
    assert issubclass(attack.options, AttackOptions) and dataclasses.is_dataclass(attack.options)
    x, y = _four()
    run = attack(ImageLinear(), x, y, eps=0.2, generator=torch.Generator().manual_seed(0),
                 **SMALL[name])
    assert isinstance(run, AttackRun)
    assert run.adversarial.shape == x.shape and run.stages and "seconds" in run.stages[-1]


@pytest.mark.parametrize("name,option,value,needle", [
    ("pgd", "steps", 0, ">= 1"), ("pgd", "step_size", -0.1, "> 0"), ("pgd", "steps", "a", "an int"),
    ("pgd", "random_start", 1, "a bool"), ("adam-pgd", "steps", 0, ">= 1"),
    ("adam-pgd", "step_size", 0.0, "> 0"), ("l2-bim", "steps", 0, ">= 1"), ("l2-bim", "step_size", -1.0, "> 0"),
    ("apgd-ce", "restarts", 0, ">= 1"),
    ("apgd-dlr", "step_size", 0.0, "> 0"), ("square", "queries", 0, ">= 1"),
    ("square-native", "restarts", 0, ">= 1"), ("square-native", "p_init", 1.5, "<= 1"),
    ("deepfool", "overshoot", -1.0, ">= 0"), ("boundary", "steps", 0, ">= 1"),
    ("autoattack", "budget", "fast", "standard"), ("autoattack", "step_size", -1.0, "> 0"),
])
def test_an_out_of_range_option_raises_naming_the_attack_and_the_option(name, option, value, needle):
    x, y = _four()
    model = Counting()
    with pytest.raises(InvalidInputError) as err:
        run_attack(name, model, x, y, eps=0.1, **{option: value})
    msg = str(err.value)
    assert msg.startswith(f"{name}: {option}") and needle in msg and "\n" not in msg, msg
    assert model.calls == 0


def test_a_custom_autoattack_stage_with_a_bad_option_fails_before_any_work():
    x, y = _four()
    model = Counting()
    with pytest.raises(InvalidInputError, match="'apgd-ce' has no option 'querie'"):
        run_attack("autoattack", model, x, y, eps=0.1, budget=(Stage("apgd-ce", {"querie": 5}),))
    assert model.calls == 0


def test_registration_refuses_a_function_that_does_not_match_its_options():
    from pellucid.robust.attacks import Attack, PGDOptions

    def swallows(model, x, y, *, eps, steps=40, step_size=None, random_start=True, **_):
        return x

    def misses(model, x, y, *, eps, steps=40):
        return x

    def other_default(model, x, y, *, eps, steps=7, step_size=None, random_start=True):
        return x

    for function in (swallows, misses, other_default):
        with pytest.raises(TypeError, match="PGDOptions"):
            Attack("x", function, PGDOptions)


# --------------------------------------------------------------------------------------- CLI


def _help(monkeypatch, capsys) -> str:
    from pellucid.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping: each help text on one line
    with pytest.raises(SystemExit):
        build_parser(["evaluate"]).parse_args(["evaluate", "--help"])
    return capsys.readouterr().out


def _shown(f: dataclasses.Field) -> str:
    from pellucid.robust.attacks import default_text

    flag = "--" + f.name.replace("_", "-")
    if isinstance(f.default, bool):
        return flag if f.default else "--no-" + flag[2:]
    return f"{flag} {default_text(f)}"


def test_cli_help_shows_each_attacks_options_with_defaults(monkeypatch, capsys):
    text = _help(monkeypatch, capsys)
    for entry in ATTACKS.entries():
        listed = re.search(re.escape(f"{entry.name}: {entry.summary} [") + r"([^\]]*)\]", text)
        assert listed, entry.name
        shown = [_shown(f) for f in dataclasses.fields(entry.obj.options)] or ["no options"]
        assert listed.group(1) == ", ".join(shown), (entry.name, listed.group(1))
    assert "--steps 40" in text and "--queries 5000" in text and "--budget standard" in text
    # each flag's help names the attacks that take it, with their defaults
    steps = next(line for line in text.splitlines() if line.strip().startswith("--steps"))
    assert "pgd 40, adam-pgd 40, l2-bim 10, apgd-ce 100, apgd-dlr 100, deepfool 100, boundary 1000" in steps
    step_size = next(line for line in text.splitlines() if line.strip().startswith("--step-size"))
    assert "pgd eps / 3, adam-pgd eps / 3; l2: eps / 40, l2-bim eps / 5" in step_size
    p_init = next(line for line in text.splitlines() if line.strip().startswith("--p-init"))
    assert "(default 0.8); applies to square, square-native" in p_init


def test_cli_flags_are_the_union_of_the_attacks_options(monkeypatch, capsys):
    text = _help(monkeypatch, capsys)
    for name in _all_option_names():
        assert "--" + name.replace("_", "-") in text, name


@pytest.mark.parametrize("name", list(SMALL))
def test_cli_defaults_per_attack_are_the_attacks_own(name):
    from pellucid.cli.evaluate import attack_options, option_fields

    args = type("Args", (), {"attack": name, **{k: None for k in option_fields()}})()
    expected = {f.name: f.default for f in dataclasses.fields(ATTACKS.get(name).options)}
    assert attack_options(args) == expected
    legacy = {"pgd": 40, "apgd-ce": 100, "apgd-dlr": 100, "deepfool": 100, "boundary": 1000,
              "adam-pgd": 40, "l2-bim": 10,  # the last two: foolbox's L-inf Adam-PGD and L2 BIM
              "apgd-ce-native": 100, "apgd-dlr-native": 100, "apgd-t-native": 100, "fab-t-native": 100}
    assert expected.get("steps") == legacy.get(name)  # the defaults `pellucid evaluate` always had
    if name in ("square", "square-native"):
        assert expected["queries"] == 5000 and expected["restarts"] == 1



@pytest.mark.parametrize("argv,needle", [
    (["--attack", "fgsm", "--step-size", "0.1"], "--step-size does not apply to fgsm"),
    (["--attack", "deepfool", "--step-size", "0.1"], "--step-size does not apply to deepfool"),
    (["--attack", "pgd", "--overshoot", "0.1"], "--overshoot does not apply to pgd"),
    (["--attack", "square", "--no-random-start"], "--random-start does not apply to square"),
])
def test_cli_a_flag_the_attack_does_not_take_is_a_one_line_error(authors_dir, capsys, argv, needle):
    assert main(["evaluate", str(authors_dir), "--limit", "4", "--no-checks", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_records_keep_every_option_with_its_default(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "square-native", "--queries", "5",
                 "--limit", "4", "--no-checks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["options"] == {"queries": 5, "restarts": 1, "p_init": 0.8}
    record = json.loads(Path(out["record"]).read_text())
    assert record["summary"]["options"] == out["options"]


# -------------------------------------------------------------------------- batched inference


def test_batched_inference_has_one_home():
    import pellucid.models.inference as inference
    import pellucid.robust.evaluate
    import pellucid.robust.square
    import pellucid.train.metric_recipes
    import pellucid.train.trainer

    for module in (pellucid.robust.evaluate, pellucid.train.metric_recipes, pellucid.train.trainer):
        assert module.predict_logits is inference.predict_logits, module.__name__
    assert pellucid.robust.square.margin is inference.margin
    src = Path(inference.__file__).parents[1]
    loops = [p.relative_to(src) for d in ("robust", "train", "report") for p in (src / d).glob("*.py")
             if re.search(r"torch\.cat\(\[\s*model\(", p.read_text())]
    assert not loops, f"batched logits written again in {loops}: use pellucid.models.inference"


def test_margins_are_positive_exactly_where_the_prediction_is_right():
    from pellucid.models.inference import margin, predict_margins

    class Fixed(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    assert torch.equal(margin(z, y), torch.tensor([1.0, -3.0, 0.0, 0.0]))
    m = predict_margins(Fixed(), z, y, batch_size=3)
    assert torch.equal(m > 0, Fixed()(z).argmax(1) == y)  # a tie counts for the argmax's class
