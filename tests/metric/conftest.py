"""Shared helpers of the metric-neuron tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def run_interrupted(monkeypatch):
    """``run_interrupted(entry, cfg, out, at_call)``: see :func:`_run_interrupted`."""
    return lambda entry, cfg, out, at_call: _run_interrupted(entry, cfg, out, monkeypatch, at_call)


def _run_interrupted(entry, cfg, out: Path, monkeypatch, at_call: int) -> None:
    """Run recipe ``entry`` into ``out`` and interrupt it (KeyboardInterrupt) at the ``at_call``-th
    test-set evaluation, i.e. during epoch ``at_call`` after ``at_call - 1`` epochs were
    checkpointed; the evaluation is restored afterwards."""
    from interruptions import interrupted_at_call

    from pellucid.train import metric_recipes

    with interrupted_at_call(monkeypatch, metric_recipes, "predict_logits", at_call):
        entry.run(cfg, out, progress=False)
