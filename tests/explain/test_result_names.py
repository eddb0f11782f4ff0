"""Names in pellucid.explain say what they are: the counterfactual's result type is a result."""

import dataclasses

import torch
from torch import nn

import pellucid.explain as explain


def test_counterfactual_returns_a_counterfactual_result():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    result = explain.counterfactual(model, torch.rand(2, 1, 2, 2), target=0, steps=1, alpha=0.1)
    assert type(result) is explain.CounterfactualResult and dataclasses.is_dataclass(result)
    assert "CounterfactualResult" in explain.__all__
    assert not hasattr(explain, "Counterfactual")  # renamed without an alias
