"""Train a variant of the ten-digit white-box network with the `whitebox-mnist10` recipe's settings.

Asks one question at a time about the design: does a different split of the affine layer (fewer
prototypes per class, more poses each), or a changed training setting, make the network more
robust? The run directory is an ordinary one (the variant's widths are in its `config.json`), so
`pellucid evaluate DIR --attack pgd --steps 40 --eps 0.3` measures it like the registered model.
Prints ONE JSON line: the variant and its last epoch's row.

    python experiments/wb10_variant.py runs/wb10-p40x32 --model '{"n_affine": 40, "n_affine_poses": 32}'
    python experiments/wb10_variant.py runs/wb10-noise35 --train '{"noise_std": 0.35}'
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
    args = p.parse_args(argv)
    model_kwargs, overrides = json.loads(args.model), json.loads(args.train)
    cfg = dataclasses.replace(RECIPES.get(RECIPE).config_type(), **overrides)
    n_params = sum(t.numel() for t in create_model(RECIPE, **model_kwargs).parameters())
    resume = (Path(args.out) / "train_state.safetensors").exists()
    res = train_registered_classifier(RECIPE, cfg, args.out, progress=False, model_kwargs=model_kwargs,
                                      resume=resume)
    return {"out": args.out, "model_kwargs": model_kwargs, "train_overrides": overrides,
            "parameters": n_params, "last_epoch": res["epochs"][-1]}


if __name__ == "__main__":
    print(json.dumps(main()))
