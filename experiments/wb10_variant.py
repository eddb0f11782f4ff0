"""Train a variant of a ten-class white-box network with its recipe's settings.

Asks one question at a time about the design: does a different split of the affine layer (fewer
prototypes per class, more poses each), or a changed training setting, make the network more
robust? The run directory is an ordinary one (the variant's widths are in its `config.json`), so
`pellucid evaluate DIR --attack pgd --steps 40 --eps 0.3` measures it like the registered model.
Prints ONE JSON line: the variant and its last epoch's row.

    python experiments/wb10_variant.py runs/wb10-p40x32 --model '{"n_affine": 40, "n_affine_poses": 32}'
    python experiments/wb10_variant.py runs/wb10-noise35 --train '{"noise_std": 0.35}'
    python experiments/wb10_variant.py runs/wbf10-noise15 --recipe whitebox-fashion10 --train '{"noise_std": 0.15}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pellucid.models import create_model
from pellucid.train.recipes import RECIPES, train_registered_classifier

RECIPE = "whitebox-mnist10"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="run directory to write (resumed if it holds an unfinished run)")
    p.add_argument("--model", default="{}", help="JSON: WhiteBoxNet arguments to change")
    p.add_argument("--train", default="{}", help="JSON: training settings to change")
    p.add_argument("--recipe", default=RECIPE, choices=("whitebox-mnist10", "whitebox-fashion10"),
                   help="the ten-class recipe to vary")
    args = p.parse_args(argv)
    model_kwargs, overrides = json.loads(args.model), json.loads(args.train)
    cfg = dataclasses.replace(RECIPES.get(args.recipe).config_type(), **overrides)
    n_params = sum(t.numel() for t in create_model(args.recipe, **model_kwargs).parameters())
    resume = (Path(args.out) / "train_state.safetensors").exists()
    res = train_registered_classifier(args.recipe, cfg, args.out, progress=False, model_kwargs=model_kwargs,
                                      resume=resume)
    return {"out": args.out, "recipe": args.recipe, "model_kwargs": model_kwargs, "train_overrides": overrides,
            "parameters": n_params, "last_epoch": res["epochs"][-1]}


if __name__ == "__main__":
    print(json.dumps(main()))
