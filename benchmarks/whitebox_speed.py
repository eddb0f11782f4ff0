"""Speed of the white-box model on the CPU it runs on: seconds per training epoch and PGD-40 images/s.

One epoch = the full 11,552-image MNIST 3/5 train split, batch 200, the paper's optimiser and noise
augmentation, no validation. Baselines in the same process, each giving the same numbers bit for
bit: TwoStep trained through its autograd graph (all four pieces on every pixel) instead of its
fused training path, the conv layer's C loops switched off (``PELLUCID_CPU_KERNELS=0``: the
PyTorch formulation of the conv layer and TwoStep's graph), and the conv layer computed the
straightforward way (dense conv2d over all 64 posed kernels, then max, with autograd's dense
backward). Epochs alternate with their baselines, so a slow spell of a shared host hits both.
The median time of each part of a training step (each layer's forward and backward on its own)
says where a step goes.
``--whole-run`` also times the default ``pellucid train whitebox-mnist35`` (15 epochs with
validation, start-up and exit included) as a fresh process. ``--against REV`` times the epoch of
another git revision of pellucid (a temporary worktree), alternating fresh processes of that
revision and of this checkout, three of each, the same epoch loop in both. Prints ONE JSON line.

    python -m benchmarks whitebox_speed [--whole-run] [--against REV]
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Speed of the white-box model: seconds per training epoch and PGD-40 images/s, against a dense-conv baseline"
EXPECTED_TIME = ("~1 min: epochs of 0.9-5.4 s, PGD-40 of 3.8-27.5 s (docs/whitebox.md); --whole-run "
                 "adds a 20-71 s training run, --against about 1.5 min")


@contextlib.contextmanager
def dense_conv_baseline():
    """Temporarily compute RotationConvFeatures with dense conv2d + max (the naive way)."""
    from pellucid.nn import RotationConvFeatures

    original = RotationConvFeatures.forward

    def dense(self, x, return_poses=False):
        scores = self.match(x, self._posed())  # (B, 1, K*P, H, W)
        best, pose = scores.max(dim=2)
        out = self.activation(best)
        return (out, pose) if return_poses else out

    RotationConvFeatures.forward = dense
    try:
        yield
    finally:
        RotationConvFeatures.forward = original


@contextlib.contextmanager
def unfused_forward():
    """Temporarily turn the fused C forward off: ``conv2d`` + the C max, as before it (same bits)."""
    from pellucid.nn.semantic import kernels

    original = kernels._fused_forward
    kernels._fused_forward = lambda x, weight, lib: None
    try:
        yield
    finally:
        kernels._fused_forward = original


@contextlib.contextmanager
def pytorch_path():
    """Temporarily switch the conv layer's C loops off (the PyTorch formulation, the same numbers)."""
    import os

    before = os.environ.get("PELLUCID_CPU_KERNELS")
    os.environ["PELLUCID_CPU_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PELLUCID_CPU_KERNELS"]
        else:
            os.environ["PELLUCID_CPU_KERNELS"] = before


@contextlib.contextmanager
def twostep_graph():
    """Temporarily train TwoStep through its autograd graph (all four pieces on every pixel), as
    before its fused training path (the same numbers)."""
    from pellucid.nn.semantic import twostep

    original = twostep._TwoStepTraining.applies
    twostep._TwoStepTraining.applies = staticmethod(lambda x, params: False)
    try:
        yield
    finally:
        twostep._TwoStepTraining.applies = original


# For --against: a fresh process times epoch_seconds (this file's loop) with whichever pellucid
# comes first on its PYTHONPATH (a revision's worktree, or this checkout).
_EPOCH_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])  # this checkout's benchmarks package; pellucid from PYTHONPATH
import torch
torch.set_num_threads(int(sys.argv[1]))
from benchmarks.whitebox_speed import epoch_seconds
from pellucid.data import load_dataset
train = load_dataset("mnist", "train", classes=(3, 5))
epoch_seconds(train.subset(slice(0, 400)))
print(json.dumps(min(epoch_seconds(train, s) for s in range(2))))
"""


_ROOT = Path(__file__).resolve().parents[1]


def resolve_revision(rev: str) -> str:
    """The full commit id of ``rev`` in this checkout's repository; exits with one line if none."""
    found = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"--against: {rev!r} is not a commit of the repository at {_ROOT}")
    return found.stdout.strip()


def revision_epochs(commit: str, rounds: int = 3) -> dict:
    """Epoch seconds (min of 2 per process) of ``commit`` and of this checkout, in alternating
    fresh processes; the commit's pellucid comes from a temporary worktree."""
    import os

    import torch

    root = _ROOT
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tree), commit],
                       check=True, capture_output=True)
        try:
            times = {"revision": [], "checkout": []}
            for _ in range(rounds):
                for name, src in (("revision", tree / "src"), ("checkout", root / "src")):
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
                    done = subprocess.run([sys.executable, "-c", _EPOCH_SCRIPT, str(torch.get_num_threads()),
                                           str(root)], env=env, capture_output=True, text=True, check=True)
                    times[name].append(float(done.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    return {"revision": commit[:10],
            "epoch_seconds_revision": [round(t, 3) for t in times["revision"]],
            "epoch_seconds_checkout": [round(t, 3) for t in times["checkout"]],
            "epoch_speedup_vs_revision": round(min(times["revision"]) / min(times["checkout"]), 2)}


def epoch_seconds(train, seed: int = 0) -> float:
    import torch
    import torch.nn.functional as F

    from pellucid.models import whitebox_mnist35
    from pellucid.nn import project_constraints_
    from pellucid.train.optim import Adam

    torch.manual_seed(seed)
    model = whitebox_mnist35().train()
    opt = Adam(model.parameters(), lr=3e-3, weight_decay=3e-6)  # the trainer's optimizer
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    t0 = time.perf_counter()
    for rows in perm.split(200):
        x, y = train.images[rows], train.labels[rows]
        if torch.rand((), generator=gen) < 0.7:
            x = (x + torch.randn(x.shape, generator=gen) * 0.25 + 0.05).clamp(0, 1)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_constraints_(model)
    return time.perf_counter() - t0


def step_ratio_unfused_over_fused(train, pairs: int = 60, seed: int = 0) -> float:
    """Median over ``pairs`` of (unfused step time) / (fused step time): training steps on the
    same batch, back to back, the order swapped every pair, so host drift cancels out."""
    import statistics

    import torch
    import torch.nn.functional as F

    from pellucid.models import whitebox_mnist35
    from pellucid.nn import project_constraints_
    from pellucid.train.optim import Adam

    torch.manual_seed(seed)
    model = whitebox_mnist35().train()
    opt = Adam(model.parameters(), lr=3e-3, weight_decay=3e-6)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)[: pairs * 200]

    def step(rows, unfused: bool) -> float:
        with unfused_forward() if unfused else contextlib.nullcontext():
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(train.images[rows]), train.labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            project_constraints_(model)
            return time.perf_counter() - t0

    ratios = []
    for i, rows in enumerate(perm.split(200)):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {unfused: step(rows, unfused) for unfused in order}
        ratios.append(times[True] / times[False])
    return statistics.median(ratios)


def step_parts_ms(train, repeats: int = 30, seed: int = 0) -> dict:
    """Median milliseconds of each part of a training step (forward + backward of each layer on its
    own, on one 200-image batch), and of the whole step, so the docs can say where a step goes.
    Each layer's input requires a gradient as in the model, except the conv layer's: its
    input gradient is timed apart (``conv_input_gradient``)."""
    import torch
    import torch.nn.functional as F

    from pellucid.models import whitebox_mnist35
    from pellucid.nn import project_constraints_
    from pellucid.train.optim import Adam

    torch.manual_seed(seed)
    model = whitebox_mnist35().train()
    opt = Adam(model.parameters(), lr=3e-3, weight_decay=3e-6)
    x, y = train.images[:200], train.labels[:200]
    with torch.no_grad():
        pixels = model.twostep(x)
        conv = model.conv(pixels)
        affine = model.affine(conv)
    pixels_grad, conv_grad, affine_grad = (t.clone().requires_grad_(True) for t in (pixels, conv, affine))

    def whole():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_constraints_(model)

    parts = {
        "whole_step": whole,
        "twostep": lambda: model.twostep(x).sum().backward(),
        "conv": lambda: model.conv(pixels).sum().backward(),
        "conv_input_gradient": lambda: model.conv(pixels_grad).sum().backward(),
        "affine": lambda: model.affine(conv_grad).sum().backward(),
        "affine_posed_weights": lambda: model.affine.posed_weights().sum().backward(),
        "logical_and_loss": lambda: F.cross_entropy(model.logical(affine_grad), y).backward(),
        "optimizer_and_projection": lambda: (opt.step(), project_constraints_(model)),
    }

    out = {name: round(1e3 * h.timed(f, repeats), 2) for name, f in parts.items()}
    out["conv_input_gradient"] = round(out["conv_input_gradient"] - out["conv"], 2)  # the difference
    return out


def pgd_images_per_second(test) -> float:
    import torch

    from pellucid.models import whitebox_mnist35
    from pellucid.robust import pgd

    torch.manual_seed(0)
    model = whitebox_mnist35().eval()
    t0 = time.perf_counter()
    pgd(model, test.images, test.labels, eps=0.3, step_size=0.1, steps=40,
        generator=torch.Generator().manual_seed(0))
    return len(test) / (time.perf_counter() - t0)


def whole_run_seconds() -> float:
    """Wall seconds of ``pellucid train whitebox-mnist35`` (the defaults) as a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pellucid", "train", "whitebox-mnist35", "--out",
                        f"{tmp}/run", "--no-progress"], check=True, capture_output=True)
        return time.perf_counter() - t0


def kernels_fused() -> bool:
    """Whether the fused C forward ran for the white-box conv layer (probe passed)."""
    from pellucid.nn.semantic import kernels

    return any(kernels._FUSED_AGREES.values())


def parser():
    p = h.parser(__name__, __doc__)
    p.add_argument("--whole-run", action="store_true", help="also time the default training run")
    p.add_argument("--against", metavar="REV", help="also time the epoch of this git revision (alternating processes)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    h.preload("torch", "pellucid.models", "pellucid.nn", "pellucid.robust", "pellucid.train.optim")
    from pellucid.data import load_dataset

    commit = resolve_revision(args.against) if args.against else None  # before any expensive work
    train = load_dataset("mnist", "train", classes=(3, 5))
    test = load_dataset("mnist", "test", classes=(3, 5))
    from pellucid.nn.semantic import _cpu_kernels

    c_loops = _cpu_kernels.library() is not None
    epoch_seconds(train.subset(slice(0, 400)))  # warm-up
    # Each baseline alternates with pellucid's own epochs, so a slow spell of a shared host (or
    # the slow-down that sustained load brings on these hosts) hits all of them alike.
    fused_runs, graph_runs, torch_runs = [], [], []
    for s in range(2):
        fused_runs.append(epoch_seconds(train, s))
        with twostep_graph():
            graph_runs.append(epoch_seconds(train, s))
        with pytorch_path():
            torch_runs.append(epoch_seconds(train, s))
    with dense_conv_baseline():
        dense = epoch_seconds(train)
    fused, graph, torch_epoch = min(fused_runs), min(graph_runs), min(torch_runs)
    fused_pgd = pgd_images_per_second(test)
    with unfused_forward():
        unfused_pgd = pgd_images_per_second(test)
    with pytorch_path():
        torch_pgd = pgd_images_per_second(test)
    with dense_conv_baseline():
        dense_pgd = pgd_images_per_second(test)
    step_ratio = step_ratio_unfused_over_fused(train)
    parts = step_parts_ms(train)
    # Last: on the 2-core hosts of the docs, epochs right after the 20 s training run took 1.05 s
    # against 0.92 s after 30 s idle (sustained load slows the host for a while), so the epochs
    # above are timed first.
    whole = whole_run_seconds() if args.whole_run else None
    against = revision_epochs(commit) if commit else None
    return {
        "train_images": len(train), "c_loops": c_loops,
        "fused_forward": kernels_fused(),
        "epoch_seconds": round(fused, 3),
        "epoch_seconds_all": [round(t, 3) for t in fused_runs],
        "epoch_seconds_twostep_graph": round(graph, 3),
        "epoch_speedup_vs_twostep_graph": round(graph / fused, 2),
        "step_speedup_vs_unfused_forward_median_of_60_pairs": round(step_ratio, 2),
        "step_parts_ms": parts,
        "epoch_seconds_dense_conv_baseline": round(dense, 3),
        "epoch_speedup_vs_baseline": round(dense / fused, 2),
        "epoch_seconds_pytorch_path": round(torch_epoch, 3),
        "epoch_speedup_vs_pytorch_path": round(torch_epoch / fused, 2),
        "pgd40_images_per_second": round(fused_pgd, 1),
        "pgd40_images_per_second_unfused_forward": round(unfused_pgd, 1),
        "pgd40_speedup_vs_unfused_forward": round(fused_pgd / unfused_pgd, 2),
        "pgd40_full_test_seconds": round(len(test) / fused_pgd, 2),
        "pgd40_images_per_second_dense_conv_baseline": round(dense_pgd, 1),
        "pgd40_speedup_vs_baseline": round(fused_pgd / dense_pgd, 2),
        "pgd40_images_per_second_pytorch_path": round(torch_pgd, 1),
        "pgd40_speedup_vs_pytorch_path": round(fused_pgd / torch_pgd, 2),
        **({"whole_default_run_seconds": round(whole, 1)} if whole is not None else {}),
        **({"against": against} if against is not None else {})}


if __name__ == "__main__":
    h.script(__name__)
