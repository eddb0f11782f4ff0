"""Cost of an excitation pullback vs a vanilla input gradient (ResNet-50, 224 x 224, CPU).

    nice -n 10 .venv/bin/python -m benchmarks bench_pullback [--batches 1 8] [--repeats 5]

Prints ONE JSON line: per batch size, the median wall time of one input gradient and one pullback
(interleaved in one process, so background load hits both alike), their peak-memory rise above
the loaded model, the same for a 5-step counterfactual (pullback and the vanilla baseline), and the
ratios. Acceptance (issue 4): pullback <= 1.2x the gradient's time and <= 1.6x its memory rise
at batch 8.

Memory: every figure comes from a fresh subprocess. The process runs one warm-up call, frees
everything, records its resident set size (VmRSS), resets the kernel's peak counter (``echo 5 >
/proc/self/clear_refs``) and reads the peak (VmHWM) after the measured call: rise = peak - before.
``MALLOC_MMAP_THRESHOLD_`` is fixed so freed tensors go back to the OS (otherwise glibc keeps them
and the second call would look free). The model is random-init ResNet-50 with batch-norm
statistics calibrated on one random batch (activations of a realistic scale; timing does not
depend on the weights' values, and no ImageNet weights are reachable offline).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import REPO, _harness as h  # noqa: E402

SUMMARY = "Cost of an excitation pullback against a plain input gradient: time and peak memory (ResNet-50)"
EXPECTED_TIME = "~5 min (292 s recorded for --batches 1 8 --repeats 5; results/bench_pullback_cpu.json)"

# --------------------------------------------------------------------------- worker side


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _build(batch: int, size: int):
    import torch
    from torchvision.models import resnet50

    from pellucid.models.imagenet import calibrate_batchnorm

    torch.manual_seed(0)
    model = resnet50(weights=None)
    calibrate_batchnorm(model, torch.rand(4, 3, size, size))
    x = torch.rand(batch, 3, size, size)
    return model, x


def _task(name: str, model, x):
    from pellucid.explain import ExcitationPullback, Gradient, counterfactual

    if name == "gradient":
        explainer = Gradient(model)
        return lambda: explainer.attribute(x, target=1)
    if name == "pullback":
        explainer = ExcitationPullback(model, temperature=0.3)
        return lambda: explainer.attribute(x, target=1)
    method = name.split("-")[1]  # cf5-pullback / cf5-gradient
    explainer = ExcitationPullback(model, temperature=0.3) if method == "pullback" else Gradient(model)
    return lambda: counterfactual(explainer, x, target=1, steps=5, alpha=20.0)


def worker_memory(name: str, batch: int, size: int) -> dict:
    model, x = _build(batch, size)
    run = _task(name, model, x)
    run()  # warm-up: oneDNN primitives, lazy init
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    out = run()
    peak = _status_kb("VmHWM")
    del out
    return {"rss_before_mb": before / 1024, "peak_rise_mb": (peak - before) / 1024}


def worker_time(names: list[str], batch: int, size: int, repeats: int) -> dict:
    model, x = _build(batch, size)
    runs = {n: _task(n, model, x) for n in names}
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):  # interleaved: load changes hit every method alike
        for n, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t} for n, t in times.items()}


def worker(argv: list[str]) -> None:
    """A measuring subprocess (``_spawn``): ``time BATCH NAME...`` or ``memory BATCH NAME``; prints
    its figures as one JSON line."""
    p = argparse.ArgumentParser(prog="bench_pullback worker")
    p.add_argument("kind", choices=["time", "memory"])
    p.add_argument("batch", type=int)
    p.add_argument("names", nargs="+")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.kind == "memory":
        result = worker_memory(a.names[0], a.batch, a.size)
    else:
        result = worker_time(a.names, a.batch, a.size, a.repeats)
    print(json.dumps(result))


# --------------------------------------------------------------------------- driver side

WORKER = "import sys; from benchmarks.bench_pullback import worker; worker(sys.argv[1:])"


def _spawn(args: list[str]) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", WORKER, *args], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parser():
    p = h.parser(__name__, __doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-counterfactual", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = h.parse(parser(), argv)
    t_start = time.time()
    single = ["gradient", "pullback"]
    cf = [] if a.no_counterfactual else ["cf5-gradient", "cf5-pullback"]
    results = {}
    for batch in a.batches:
        row: dict = {"time": _spawn(["time", str(batch), *single, "--size", str(a.size),
                                     "--repeats", str(a.repeats)])}
        if cf:
            row["time"].update(_spawn(["time", str(batch), *cf, "--size", str(a.size),
                                       "--repeats", str(max(1, a.repeats // 2))]))
        row["memory"] = {n: _spawn(["memory", str(batch), n, "--size", str(a.size)])
                         for n in single + cf}
        t, m = row["time"], row["memory"]
        row["ratios"] = {
            "pullback_vs_gradient_time": t["pullback"]["median_s"] / t["gradient"]["median_s"],
            "pullback_vs_gradient_memory_rise": m["pullback"]["peak_rise_mb"] / m["gradient"]["peak_rise_mb"],
        }
        if cf:
            row["ratios"]["cf5_pullback_vs_gradient_time"] = (t["cf5-pullback"]["median_s"]
                                                              / t["cf5-gradient"]["median_s"])
            row["ratios"]["cf5_pullback_vs_gradient_memory_rise"] = (
                m["cf5-pullback"]["peak_rise_mb"] / m["cf5-gradient"]["peak_rise_mb"])
        results[f"batch{batch}"] = row
    last = results[f"batch{a.batches[-1]}"]["ratios"]
    return {
        "model": "resnet50 (random init, calibrated BN)",
        "input": f"Bx3x{a.size}x{a.size}", "target": 1, "temperature": 0.3, "gate": "sigmoid",
        "results": results,
        "acceptance": {"time_ratio_le_1.2": last["pullback_vs_gradient_time"] <= 1.2,
                       "memory_ratio_le_1.6": last["pullback_vs_gradient_memory_rise"] <= 1.6},
        "repeats": a.repeats, "runtime_s": round(time.time() - t_start, 1),
    }


if __name__ == "__main__":
    h.script(__name__)
