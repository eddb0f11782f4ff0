"""Chunked evaluation and torchrun: sharded evaluation equals one process's, image by image;
data-parallel training writes one consistent run directory.

The launches use ``python -m torch.distributed.run --standalone`` (what ``torchrun`` runs) with
two CPU processes (gloo), each with one thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pellucid.cli.main import main
from pellucid.robust import evaluate_robustness, pgd
from pellucid.robust.evaluate import (CHUNK_SIZE, advance_generator, chunk_bounds, chunk_generator,
                                      merge_info, merge_stage_rows)

REPO = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "pellucid", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "evaluations").glob("*.json"))}


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# --- chunks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_chunk_stream_starts_where_one_long_draw_reaches_its_first_image(dtype):
    like = torch.zeros(5, 1, 3, 4, dtype=dtype)
    whole = torch.rand((5, 1, 3, 4), generator=torch.Generator().manual_seed(9), dtype=dtype)
    for start in range(5):
        rest = torch.rand((5 - start, 1, 3, 4), generator=chunk_generator(9, start, like), dtype=dtype)
        assert torch.equal(rest, whole[start:])
    g = advance_generator(torch.Generator().manual_seed(9), 7, dtype)
    assert torch.equal(torch.rand(3, generator=g, dtype=dtype), whole.flatten()[7:10])


def test_chunk_bounds_cover_every_image_once():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(3, 1024) == [(0, 3)]


def test_chunked_pgd_is_one_pass_over_all_images(authors_model, mnist35_test):
    """PGD's L-inf random start draws one number per input value, so chunks of the batch size
    attack exactly as one call over all images did before evaluations were split into chunks
    (this is why the default PGD figures are unchanged)."""
    x, y = mnist35_test.images[:24], mnist35_test.labels[:24]
    chunked = evaluate_robustness(authors_model, x, y, eps=0.4, steps=3, seed=5, chunk_size=8, batch_size=8)
    one_pass = pgd(authors_model, x, y, eps=0.4, steps=3, batch_size=8,
                   generator=torch.Generator().manual_seed(5))
    assert torch.equal(chunked.adversarial, one_pass)
    assert CHUNK_SIZE % 1024 == 0  # a multiple of PGD's and APGD's default batch: the same alignment


def test_square_results_depend_only_on_the_chunk(authors_model, mnist35_test):
    """An attack whose draws depend on which images still stand (Square) gives each chunk the
    same result whether the chunk is attacked alone or among others."""
    x, y = mnist35_test.images[:16], mnist35_test.labels[:16]
    together = evaluate_robustness(authors_model, x, y, attack="square-native", eps=0.45, queries=40,
                                   seed=3, chunk_size=8)
    from pellucid.robust.square import square_native

    direct = square_native(authors_model, x[8:], y[8:], eps=0.45, queries=40,
                           generator=chunk_generator(3, 8, x)).adversarial
    assert torch.equal(direct, together.adversarial[8:])
    assert (~together.robust).any()  # the attack broke something: the comparison means something


def test_stage_rows_and_info_add_up_over_chunks():
    rows = [[{"attack": "square-native", "queries": 30, "attacked": 8, "broken": 2, "seconds": 0.5,
              "robust_accuracy_after": 0.75, "median_queries_to_break": 3.0,
              "_median_of": {"median_queries_to_break": [2, 9]}, "per_temperature": {"0.1": 1}}],
            [{"attack": "square-native", "queries": 30, "attacked": 2, "broken": 1, "seconds": 0.25,
              "robust_accuracy_after": 0.5, "median_queries_to_break": 5.0,
              "_median_of": {"median_queries_to_break": [5]}, "per_temperature": {"0.1": 2, "0.03": 1}}]]
    (row,) = merge_stage_rows(rows, [8, 2])
    assert row["attack"] == "square-native" and row["queries"] == 30
    assert (row["attacked"], row["broken"], row["seconds"]) == (10, 3, 0.75)
    assert row["robust_accuracy_after"] == float(torch.tensor(7.0) / 10)  # 6 + 1 of 10, in float32
    assert row["median_queries_to_break"] == 5.0  # torch's median of [2, 9, 5]
    assert row["per_temperature"] == {"0.1": 3, "0.03": 1} and "_median_of" not in row
    assert merge_stage_rows(rows[:1], [8]) == [{k: v for k, v in rows[0][0].items() if k != "_median_of"}]
    info = merge_info([{"budget": "adaptive", "broken_by": {"apgd-ce": 2}, "broken_by_image": ["a", None]},
                       {"budget": "adaptive", "broken_by": {"apgd-ce": 1, "clean": 1},
                        "broken_by_image": [None, "b"]}], [2, 2])
    assert info == {"budget": "adaptive", "broken_by": {"apgd-ce": 3, "clean": 1},
                    "broken_by_image": ["a", None, None, "b"]}


def test_a_chunk_size_other_than_the_default_is_part_of_the_record(authors_dir, capsys):
    from pellucid.report.records import record_name

    names = []
    for extra in ([], ["--chunk-size", "4"]):
        assert main(["evaluate", str(authors_dir), "--limit", "8", "--steps", "1", "--no-checks",
                     "--json", *extra]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        names.append(Path(summary["record"]).stem)
        assert ("chunk_size" in summary) == bool(extra)
        assert Path(summary["record"]).stem == record_name(summary)
    assert names[0] != names[1]


# --- torchrun -----------------------------------------------------------------------------------

# (flags, what differs by construction between one process and two: timings, the process count)
ATTACKS = [["--attack", "pgd", "--steps", "4", "--eps", "0.4"],
           ["--attack", "square-native", "--queries", "40", "--eps", "0.45"]]


def test_sharded_evaluation_equals_one_process_image_by_image(authors_dir, tmp_path, capsys):
    one, two = _copy_model(authors_dir, tmp_path / "one"), _copy_model(authors_dir, tmp_path / "two")
    common = ["--limit", "40", "--chunk-size", "8", "--seed", "4", "--no-checks", "--json"]
    for flags in ATTACKS:
        assert main(["evaluate", str(one), *flags, *common]) == 0
        capsys.readouterr()
        done = _torchrun("evaluate", str(two), *flags, *common)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # process 0 alone prints
        assert json.loads(lines[0])["processes"] == 2
        # process 0 says its chunks (1, 3, 5 of 5), and that its totals are of its share
        chunk_lines = [line for line in done.stderr.splitlines() if " done: robust " in line]
        assert [line.split(" done:")[0] for line in chunk_lines] == ["chunk 1/5", "chunk 3/5", "chunk 5/5"]
        assert all("of this process's share so far" in line for line in chunk_lines)
    single, sharded = _records(one), _records(two)
    assert len(sharded) == len(ATTACKS) and sorted(single) == sorted(sharded)  # one record each, same names
    for name in single:
        a, b = single[name], sharded[name]
        assert a["per_image"] == b["per_image"], name
        assert a["reliability"] == b["reliability"]
        assert sum(a["per_image"]["robust"]) < 40  # the attack broke images: randomness mattered
        differs = {k for k in a["summary"] if a["summary"][k] != b["summary"].get(k)}
        assert differs <= {"model_dir", "processes", "seconds", "stages"}, differs
        for ra, rb in zip(a["summary"]["stages"], b["summary"]["stages"]):
            assert {k: v for k, v in ra.items() if k != "seconds"} == \
                {k: v for k, v in rb.items() if k != "seconds"}
    leftovers = [p.name for p in (two / "evaluations").iterdir() if p.suffix != ".json"]
    assert leftovers == []  # no temporary file of a second writer


def test_more_processes_than_chunks_fail_in_one_line_before_any_attack(authors_dir, tmp_path):
    run = _copy_model(authors_dir, tmp_path / "run")
    done = _torchrun("evaluate", str(run), "--limit", "3", "--chunk-size", "4", "--steps", "1",
                     "--no-checks")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("pellucid evaluate: error:")]
    # each process says it in one line; torchrun may stop the second before it gets there, and
    # reports the failed processes itself (its own traceback, not pellucid's)
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, done.stderr[-3000:]
    assert errors[0].endswith("2 processes for 3 images in 1 chunk of 4: some would have nothing to "
                              "attack; start at most 1 process or use a chunk size (--chunk-size) of "
                              "at most 1")
    assert "pellucid/" not in done.stderr  # no frame of pellucid's code
    assert not (run / "evaluations").exists()


def test_data_parallel_training_writes_one_consistent_run(tmp_path):
    out = tmp_path / "run"
    # 9,000 of the 11,552 training images held out: a short epoch, a clean-only validation
    args = ["train", "whitebox-mnist35", "--out", str(out), "--val-size", "9000", "--val-pgd-steps", "0",
            "--no-progress", "--json"]
    done = _torchrun(*args, "--epochs", "1", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _torchrun(*args, "--epochs", "2", "--resume", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and rows[1]["val_accuracy"] > 0.9
    assert sorted(p.name for p in out.iterdir()) == [".pellucid.lock", "config.json", "metrics.jsonl",
                                                     "model.safetensors", "train_state.safetensors"]
    from pellucid.models import load_model

    model, _ = load_model(out)  # finite weights that satisfy the loader's checks
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# --- the data-parallel step ---------------------------------------------------------------------

def test_one_process_fit_is_the_plain_training_loop(tmp_path):
    """With one process the trainer does what it did before jobs existed: a reference loop written
    out here (Adam, seeded order, noise, PGD training, constraints) gives the same weights bit
    for bit, so the published seed results stand."""
    import copy

    import torch.nn.functional as F

    from pellucid.data import load_dataset
    from pellucid.models import whitebox_mnist35
    from pellucid.nn.semantic.base import project_constraints_
    from pellucid.train import TrainConfig, fit
    from pellucid.train.optim import Adam
    from pellucid.train.trainer import adversarial_eps

    train = load_dataset("mnist", "train", classes=(3, 5)).subset(slice(0, 300))
    cfg = TrainConfig(epochs=2, batch_size=64, val_size=0, val_pgd_steps=0, seed=7, adv_eps=0.2,
                      adv_steps=2, adv_warmup_epochs=1.0, noise_p=0.5)
    torch.manual_seed(7)
    model = whitebox_mnist35()
    reference = copy.deepcopy(model)
    fit(model, train, train.subset(slice(0, 0)), cfg, tmp_path / "run", model_name="whitebox-mnist35",
        progress=False)

    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = Adam(reference.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = -(-len(train) // cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        reference.train()
        perm = torch.randperm(len(train), generator=gen)
        for b in range(n_batches):
            rows = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = train.images[rows], train.labels[rows]
            if torch.rand((), generator=gen) < cfg.noise_p:
                noise = torch.randn(x.shape, generator=gen) * cfg.noise_std + cfg.noise_mean
                x = (x + noise).clamp(0, 1)
            eps = adversarial_eps(cfg, (epoch - 1) * n_batches + b + 1, n_batches)
            x = pgd(reference, x, y, eps=eps, steps=cfg.adv_steps, step_size=2.5 * eps / cfg.adv_steps,
                    generator=gen)
            reference.train()
            loss = F.cross_entropy(reference(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            project_constraints_(reference)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name


def _shared_step_worker(rank: int, store: str, results: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from pellucid.distributed import Job
    from pellucid.train import TrainConfig
    from pellucid.train.optim import Adam
    from pellucid.train.trainer import _shared_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh(),
                                    torch.nn.Linear(5, 3))
        unused = torch.nn.Parameter(torch.ones(2))  # no share uses it: its gradient stays None
        optimizer = Adam([*model.parameters(), unused], lr=1e-3)
        x = torch.rand(7, 1, 3, 4, generator=torch.Generator().manual_seed(1))  # 4 + 3 rows
        y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
        for adv_eps in (0.0, 0.1):
            cfg = TrainConfig(adv_eps=adv_eps, adv_steps=2)
            gen = torch.Generator().manual_seed(3)
            loss, correct = _shared_step(model, optimizer, x, y, cfg, gen, 5, 10, 1, 0, Path(results),
                                         Job(rank, 2, torch.device("cpu"), "gloo"))
            grads = [p.grad.clone() for p in model.parameters()]
            assert unused.grad is None
            if adv_eps == 0:  # the whole batch's mean-loss gradient, computed in one piece
                model.zero_grad()
                full = F.cross_entropy(model(x), y)
                full.backward()
                for g, p in zip(grads, model.parameters()):
                    torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
                assert abs(loss - float(full)) < 1e-6
                assert correct == int((model(x).argmax(1) == y).sum())
            states = [None, None]
            dist.all_gather_object(states, (gen.get_state(), [g.tolist() for g in grads], loss, correct))
            assert torch.equal(states[0][0], states[1][0])  # the shared generator stays in step
            assert states[0][1:] == states[1][1:]  # every process holds the same step
    finally:
        dist.destroy_process_group()


def test_shared_step_sums_the_shares_into_the_whole_batch_gradient(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_shared_step_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)


def test_a_recipe_that_cannot_share_its_fit_refuses_several_processes(tmp_path):
    from pellucid.distributed import Job
    from pellucid.errors import InvalidInputError
    from pellucid.train.inh import InhMnistConfig, train_inh_mnist
    from pellucid.train.trainer import current_job, training_job

    with training_job(Job(0, 2)), pytest.raises(InvalidInputError, match="run it without torchrun"):
        train_inh_mnist(InhMnistConfig(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert current_job() == Job()  # the context restored the default job


def test_bad_launch_settings_are_one_line_errors_before_joining(monkeypatch):
    from pellucid.distributed import Job, start_job
    from pellucid.errors import InvalidInputError

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with start_job("cpu") as job:  # no torchrun: the process alone, nothing initialised
        assert job == Job() and job.share(3) == [0, 1, 2]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InvalidInputError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        with start_job("cpu"):
            pass
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "x")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(InvalidInputError, match="LOCAL_RANK='x' in the environment is not an integer"):
        with start_job("cpu"):
            pass
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("PELLUCID_DIST_TIMEOUT", "-3")
    with pytest.raises(InvalidInputError, match="PELLUCID_DIST_TIMEOUT='-3'"):
        with start_job("cpu"):
            pass
    monkeypatch.setenv("PELLUCID_DIST_TIMEOUT", "60")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(InvalidInputError, match="process 1 of this node has no GPU of its own"):
        with start_job("cuda"):
            pass
    assert Job(1, 3).share(8) == [1, 4, 7]
