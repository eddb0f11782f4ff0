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
    from pellucid.train import metric_recipes

    real, calls = metric_recipes.predict_logits, []

    def dies(model, images):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real(model, images)

    monkeypatch.setattr(metric_recipes, "predict_logits", dies)
    with pytest.raises(KeyboardInterrupt):
        entry.run(cfg, out, progress=False)
    monkeypatch.setattr(metric_recipes, "predict_logits", real)
