"""Start-up cost: ``import pellucid`` and building any ``pellucid`` parser (``--help``, usage
errors) import none of the heavy libraries, and the torch-free registries (recipes, attacks and
their options) list exactly what the modules that implement them register.

Each check runs in a fresh interpreter (``sys.modules`` of this one holds whatever other tests
imported) and looks at ``sys.modules``, which does not depend on the machine's speed; one test
also times the console command.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pellucid.cli.main import SUBCOMMANDS
from pellucid.train.catalogue import RECIPES

HEAVY = ("torch", "torchvision", "matplotlib", "art", "captum", "gradio")


def _python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout (it must exit 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_pellucid_imports_no_heavy_library():
    probe = ("import json, sys\nimport pellucid\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    assert json.loads(_python(probe)) == []


# every subcommand's --help, every recipe's, and usage errors (the parser alone answers them)
COMMANDS = ([(["--help"], 0)] + [([name, "--help"], 0) for name in SUBCOMMANDS]
            + [(["train", recipe, "--help"], 0) for recipe in RECIPES]
            + [(argv, 2) for argv in (["no-such-command"], ["train"], ["train", "no-such-recipe"],
                                      ["train", "metric-mlp"], ["train", "metric-mlp", "--out", "x", "--epochs", "0"],
                                      ["evaluate"], ["evaluate", "DIR", "--attack", "no-such-attack"],
                                      ["evaluate", "DIR", "--steps", "0"], ["evaluate", "DIR", "--p-init", "2"],
                                      ["demo", "--epochs", "0"], ["explain", "--steps", "x"])])

PARSER_PROBE = """
import contextlib, io, json, sys
from pellucid.cli.main import main
heavy = tuple(sys.argv[1].split(","))
report = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    report.append({"argv": argv, "exit": code, "out": out.getvalue(), "err": err.getvalue(),
                   "heavy": loaded})
print(json.dumps(report))
"""


def test_building_any_parser_imports_no_heavy_library():
    """``pellucid [COMMAND [RECIPE]] --help`` and usage errors: the parser is built and answers
    without torch, torchvision, matplotlib, ART, Captum or Gradio (checked after each command, so
    a failure names the first one that imported them)."""
    report = json.loads(_python(PARSER_PROBE, ",".join(HEAVY), json.dumps([a for a, _ in COMMANDS])))
    assert len(report) == len(COMMANDS)
    for row, (argv, code) in zip(report, COMMANDS):
        assert row["heavy"] == [], f"pellucid {' '.join(argv)} imported {row['heavy'][:5]}"
        assert row["exit"] == code, row
        if code == 0:
            assert row["out"].startswith("usage: pellucid"), row
        else:  # one line, naming the command
            assert row["err"].startswith("pellucid") and row["err"].count("\n") == 1, row


def test_a_named_recipe_gets_the_only_full_sub_parser():
    """``pellucid train RECIPE ...`` builds that recipe's options only; without a recipe named
    (``pellucid train --help``, the CLI reference), every recipe gets its options."""
    import argparse

    from pellucid.cli.main import build_parser

    def recipe_parsers(argv: list[str]) -> dict[str, argparse.ArgumentParser]:
        train = next(a for a in build_parser(argv)._actions if isinstance(a, argparse._SubParsersAction))
        inner = next(a for a in train.choices["train"]._actions if isinstance(a, argparse._SubParsersAction))
        return dict(inner.choices)

    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}

    named = recipe_parsers(["train", "metric-mlp", "--out", "x"])
    assert list(named) == list(RECIPES)  # every recipe is still a choice, with its summary
    assert {"--out", "--hidden", "--epochs"} <= options(named["metric-mlp"])
    assert all(options(p) == {"-h", "--help"} for name, p in named.items() if name != "metric-mlp")
    every = recipe_parsers(["train"])
    assert list(every) == list(RECIPES) and all("--out" in options(p) for p in every.values())
    assert "--similarity" in options(every["inh-mnist"]) and "--hidden" in options(every["metric-mlp"])


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_takes_under_a_second(command):
    """Wall clock of the console command (median of 3): the sys.modules checks above are the
    robust ones; this states the goal they serve."""
    script = Path(sys.executable).with_name("pellucid")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "pellucid"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([*cmd, command, "--help"], capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        assert out.returncode == 0 and "usage: pellucid " + command in out.stdout, out.stderr
    assert statistics.median(times) < 1.0, (command, times)


REGISTRY_PROBE = """
import dataclasses, json, sys
from pellucid.robust.catalogue import ATTACKS
from pellucid.train.catalogue import RECIPES

def fields(cls):
    return [[f.name, str(f.type), repr(f.default), repr(dict(f.metadata))] for f in dataclasses.fields(cls)]

def snapshot():
    return {"attacks": [[d.name, d.summary, d.info.__name__, fields(d.info)] for d in ATTACKS.declarations()],
            "recipes": [[e.name, e.summary, e.obj.summary, e.obj.config_type.__name__,
                         fields(e.obj.config_type)] for e in RECIPES.entries()]}

lazy = snapshot()
lazy_heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))

import pellucid.models
import pellucid.robust
from pellucid.models import MODELS
from pellucid.nn.disjunctive import hashing
from pellucid.train import config

attacks = ATTACKS.entries()  # imports every attack's module: each registration must match
registered = {"attacks": [[e.name, e.summary, e.obj.options.__name__, fields(e.obj.options)] for e in attacks],
              "recipes": snapshot()["recipes"]}
models = {}
for e in RECIPES.entries():
    run = e.obj.run
    assert callable(run.resolve()), e.name  # each lazy "module:function" names a function
    if run.target == "pellucid.train.recipes:train_registered_classifier":
        models[e.name] = [run.args[0], MODELS.get(run.args[0]).summary]
print(json.dumps({"lazy": lazy, "lazy_heavy": lazy_heavy, "registered": registered, "models": models,
                  "inh_choices": [list(config.INH_SIMILARITIES) == list(hashing.SIMILARITIES),
                                  list(config.INH_THRESHOLD_MODES) == list(hashing.THRESHOLD_MODES)],
                  "attack_classes": {e.name: e.obj.options.__module__ for e in attacks}}))
"""

# recipes whose summary says more than their model's (the others state the model's summary)
OWN_SUMMARY = {"lenet-mnist35", "lenet-mnist35-adv", "lenet-mnist10", "lenet-mnist10-adv",
               "lenet-fashion10", "lenet-fashion10-adv", "madry-cnn-mnist10-adv", "madry-cnn-fashion10-adv"}


def test_the_torch_free_registries_list_what_the_heavy_modules_register():
    """Names, order, summaries and options (attacks), names, summaries and config dataclasses
    (recipes): the same before and after importing the modules that implement them; a classifier
    recipe's summary is its model's, as registered in the model registry."""
    out = json.loads(_python(REGISTRY_PROBE))
    assert out["lazy_heavy"] == []  # listing imported nothing heavy
    assert out["lazy"] == out["registered"]
    names = [a[0] for a in out["registered"]["attacks"]]
    assert len(names) == len(set(names)) >= 15 and names[:2] == ["pgd", "adam-pgd"]
    assert out["registered"]["recipes"][0][0] == "whitebox-mnist35" and len(out["registered"]["recipes"]) >= 27
    for recipe, (model, summary) in out["models"].items():
        mine = next(r[1] for r in out["registered"]["recipes"] if r[0] == recipe)
        if recipe not in OWN_SUMMARY:
            assert mine == summary, (recipe, model)
    assert set(OWN_SUMMARY) <= set(out["models"])
    assert out["inh_choices"] == [True, True]


def test_the_lazy_packages_still_offer_every_name():
    """``pellucid.train`` and ``pellucid.robust`` import their heavy names on first use: every
    name of ``__all__`` (and a submodule) is still there, the very objects of their modules."""
    import pellucid.robust
    import pellucid.train
    from pellucid.robust import attacks, evaluate
    from pellucid.train import config, metric_recipes, trainer

    for package in (pellucid.train, pellucid.robust):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
    assert pellucid.train.fit is trainer.fit and pellucid.train.TrainConfig is trainer.TrainConfig
    assert metric_recipes.MetricMLPConfig is config.MetricMLPConfig
    assert pellucid.robust.pgd is attacks.pgd and evaluate.CHUNK_SIZE == 2048
    assert pellucid.robust.checks.run_checks is pellucid.robust.run_checks  # a submodule
    with pytest.raises(AttributeError):
        pellucid.robust.no_such_name  # noqa: B018
