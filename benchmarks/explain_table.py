"""The explanation benchmark table: every method x every metric on four models.

Models (``--models``, default all four):

* ``whitebox``: the white-box MNIST 3-vs-5 network (``whitebox-mnist35`` recipe);
* ``lenet``: the LeNet ReLU baseline on the same task (``lenet-mnist35`` recipe);
* ``metric``: a metric-neuron MLP (``metric-mlp`` recipe, Fashion-MNIST);
* ``inception``: the ImageNet-trained FID Inception-v3 body (2,048 features, no class head) on
  real photos shipped with scikit-image and matplotlib, explaining each photo's most active
  feature unit (and, as a second table, the cosine similarity of its features to the next
  photo's).

The three trained models are trained with their recipes (defaults, ``--epochs`` if given) into
``--runs`` the first time and reused after. MNIST-sized models are scored on the first ``--n``
test images (16), each for its label; their localisation metrics on 2 x 2 mosaics. The photos:
``--photos`` photos (2) plus their mirror images (two views per photo, so the mosaics for
``pointing_game`` / ``focus`` have two images per "class", the photo's top unit). Metric settings
are scaled to the input size and cost (``metric_options``), the same for every method; the
cosine table runs ``--cosine-methods`` only. One result per table (one JSON line each, as they
are recorded in ``results/explain_table.jsonl``): per model, one row per (method, metric) with
mean, standard error, n and seconds.

``.venv/bin/python -m benchmarks explain_table [--models lenet whitebox] [--out-dir docs/figures]``
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "The explanation benchmark table: every method x every metric on four models"
EXPECTED_TIME = ("> 5 min: 290 s recorded over four of its five tables (results/explain_table.jsonl), "
                 "plus training the three MNIST-sized models the first time")

TRAINED = {"whitebox": "whitebox-mnist35", "lenet": "lenet-mnist35", "metric": "metric-mlp"}
# method options per model: the white-box network's spatial feature map is its rotation-conv layer
# on Inception-v3 (299 x 299, CPU) the sampling methods take fewer samples: 8 each
METHOD_OPTIONS = {"whitebox": {"grad-cam": {"layer": "conv"}, "guided-grad-cam": {"layer": "conv"}},
                  "inception": {"integrated-gradients": {"n_steps": 8}, "smoothgrad": {"nt_samples": 8},
                                "gradient-shap": {"n_samples": 8},
                                # the last Inception block's 2,048 x 8 x 8 map (its convs are ConvBN)
                                "grad-cam": {"layer": "net.layers.mixed_10"},
                                "guided-grad-cam": {"layer": "net.layers.mixed_10"}}}
PHOTOS = ("skimage:chelsea", "skimage:coffee", "skimage:astronaut", "skimage:rocket",
          "matplotlib:grace_hopper")


def metric_options(features: int, expensive: bool) -> dict:
    """Per-metric settings for inputs of ``features`` values: curves and groups of 1/16 of the
    features (1/8 when each forward pass is ``expensive``), subsets of 1/14; fewer draws when
    ``expensive`` (Inception-v3 at 299 x 299 on a CPU)."""
    steps = 8 if expensive else 16
    step = max(1, features // steps)
    draws = 8 if expensive else 32
    return {
        "infidelity": {"n_perturbations": draws, "noise_std": 0.1},
        "faithfulness_correlation": {"subset_size": max(1, features // 14), "n_draws": draws},
        "faithfulness_estimate": {"features_in_step": step},
        "monotonicity_correlation": {"features_in_step": step, "n_samples": 2 if expensive else 8},
        "max_sensitivity": {"n_draws": 2 if expensive else 8, "radius": 0.05},
        "random_logit": {},
        "model_parameter_randomisation": ({"max_layers": 2} if expensive else {}),
        "deletion": {"features_in_step": step},
        "insertion": {"features_in_step": step},
    }


def trained_run(key: str, runs: Path, epochs: int | None) -> Path:
    from pellucid.models import is_model_dir
    from pellucid.train import RECIPES

    out = runs / key
    if is_model_dir(out):
        return out
    recipe = RECIPES.get(TRAINED[key])
    cfg = recipe.config_type()
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    h.log(f"training {TRAINED[key]} into {out}")
    recipe.run(cfg, out, progress=False)
    return out


def mnist_sized(key: str, runs: Path, epochs: int | None, n: int, methods, metrics) -> dict:
    from pellucid.explain.bench import explain_bench
    from pellucid.models import load_model, read_config
    from pellucid.report.evaluation import load_test_set

    run = trained_run(key, runs, epochs)
    model, config = load_model(run)
    model.eval()
    test = load_test_set(read_config(run), None, n)
    x = test.images
    t0 = time.perf_counter()
    specs = [(m, METHOD_OPTIONS.get(key, {}).get(m, {})) for m in methods]
    rows = explain_bench(model, x, test.labels, methods=specs, metrics=metrics,
                         metric_options=_known(metric_options(x[0].numel(), False), metrics),
                         labels=test.labels, n_mosaics=n, seed=0, value_range=(0.0, 1.0),
                         on_row=_progress(key))
    return {"model": key, "registered": config["model"], "n": len(x), "target": "label",
            "rows": [r.to_dict() for r in rows], "seconds": round(time.perf_counter() - t0, 1)}


def _photo(source: str):
    from pellucid.data.images import load_image

    if source.startswith("matplotlib:"):
        import matplotlib.cbook
        path = matplotlib.cbook.get_sample_data(f"{source.split(':', 1)[1]}.jpg", asfileobj=False)
        return load_image(str(path), (3, 299, 299))
    return load_image(source, (3, 299, 299))


def inception(n_photos: int, methods, metrics, cosine_methods) -> list[dict]:
    import torch

    from pellucid.explain.bench import explain_bench
    from pellucid.explain.targets import cosine_similarity_target
    from pellucid.models import create_model

    model = create_model("fid-inception").eval()
    photos = torch.cat([_photo(s) for s in PHOTOS[:n_photos]])
    x = torch.cat([photos, photos.flip(-1)])  # two views of each photo
    with torch.no_grad():
        features = model(photos)
    units = features.argmax(1).repeat(2)  # each photo's most active feature unit, for both views
    options = _known(metric_options(x[0].numel(), True), metrics)
    out = []
    t0 = time.perf_counter()
    specs = [(m, METHOD_OPTIONS["inception"].get(m, {})) for m in methods]
    rows = explain_bench(model, x, units, methods=specs, metrics=metrics, metric_options=options,
                         labels=units, n_mosaics=len(x), seed=0, value_range=(0.0, 1.0),
                         on_row=_progress("inception-unit"))
    out.append({"model": "inception", "target": "top feature unit", "photos": list(PHOTOS[:n_photos]),
                "n": len(x), "rows": [r.to_dict() for r in rows],
                "seconds": round(time.perf_counter() - t0, 1)})
    t0 = time.perf_counter()
    cosine = cosine_similarity_target(features.roll(1, 0).repeat(2, 1))
    local = [m for m in metrics if m not in ("pointing_game", "focus")]
    specs = [(m, METHOD_OPTIONS["inception"].get(m, {})) for m in cosine_methods]
    rows = explain_bench(model, x, cosine, methods=specs, metrics=local,
                         metric_options=_known(options, local), seed=0, value_range=(0.0, 1.0),
                         on_row=_progress("inception-cosine"))
    out.append({"model": "inception", "target": "cosine similarity to the next photo's features",
                "photos": list(PHOTOS[:n_photos]), "n": len(x), "rows": [r.to_dict() for r in rows],
                "seconds": round(time.perf_counter() - t0, 1)})
    return out


def _known(options: dict, metrics) -> dict:
    return {k: v for k, v in options.items() if k in metrics}


def _progress(model: str):
    def say(row) -> None:
        h.log(f"{model:>16} {row.method:>22} {row.metric:<30} {row.mean:.4g} "
              f"(+- {row.sem:.2g}, n={row.n}) {row.metric_seconds:.1f}s")
    return say


def parser():
    from pellucid.explain.methods import EXPLAINERS
    from pellucid.explain.metrics import METRICS

    p = h.parser(__name__, __doc__, threads=2)
    p.add_argument("--models", nargs="+", default=["whitebox", "lenet", "metric", "inception"],
                   choices=["whitebox", "lenet", "metric", "inception"])
    p.add_argument("--methods", nargs="+", default=list(EXPLAINERS))
    p.add_argument("--metrics", nargs="+", default=list(METRICS))
    p.add_argument("--runs", type=Path, default=Path("runs/explain-bench"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--photos", type=int, default=2)
    p.add_argument("--cosine-methods", nargs="+", default=["pullback", "gradient",
                                                           "integrated-gradients", "smoothgrad"],
                   help="methods of the second Inception table (cosine-similarity target)")
    p.add_argument("--out-dir", type=Path, default=None, help="write one figure per table here")
    p.add_argument("--jsonl", type=Path, default=None,
                   help="also append each table to this file as soon as it is done (one line each)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = h.parse(parser(), argv)
    tables = []
    for key in args.models:
        done = inception(args.photos, args.methods, args.metrics, args.cosine_methods) \
            if key == "inception" else \
            [mnist_sized(key, args.runs, args.epochs, args.n, args.methods, args.metrics)]
        for t in done:
            if args.out_dir is not None:
                from pellucid.viz.explain import bench_figure
                name = t["model"] + ("-cosine" if "cosine" in t["target"] else "")
                t["figure"] = str(bench_figure(t["rows"], args.out_dir / f"explain-table-{name}.png",
                                               title=f"{t['model']} ({t['target']}, n={t['n']})"))
            if args.jsonl is not None:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(t) + "\n")
        tables += done
    return tables


if __name__ == "__main__":
    h.script(__name__)
